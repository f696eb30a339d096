"""The selection report from synthetic runs: what each section holds against direct computations, the "why"
columns, band positions, escaping, no external resources, and a page size that does not grow with the pool."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import rankdata

from gradsift.data.load import load_examples, load_pairs, write_jsonl
from gradsift.data.records import Kind, fingerprint
from gradsift.report.selection import SECTIONS, render_selection_html
from gradsift.report.selection_plots import FIGURES, MAX_POINTS
from gradsift.select_report import N_BOTTOM, N_TOP, build_report, rebuild_report, write_report
from gradsift.stats import jaccard_matrix

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench():
    spec = importlib.util.spec_from_file_location("report_scale", ROOT / "bench" / "report_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic_run = _bench().synthetic_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("run"), 400, n_targets=8)


@pytest.fixture(scope="module")
def page(run) -> Path:
    return write_report(run, *_inputs(run))


def _inputs(run: Path):
    config = json.loads((run / "config.json").read_text())
    pool = load_examples(str(run / "pool.jsonl"), kind=Kind.SFT)
    targets = load_examples(str(run / "targets.jsonl"), kind=Kind.TARGET)
    return config, pool, targets


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)]


def test_the_data_matches_the_run(run):
    config, pool, targets = _inputs(run)
    data = build_report(run, config, pool, targets)
    table = pq.read_table(run / "scores.parquet").to_pandas()
    assert [m.name for m in data.methods] == ["less", "prism", "bids"] and data.n_pool == 400
    for m in data.methods:
        rank = table[f"rank_{m.name}"].to_numpy()
        assert m.selected.tolist() == np.argsort(np.where(rank >= 0, rank, 10**9), kind="stable")[:20].tolist()
        # the first selected in selection order, and the lowest scores
        assert [s.row for s in m.top] == m.selected[:N_TOP].tolist()
        assert [s.rank for s in m.top] == list(range(N_TOP))
        score = table[f"score_{m.name}"].to_numpy()
        assert [s.row for s in m.bottom] == np.argsort(score, kind="stable")[:N_BOTTOM].tolist()
        # "why": the parquet's helps columns, with the target's text
        for s in m.top:
            want = [table[f"{m.name}_help_{j}_id"][s.row] for j in (1, 2, 3)]
            assert [h.target_id for h in s.helps] == want
            assert [h.value for h in s.helps] == [table[f"{m.name}_help_{j}_value"][s.row] for j in (1, 2, 3)]
            by_id = {t.id: t for t in targets}
            assert all(by_id[h.target_id].response in h.text for h in s.helps)
        assert m.cuts == ([] if m.name == "bids" else [(float(score[m.selected].min()), "cut")])
        np.testing.assert_allclose(m.percentile, 100 * (rankdata(score) - 0.5) / len(score))
    # shares and lengths
    assert data.tasks.counts == sorted(data.tasks.counts, reverse=True) and sum(data.tasks.counts) == 400
    for name, shares in data.tasks.selections.items():
        assert sum(shares) == pytest.approx(1.0)
        m = next(x for x in data.methods if x.name == name)
        arithmetic = sum(pool[i].task == "arithmetic" for i in m.selected) / len(m.selected)
        assert shares[data.tasks.labels.index("arithmetic")] == pytest.approx(arithmetic)
    lengths = np.array([len(r.response) for r in pool])
    assert data.lengths.quantiles["pool"] == pytest.approx(np.percentile(lengths, [0, 25, 50, 75, 100]).tolist())
    np.testing.assert_allclose(data.overlap.jaccard, jaccard_matrix([m.selected.tolist() for m in data.methods]))
    assert np.allclose(np.diag(data.spearman), 1) and -1 <= data.spearman.min() <= data.spearman.max() <= 1
    assert data.timings == config["timings_s"] and data.provenance["pool"].startswith(str(run / "pool.jsonl"))


def test_the_page_is_self_contained_and_complete(run, page):
    html = page.read_text()
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in html
    images = _images(html)
    # scores, tasks, lengths, overlap, rank scatter, timings (one source file: no source figure)
    assert len(images) == len(FIGURES) - 1 and all(img.startswith(PNG_MAGIC) for img in images)
    assert not re.search(r"(src|href)=\"(?!data:|#)", html)
    assert "<script" not in html and "<link" not in html and "url(" not in html
    for m in ("less", "prism", "bids"):
        assert f"{m}: first selected" in html and f"{m}: lowest score" in html
    # a top example's most helped target, with its text
    table = pq.read_table(run / "scores.parquet").to_pandas()
    first = int(np.flatnonzero(table["rank_less"] == 0)[0])
    assert f"1. {table['less_help_1_id'][first]} (" in html
    assert "targets it helps most" in html and "BIDS&#x27;s iterative pick" in html


def test_text_from_the_data_is_escaped(run):
    config, pool, targets = _inputs(run)
    first = int(np.flatnonzero(pq.read_table(run / "scores.parquet").to_pandas()["rank_less"] == 0)[0])
    pool[first].messages[-1]["content"] = "<script>alert(1)</script> & <b>x</b>"
    pool[first].task = "<i>t</i>"
    html = render_selection_html(build_report(run, config, pool, targets), {})
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;x&lt;/b&gt;" in html
    assert "&lt;i&gt;t&lt;/i&gt;" in html and "<i>" not in html


def test_page_size_does_not_grow_with_the_pool(tmp_path, page):
    large = synthetic_run(tmp_path, 4000, n_targets=8)
    size = write_report(large, *_inputs(large)).stat().st_size
    # histograms, and a scatter of at most MAX_POINTS per panel: 10x the candidates, about the same page
    assert 400 < MAX_POINTS < 4000
    assert size < 1.25 * page.stat().st_size and size < 5e6, (size, page.stat().st_size)


def _pair_run(tmp_path: Path) -> Path:
    """A TIF run by hand: pairs, the IF column, its percentile ranks and band (as recipes/preference.py writes)."""
    n = 20
    write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "task": "t"} for i in range(n)],
    )
    pairs = load_pairs(str(tmp_path / "pairs.jsonl"))
    value = np.arange(n, dtype=float)
    pct = 100 * (np.arange(n) + 0.5) / n
    in_band = (pct >= 20) & (pct <= 80)
    members = np.flatnonzero(in_band)
    order = members[np.argsort(np.abs(pct[members] - 50), kind="stable")]
    rank = np.full(n, -1)
    rank[order] = np.arange(len(order))
    priority = np.where(in_band, -np.abs(pct - 50), np.nan)
    cols = {
        "row": np.arange(n),
        "id": [p.id for p in pairs],
        "task": ["t"] * n,
        "source": [p.source for p in pairs],
        "line": [p.line for p in pairs],
        "score_tif": priority,
        "rank_tif": rank,
        "selected_tif": rank >= 0,
        "tif_if": value,
        "tif_pct_if": pct,
        "tif_in_band_if": in_band,
    }
    pq.write_table(pa.table(cols), tmp_path / "scores.parquet")
    info = {"mode": "band", "order": "centre", "band": {"lo": 20.0, "hi": 80.0, "limits": {"if": [3.8, 15.2]}}}
    config = {
        "settings": {"pool": str(tmp_path / "pairs.jsonl"), "methods": ["tif"], "kind": "pair"},
        "data": {"pool": {"path": str(tmp_path / "pairs.jsonl"), "n": n, "fingerprint": fingerprint(pairs)}},
        "budget": 1,
        "methods": {"tif": info},
        "timings_s": {"read": 0.1, "score_tif": 2.0, "total": 2.1},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_band_methods_show_the_raw_value_the_band_and_each_pairs_position(tmp_path):
    run = _pair_run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    data = build_report(run, config, load_pairs(str(run / "pairs.jsonl")))
    (tif,) = data.methods
    assert tif.plotted_label == "IF" and tif.plotted.tolist() == list(range(20))
    assert tif.cuts == [(3.8, "20th pct"), (15.2, "80th pct")]
    assert tif.order == "the 20-80 percentile band of IF (centre first)"
    first = tif.top[0]
    assert first.band == {"IF": pytest.approx(100 * (first.row + 0.5) / 20)} and first.in_band
    assert [s.row for s in tif.bottom] == [0, 1, 2, 3, 4] and tif.bottom[0].in_band is False
    html = rebuild_report(run).read_text()
    assert (
        "IF at the 47.5th percentile; in the band" in html and "IF at the 2.5th percentile; outside the band" in html
    )
    assert "chosen: good" in html and "rejected: bad" in html
