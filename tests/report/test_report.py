"""The bench report from a small synthetic results set: sections, numbers, embedded figures, escaping,
no external resources; the extremes tables against a direct computation. (The task shares and Jaccard
overlaps the report shows are computed by the benchmark package: tests/benchmark/test_bench_reportdata.py.)"""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from gradsift.benchmark.reportdata import selection_summary
from gradsift.report.data import BenchmarkInfo, MethodSelection, PoolItem, ReportData
from gradsift.report.html import SECTIONS, render_html
from gradsift.report.markdown import fmt, markdown_table, render_markdown, results_table, truncate
from gradsift.report.plots import FIGURES, make_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(n_pool: int = 40) -> ReportData:
    rng = np.random.default_rng(0)
    tasks = ["gsm8k", "alpaca", "strategyqa", None]
    pool = [
        PoolItem(id=f"p{i}", task=tasks[i % 4], prompt=f"question {i} " + "words " * (i % 7), response=f"answer {i}")
        for i in range(n_pool)
    ]
    pool[3] = PoolItem(id="p3", task="alpaca", prompt="<script>alert('x')</script> & <b>bold</b>", response="a|b")
    score_a = rng.normal(size=n_pool)
    score_a[5] = np.nan
    sel_a = [int(i) for i in np.argsort(-np.nan_to_num(score_a, nan=-9))[:8]]
    score_b = np.arange(n_pool, dtype=float)
    sel_b = list(range(n_pool - 8, n_pool))[::-1]
    selections = [
        MethodSelection("less", 8, 0, sel_a, score_a),
        MethodSelection("length", 8, 0, sel_b, score_b),
        MethodSelection("random", 8, 0, list(range(0, 16, 2)), rng.random(n_pool)),
    ]
    rows = [
        {"method": "base", "budget": "0", "k": 0, "seed": 0, "n_selected": 0, "sdf": 0.0, "tl.mean_loss": 1.9},
        {"method": "full", "budget": "100%", "k": 40, "seed": 0, "n_selected": 40, "sdf": 1.0, "tl.mean_loss": 1.2},
    ]
    for budget, k in (("10%", 4), ("20%", 8)):
        for method, loss in (("random", 1.5), ("less", 1.31), ("length", 1.62)):
            for seed in (0, 1) if method == "random" else (0,):
                rows.append(
                    {
                        "method": method,
                        "budget": budget,
                        "k": k,
                        "seed": seed,
                        "n_selected": k,
                        "sdf": k / 40,
                        "tl.mean_loss": loss - k / 100 + seed / 1000,
                        "gsm.exact_match": 0.0,
                        "train_steps": 2,
                    }
                )
    table = pd.DataFrame(rows)
    table["pir.tl"] = 1.2 / table["tl.mean_loss"]
    table["pir"] = table["pir.tl"]
    efficiency = [
        {
            "budget": "20%",
            "method": "random",
            "sdf": 0.2,
            "pir": 0.8,
            "pir_std": 0.01,
            "n_seeds": 2,
            "pir.tl": 0.8,
            "efficiency": 0.0,
            "efficiency_rank": 2,
        },
        {
            "budget": "20%",
            "method": "less",
            "sdf": 0.2,
            "pir": 0.9876,
            "pir_std": 0.0,
            "n_seeds": 1,
            "pir.tl": 0.9876,
            "efficiency": 0.123456,
            "efficiency_rank": 1,
        },
        {
            "budget": "20%",
            "method": "length",
            "sdf": 0.2,
            "pir": 0.7,
            "pir_std": 0.0,
            "n_seeds": 1,
            "pir.tl": 0.7,
            "efficiency": -0.0777,
            "efficiency_rank": 3,
        },
    ]
    feasibility = [
        {
            "method": "random",
            "models_trained": 0,
            "steps": 1,
            "needs_target_model": False,
            "needs_target_data": False,
            "needs_llm_api": False,
            "simplicity_penalty": 1,
            "flexibility_penalty": 0,
            "simplicity_rank": 1,
            "flexibility_rank": 1,
            "feasibility_rank": 1,
        },
        {
            "method": "less",
            "models_trained": 1,
            "steps": 4,
            "needs_target_model": True,
            "needs_target_data": True,
            "needs_llm_api": False,
            "simplicity_penalty": 6,
            "flexibility_penalty": 5,
            "simplicity_rank": 2,
            "flexibility_rank": 2,
            "feasibility_rank": 2,
        },
    ]
    shares, overlap = selection_summary(pool, selections)
    return ReportData(
        comparisons=synthetic_comparisons(),
        lr_search={
            "grid": [1e-4, 3e-4],
            "benchmark": "tl",
            "data": "lr_val",
            "metric": "mean_loss",
            "higher_is_better": False,
            "budgets": ["10%", "20%"],
            "seed": 0,
            "values": {
                "0.0001": {"10%": 1.6, "20%": 1.5, "mean": 1.55},
                "0.0003": {"10%": 1.4, "20%": 1.3, "mean": 1.35},
            },
            "chosen": 3e-4,
        },
        prepare={
            "align": {
                "rounds": 2,
                "checks": [0.05, 0.6, 0.85],
                "met": True,
                "n_train": 40,
                "until": {"metric": "refusal_rate", "at_least": 0.8, "at_most": None, "data": "check"},
            }
        },
        title="synthetic <scenario>",
        created="2026-01-02 03:04 UTC",
        machine={"processor": "Test CPU 9000", "gpu": "none (CPU only)", "cpus": "2", "gradsift": "0.1.0"},
        settings={"model": "tiny", "kind": "sft", "pool": n_pool, "budgets": "10% (4), 20% (8)"},
        benchmarks=[
            BenchmarkInfo("tl", "target_loss", "mean_loss", False, 16),
            BenchmarkInfo("gsm", "gsm8k", "exact_match", True, 8),
        ],
        table=table,
        efficiency=efficiency,
        feasibility=feasibility,
        pool=pool,
        selections=selections,
        task_shares=shares,
        overlap=overlap,
        unavailable={"prism": "method 'prism' is not available in this version of gradsift"},
        notes=["gsm: no PIR ratio (full-data score 0)"],
    )


def vs(diff, low, high, verdict):
    return {"diff": diff, "ci95_low": low, "ci95_high": high, "verdict": verdict}


def synthetic_comparisons() -> dict:
    """Paired comparisons of target loss (lower is better): less beats random at 20%, length is worse."""
    entry = {"n_seeds": 2, "select_wall_s": 0.4, "select_cpu_s": 0.3}
    methods = {
        "full": {"100%": {"mean": 1.2, "ci95_low": 1.1, "ci95_high": 1.3, "n_seeds": 1}},
        # a baseline that beats full is not a selection method that does: the verdicts leave it out
        "full-epoch": {
            "epoch": {
                "mean": 1.1,
                "ci95_low": 1.0,
                "ci95_high": 1.2,
                "n_seeds": 1,
                "vs_full": vs(-0.1, -0.2, -0.05, "better"),
            }
        },
        "random": {b: {**entry, "mean": 1.5, "ci95_low": 1.4, "ci95_high": 1.6} for b in ("10%", "20%")},
        "less": {
            "10%": {
                **entry,
                "mean": 1.45,
                "ci95_low": 1.3,
                "ci95_high": 1.6,
                "select_cpu_s": 812.5,
                "select_wall_s": 901.0,
                "vs_random": vs(-0.05, -0.12, 0.02, "no difference"),
                "vs_full": vs(0.25, 0.2, 0.3, "worse"),
                "vs_embed": vs(-0.01, -0.03, 0.01, "no difference"),
            },
            "20%": {
                **entry,
                "mean": 1.31,
                "ci95_low": 1.25,
                "ci95_high": 1.37,
                "select_cpu_s": 812.5,
                "select_wall_s": 901.0,
                "vs_random": vs(-0.19, -0.25, -0.13, "better"),
                "vs_full": vs(0.11, 0.05, 0.17, "worse"),
            },
        },
        "length": {
            "20%": {
                **entry,
                "mean": 1.62,
                "ci95_low": 1.55,
                "ci95_high": 1.7,
                "vs_random": vs(0.12, 0.05, 0.2, "worse"),
                "vs_full": vs(0.42, 0.3, 0.5, "worse"),
            },
        },
    }
    for b in ("10%", "20%"):
        methods["random"][b]["vs_full"] = vs(0.3, 0.2, 0.4, "worse")
    margin = {
        "less": {
            "20%": {
                **entry,
                "mean": 0.5,
                "ci95_low": 0.1,
                "ci95_high": 0.9,
                "vs_random": vs(0.2, 0.05, 0.35, "better"),
            }
        }
    }
    return {
        "tl": {
            "task": "target_loss",
            "metric": "mean_loss",
            "higher_is_better": False,
            "n_eval": 16,
            "methods": methods,
            "secondary": {"mean_margin": {"higher_is_better": True, "methods": margin}},
        }
    }


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def figures(data):
    return make_figures(data)


def test_every_figure_is_a_png(figures):
    assert set(figures) == set(FIGURES)
    for png in figures.values():
        assert png.startswith(PNG_MAGIC) and len(png) > 2000


def test_html_is_complete_self_contained_and_escaped(data, figures):
    html = render_html(data, figures)
    for sid, title in SECTIONS:
        assert f'id="{sid}"' in html and title in html
    # numbers of every table
    for number in (
        "0.9876",
        "0.123",
        "-0.0777",
        ">1.23<",
        ">0.9756<",
        "20.0%",
        "Test CPU 9000",
        "2026-01-02 03:04 UTC",
    ):
        assert number in html, number
    # the figures, embedded and decodable, and nothing fetched from elsewhere
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(figures)
    assert all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    assert not re.search(r"(src|href)=\"(?!data:|#)", html)
    assert "http" not in html and "<script" not in html and "<link" not in html
    # data text is escaped, not interpreted
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "synthetic &lt;scenario&gt;" in html
    # notes and unavailable methods
    assert "prism" in html and "not available" in html and "gsm: no PIR ratio" in html


def test_paired_comparisons_verdicts_costs_learning_rate_and_prepare(data, figures):
    html = render_html(data, figures)
    md = render_markdown(data, {"cost_quality": "figures/cost_quality.png"})
    for page in (html, md):
        # "beats" only where the interval excludes 0 on the better side: less at 20%, not at 10%, not length
        assert "tl (mean_loss): beat random at the same budget: less (20%)." in page
        assert "tl (mean_loss): beat full data (same steps): none." in page
        assert "-0.19 [-0.25, -0.13] better" in page and "+0.12 [+0.05, +0.2] worse" in page
        assert "-0.05 [-0.12, +0.02]" in page and "-0.05 [-0.12, +0.02] better" not in page
        assert "1.31 [1.25, 1.37]" in page and "812.5" in page and "901" in page  # quality beside its cost
        assert "+0.2 [+0.05, +0.35] better" in page  # the secondary metric's own direction
        assert "0.05 → 0.6 → 0.85" in page  # the prepare checks
    assert "![Quality gain over random against selection cost](figures/cost_quality.png)" in md
    assert "| 0.0003 | 1.4 | 1.3 | 1.35 |" in md
    assert 'id="cost"' in html and "vs embed" in html


def test_cost_quality_plots_the_gain_over_random_against_the_cost(data):
    from gradsift.report.plots import cost_quality

    assert cost_quality(data).startswith(PNG_MAGIC)
    without_costs = synthetic()
    for by_budget in without_costs.comparisons["tl"]["methods"].values():
        for e in by_budget.values():
            e.pop("select_wall_s", None)
    assert cost_quality(without_costs) is None


def test_top_and_bottom_examples_follow_the_scores(data):
    top, bottom = data.extremes("less", 5)
    scores = data.selections[0].scores
    finite = [(i, s) for i, s in enumerate(scores) if np.isfinite(s)]
    by_score = sorted(finite, key=lambda x: -x[1])
    assert [i for i, _ in top] == [i for i, _ in by_score[:5]]
    assert [i for i, _ in bottom] == [i for i, _ in by_score[::-1][:5]]
    assert 5 not in [i for i, _ in top + bottom]  # NaN scores are neither top nor bottom
    html = render_html(data, {})
    for i, s in top:
        assert f">{fmt(s)}<" in html and f">p{i}<" in html


def test_markdown_has_the_same_tables(data):
    md = render_markdown(data, {"pir_vs_sdf": "figures/pir_vs_sdf.png"})
    for heading in (
        "## Efficiency",
        "## Results",
        "## Feasibility",
        "## Task balance",
        "## Top and bottom",
        "## Overlap",
    ):
        assert heading in md
    assert "![PIR against SDF](figures/pir_vs_sdf.png)" in md
    assert "| 20% | less | 1 | 20.0% | 0.9876 |" in md
    assert "a\\|b" in md  # a pipe in the data does not break the table
    results = results_table(data)
    assert len(results.rows) == len(data.table)
    assert markdown_table(results).count("\n") == len(data.table) + 2


def test_nothing_to_plot_gives_no_figure_and_the_page_still_renders():
    empty = synthetic()
    empty.selections = []
    empty.task_shares, empty.overlap = selection_summary(empty.pool, [])
    empty.efficiency = []
    empty.comparisons = {}
    empty.table = empty.table.iloc[0:0]
    figs = make_figures(empty)
    assert figs == {}
    html = render_html(empty, figs)
    assert "nothing to plot" in html and "(none)" in html


def test_text_helpers():
    assert truncate("line one\nline two", 100) == "line one ⏎ line two"
    assert truncate("x" * 50, 10) == "x" * 9 + "…"
    assert fmt(None) == fmt(float("nan")) == "-"
    assert fmt(3.0) == "3" and fmt(0.000123456) == "0.0001235" and fmt(True) == "yes"


def test_error_bars_survive_rounding_and_a_difference_outside_its_interval():
    from gradsift.report.plots import cost_quality, metric_vs_budget

    d = synthetic()
    random = d.table[d.table["method"] == "random"]
    d.table = pd.concat([d.table, random[random["seed"] == 0].assign(seed=2)], ignore_index=True)
    # the mean of three seeds at 0.025 is 0.025 + 3e-18, above their max (the safety bench's refusal rate)
    d.table.loc[d.table["method"] == "random", "tl.mean_loss"] = 0.025
    assert metric_vs_budget(d).startswith(PNG_MAGIC)
    d.comparisons["tl"]["methods"]["less"]["20%"]["vs_random"] = vs(0.4, 0.05, 0.35, "better")
    assert cost_quality(d).startswith(PNG_MAGIC)
