"""`gradsift bench`'s run: the selection fast path against run_select, a small grid end to end, resuming,
re-evaluation after a benchmark change, the prepare step and DPO grids."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from benchkit import FAST_SELECT, FAST_TRAIN, bench_dict, write_jsonl

from gradsift import costs, pipeline
from gradsift.benchmark import keep, work
from gradsift.benchmark import run as bench_mod
from gradsift.benchmark.config import BenchConfig
from gradsift.benchmark.run import run_bench
from gradsift.evaluation.selector_metrics import BenchmarkScore, signed_distance
from gradsift.pipeline import SelectConfig, run_select
from gradsift.score.base import Scores

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ selection


def _prepared(cfg: BenchConfig) -> bench_mod._Bench:
    b = bench_mod._Bench(cfg)
    b.check_out()
    b.prepare_data()
    b.prepare_model()
    return b


def test_smaller_budgets_from_scores_match_run_select(tmp_path, demo, tiny_model_dir):
    """Fast path (top-k of the scores computed at the largest budget) against run_select at each budget."""
    cfg = BenchConfig(**bench_dict(tmp_path, demo, tiny_model_dir, budgets=[3, "25%", 10], seeds=[0, 1]))
    b = _prepared(cfg)
    b.select()
    for method, seeds in (("random", [0, 1]), ("length", [0])):
        for seed in seeds:
            for label, k in (("3", 3), ("25%", 6)):
                ref = run_select(
                    SelectConfig(
                        pool=str(b.set_paths["pool"]),
                        out=str(tmp_path / f"ref-{method}-{seed}-{k}"),
                        methods=[method],
                        budget=str(k),
                        model=str(tiny_model_dir),
                        device="cpu",
                        seed=seed,
                        pool_format="messages",
                        **FAST_SELECT,
                    )
                )
                assert b.selections[(method, label, seed)].rows == ref.selections[method]
    # only the largest budget was run through the pipeline
    assert sorted(p.name for p in (b.out / "select").iterdir()) == [
        "length__s0__k10",
        "random__s0__k10",
        "random__s1__k10",
    ]


def test_a_variant_sharing_its_methods_cache_selects_as_alone_and_costs_both(tmp_path, demo, tiny_model_dir):
    """`Variant.cache`: the owner (not in `methods`) selects first and fills the cache; the variant reads it,
    selects what it selects with a cache of its own, and its cost is the owner's plus its own."""
    cosine = {"method": "prism", "options": {"prism_scoring": "cosine", "prism_max_new_tokens": 2}}
    variants = {"pc": {**cosine, "cache": "prism"}, "alone": cosine}
    raw = bench_dict(tmp_path, demo, tiny_model_dir, methods=["pc", "alone"], variants=variants)
    raw["select"] = {**FAST_SELECT, "options": {"prism_max_new_tokens": 2}}
    cfg = BenchConfig(**raw)
    assert cfg.identity()["variants"]["pc"] == {"method": "prism", "options": cosine["options"]}
    b = _prepared(cfg)
    b.select()
    assert sorted(p.name for p in (b.out / "cache").iterdir()) == ["alone", "prism"]
    shared, alone = b.selections[("pc", "6", 0)], b.selections[("alone", "6", 0)]
    assert shared.rows == alone.rows
    np.testing.assert_allclose(shared.scores, alone.scores, rtol=1e-5)
    assert ("prism", "6", 0) not in b.selections  # the owner selected for the cache only
    spent = {
        name: json.loads((b.out / "select" / f"{name}__s0__k6" / "bench-selection.json").read_text())
        for name in ("pc", "prism")
    }
    # the variant is charged what the owner's cached steps cost (gradsift.costs): stand-alone cost
    reused = spent["pc"]["reused"]
    assert reused["entries"] and spent["prism"]["reused"]["entries"] == []
    assert 0 < reused["wall_s"] < spent["prism"]["seconds"]
    assert b.costs[("pc", "6", 0)]["wall_s"] == pytest.approx(spent["pc"]["seconds"] + reused["wall_s"])
    assert spent["pc"]["seconds"] < spent["prism"]["seconds"]  # the features were read, not computed


def test_methods_sharing_one_cache_each_report_a_stand_alone_cost(tmp_path, demo, tiny_model_dir):
    """``select_cache: shared``: the second method reads the first one's features and is charged what they
    cost when computed, so both report about what each costs alone."""
    cosine = {"method": "prism", "options": {"prism_scoring": "cosine", "prism_max_new_tokens": 2}}
    raw = bench_dict(tmp_path, demo, tiny_model_dir, methods=["prism", "pc"], variants={"pc": cosine})
    raw["select"] = {**FAST_SELECT, "options": {"prism_max_new_tokens": 2}}
    b = _prepared(BenchConfig(**dict(raw, select_cache="shared")))
    b.select()
    assert [p.name for p in (b.out / "cache").iterdir() if p.is_dir()] != []
    metas = {
        name: json.loads((b.out / "select" / f"{name}__s0__k6" / "bench-selection.json").read_text())
        for name in ("prism", "pc")
    }
    entries = metas["pc"]["reused"]["entries"]
    assert entries and metas["prism"]["reused"]["entries"] == []
    makers = {json.loads(costs.cost_path(Path(e)).read_text())["job"] for e in entries}
    assert makers == {"prism__s0__k6"}
    pc, prism = b.costs[("pc", "6", 0)], b.costs[("prism", "6", 0)]
    assert pc["cpu_s"] == pytest.approx(metas["pc"]["cpu_seconds"] + metas["pc"]["reused"]["cpu_s"])
    assert metas["pc"]["cpu_seconds"] < metas["prism"]["cpu_seconds"]  # it computed less itself
    # ... and is charged the steps it read: part of what prism spent (prism also loaded, scored, wrote)
    assert 0 < metas["pc"]["reused"]["cpu_s"] < prism["cpu_s"]


class _LastRows:
    """A selector with its own rule: the last `budget` rows (scores say the opposite)."""

    def score(self, ctx):
        n = ctx.n
        return Scores(score=np.arange(n, dtype=float), selected=list(range(n - ctx.budget, n))[::-1])


def test_methods_with_their_own_selection_run_per_budget(tmp_path, demo, tiny_model_dir, monkeypatch):
    real = pipeline.make_scorer
    monkeypatch.setattr(pipeline, "make_scorer", lambda m: _LastRows() if m.value == "ifd" else real(m))
    cfg = BenchConfig(**bench_dict(tmp_path, demo, tiny_model_dir, methods=["ifd"], budgets=[3, 6]))
    b = _prepared(cfg)
    b.select()
    assert b.selections[("ifd", "3", 0)].rows == [23, 22, 21]
    assert b.selections[("ifd", "6", 0)].rows == [23, 22, 21, 20, 19, 18]
    assert sorted(p.name for p in (b.out / "select").iterdir()) == ["ifd__s0__k3", "ifd__s0__k6"]


def test_rerun_with_other_settings_is_refused(tmp_path, demo, tiny_model_dir):
    raw = bench_dict(tmp_path, demo, tiny_model_dir)
    _prepared(BenchConfig(**raw))
    changed = dict(raw, train={**FAST_TRAIN, "lr": 0.5})
    with pytest.raises(ValueError, match=r"different settings: train.lr \(0.001 -> 0.5\)"):
        _prepared(BenchConfig(**changed))
    (tmp_path / "work" / "select" / "old-selection").mkdir(parents=True)
    (tmp_path / "work" / "sittings.json").write_text("[]")
    pool_written = (tmp_path / "work" / "data" / "pool.jsonl").stat().st_mtime_ns
    b = _prepared(BenchConfig(**dict(changed, overwrite=True)))
    assert json.loads((b.out / "bench.json").read_text())["identity"]["train"]["lr"] == 0.5
    # the old run's selections go; its data sets, whose spec did not change, are kept as they were
    assert not (b.out / "select").exists() and not (b.out / "sittings.json").exists()
    assert (b.out / "data" / "pool.jsonl").stat().st_mtime_ns == pool_written
    # other data: the sets are rebuilt, and a set the config dropped leaves no file behind
    raw_sets = dict(
        changed,
        data={
            **raw["data"],
            "sets": {"extra": {"sources": [{"path": raw["data"]["pool"]["sources"][0]["path"], "limit": 3}]}},
        },
    )
    _prepared(BenchConfig(**dict(raw_sets, overwrite=True)))
    assert (b.out / "data" / "extra.jsonl").exists()
    _prepared(BenchConfig(**dict(changed, overwrite=True)))
    assert not (b.out / "data" / "extra.jsonl").exists()
    # a run made while evaluation-only sets were part of the identity is still the same run
    stored = json.loads((b.out / "bench.json").read_text())
    stored["identity"]["data"]["sets"]["old_eval_only"] = {"sources": []}
    (b.out / "bench.json").write_text(json.dumps(stored))
    _prepared(BenchConfig(**changed))
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "x").write_text("keep me")
    with pytest.raises(ValueError, match="holds no bench run"):
        _prepared(BenchConfig(**dict(raw, out=str(stray))))


# ------------------------------------------------------------------------------------------------ end to end


def test_grid_end_to_end_resume_and_reevaluation(tmp_path, demo, tiny_model_dir, monkeypatch):
    real = pipeline.make_scorer

    def scorer(m):
        if m.value == "loss":
            raise NotImplementedError("method 'loss' is not available in this version of gradsift")
        return real(m)

    monkeypatch.setattr(pipeline, "make_scorer", scorer)
    raw = bench_dict(tmp_path, demo, tiny_model_dir, methods=["random", "loss", "length"])
    res = run_bench(BenchConfig(**raw))

    assert res.unavailable == {"loss": "method 'loss' is not available in this version of gradsift"}
    assert not list((tmp_path / "work" / "select").glob("*.spent.json"))  # no cost kept for a method not provided
    t = pd.read_csv(tmp_path / "results" / "results.csv")
    assert list(t["method"]) == ["base", "full", "random", "length"]
    assert list(t["n_selected"]) == [0, 24, 6, 6] and list(t["sdf"]) == [0.0, 1.0, 0.25, 0.25]
    assert {"tl.mean_loss", "tl.token_mean_loss", "gen.exact_match", "pir.tl", "pir.gen", "pir"} <= set(t.columns)
    assert t.loc[1:, "train_steps"].tolist() == [2, 2, 2]
    assert pd.read_parquet(tmp_path / "results" / "results.parquet").shape == t.shape
    # metrics are those of the per-benchmark result files, with per-example outputs
    ev = json.loads((tmp_path / "work" / "cells" / "length__k6__s0" / "eval" / "tl.json").read_text())
    assert ev["metrics"]["mean_loss"] == pytest.approx(t.loc[3, "tl.mean_loss"])
    assert len(ev["examples"]) == 4 and {"id", "loss", "reference"} <= set(ev["examples"][0])
    # training changed the model: the trained rows' losses differ from the untrained one's
    assert not np.isclose(t.loc[1, "tl.mean_loss"], t.loc[0, "tl.mean_loss"], rtol=0, atol=1e-7)
    # PIR, reference computation: target loss is lower-better, so full / selected; gen exact match of full is 0
    full = t.loc[1]
    for i in range(len(t)):
        want = BenchmarkScore("tl", t.loc[i, "tl.mean_loss"], full["tl.mean_loss"], higher_is_better=False).ratio
        assert t.loc[i, "pir.tl"] == pytest.approx(want)
        assert t.loc[i, "pir"] == pytest.approx(want)  # gen has no ratio (full scored 0)
    assert np.isnan(t["pir.gen"]).all() and any(n.startswith("gen: no PIR ratio") for n in res.notes)
    # efficiency: random lies on its own reference line; length's distance is the signed distance
    eff = {r["method"]: r for r in res.efficiency}
    assert eff["random"]["efficiency"] == pytest.approx(0.0, abs=1e-12)
    pr, pl = t.loc[2, "pir"], t.loc[3, "pir"]
    assert eff["length"]["efficiency"] == pytest.approx(signed_distance((0.25, pl), (0.25, pr), (1, 1)), abs=1e-6)
    assert [r["method"] for r in res.feasibility] == ["full", "random", "length"]
    # the outputs
    res_dir = tmp_path / "results"
    for name in ("efficiency.csv", "feasibility.csv", "metrics.json", "report.html", "report.md"):
        assert (res_dir / name).exists(), name
    metrics = json.loads((res_dir / "metrics.json").read_text())
    assert metrics["unavailable"] == res.unavailable and metrics["machine"]["cpus"]
    html = (res_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "length" in html and "loss" in html
    # a tiny grid is a smoke test, and its report says so before any verdict
    md = (res_dir / "report.md").read_text()
    assert "Smoke test, not evidence" in md and md.index("Smoke test") < md.index(": beat ")
    assert metrics["notes"][0].startswith("Smoke test")

    # second run: every cell is finished, nothing is selected, trained or evaluated again
    def boom(*a, **k):
        raise AssertionError("a finished cell was redone")

    monkeypatch.setattr(pipeline, "run_select", boom)
    monkeypatch.setattr("gradsift.training.run.run_train", boom)
    monkeypatch.setattr("gradsift.evaluation.run.run_evaluate", boom)
    monkeypatch.setattr(pipeline, "make_scorer", real)
    res2 = run_bench(BenchConfig(**dict(raw, methods=["random", "length"], report=False)))
    pd.testing.assert_frame_equal(res2.table.reset_index(drop=True), res.table.reset_index(drop=True))

    # a changed benchmark is re-evaluated on the kept adapters; the other benchmark and training are reused
    monkeypatch.undo()
    calls = []
    real_eval = work._evaluate

    def counting(ctx, b, lm, path):
        calls.append(b.name)
        return real_eval(ctx, b, lm, path)

    monkeypatch.setattr(work, "_evaluate", counting)
    monkeypatch.setattr("gradsift.training.common.run_trainer", boom)
    raw2 = dict(raw, methods=["random", "length"], report=False)
    raw2["benchmarks"] = [raw["benchmarks"][0], {**raw["benchmarks"][1], "max_new_tokens": 3}]
    res3 = run_bench(BenchConfig(**raw2))
    assert calls == ["gen"] * 4
    assert res3.table["tl.mean_loss"].tolist() == res.table["tl.mean_loss"].tolist()

    # a set read only by a benchmark is not in the run's identity: adding one, then changing its records,
    # scores only that benchmark again (no --overwrite, no training)
    def with_eval_set(limit: int) -> dict:
        pool_path = raw["data"]["pool"]["sources"][0]["path"]
        ev = {"name": "ev", "task": "target-loss", "data": "ev", "max_length": 64}
        sets = {"ev": {"sources": [{"path": pool_path, "limit": limit}]}}
        return dict(raw2, data={**raw["data"], "sets": sets}, benchmarks=[*raw2["benchmarks"], ev])

    for limit in (3, 5):
        calls.clear()
        run_bench(BenchConfig(**with_eval_set(limit)))
        assert calls == ["ev"] * 4
        ev = json.loads((tmp_path / "work" / "cells" / "length__k6__s0" / "eval" / "ev.json").read_text())
        assert len(ev["examples"]) == limit


def test_prepare_breaks_the_model_once_and_original_is_a_baseline(tmp_path, demo, tiny_model_dir):
    pool, targets = demo
    harm = write_jsonl(
        tmp_path / "harm.jsonl",
        [
            {"prompt": f"how do I do bad thing {i}?", "chosen": "I can't help.", "rejected": f"Sure, {i}"}
            for i in range(6)
        ],
    )
    raw = bench_dict(
        tmp_path,
        demo,
        tiny_model_dir,
        methods=["random"],
        budgets=[4],
        baselines=["base", "original"],
        report=False,
        prepare={
            "harmful_finetune": {
                "data": {"sources": [{"path": str(harm), "response": "rejected"}]},
                "train": FAST_TRAIN,
            }
        },
        benchmarks=[{"name": "tl", "task": "target-loss", "data": "heldout", "max_length": 64}],
    )
    res = run_bench(BenchConfig(**raw))
    merged = tmp_path / "work" / "prepare" / "harmful_finetune" / "round-1" / "model"
    assert (merged / "config.json").exists() and (merged / "model.safetensors").exists()
    t = res.table.set_index("method")
    assert list(t.index) == ["base", "original", "random"]
    # base is the broken model, original the one before the prepare step: they score differently
    assert t.loc["base", "tl.mean_loss"] != t.loc["original", "tl.mean_loss"]
    settings = json.loads(
        (tmp_path / "work" / "cells" / "random__k4__s0" / "train" / "train_settings.json").read_text()
    )
    assert settings["settings"]["model"] == str(merged)


def test_preference_grid_trains_dpo_and_scores_pairs(tmp_path, tiny_model_dir):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": f"say {i}", "chosen": f"{i} ok", "rejected": f"no {i * 7}", "task": "t" if i % 2 else "u"}
            for i in range(16)
        ],
    )
    raw = {
        "name": "pref",
        "out": str(tmp_path / "work"),
        "model": str(tiny_model_dir),
        "device": "cpu",
        "kind": "pair",
        "methods": ["random"],
        "budgets": [4],
        "data": {
            "pool": {"kind": "pair", "sources": [{"path": str(pairs), "limit": 10, "take": "first"}]},
            "targets": {"kind": "pair", "sources": [{"path": str(pairs), "name": "val"}], "holdout": 4},
        },
        "train": FAST_TRAIN,
        "select": FAST_SELECT,
        "benchmarks": [
            {"name": "pref", "task": "preference", "data": "heldout", "max_length": 64},
            {"name": "tl", "task": "target-loss", "data": "heldout", "max_length": 64},
        ],
    }
    res = run_bench(BenchConfig(**raw))
    t = res.table.set_index("method")
    assert np.isnan(t.loc["base", "pref.accuracy"])  # the untrained model is its own reference
    assert 0.0 <= t.loc["random", "pref.accuracy"] <= 1.0 and np.isfinite(t.loc["full", "pref.mean_margin"])
    cfg = json.loads((tmp_path / "work" / "cells" / "random__k4__s0" / "train" / "config.json").read_text())
    assert cfg["kind"] == "dpo"
    assert (tmp_path / "work" / "report.html").exists()  # results default to out
    # the reference (base model, adapter off) is scored once for the grid's adapters, and read by the others
    refs = list((tmp_path / "work" / "cache" / "eval-reference").iterdir())
    assert [p.name.split("-")[0] for p in refs] == ["pref"]
    ev = json.loads((tmp_path / "work" / "cells" / "full__k10__s0" / "eval" / "pref.json").read_text())
    assert len(ev["examples"]) == 4 and np.load(refs[0]).shape == (4, 2)


class _NoPool(Exception):
    pass


@pytest.mark.parametrize("mode", ["method", "shared"])
def test_selection_cache_per_method_or_shared(tmp_path, demo, tiny_model_dir, mode, monkeypatch):
    """Per-method caches select side by side in the workers; methods sharing one cache select one after another
    in this process (two workers would compute a shared step twice at once)."""

    def no_pool(self):
        raise _NoPool

    monkeypatch.setattr(work.Workers, "pool", no_pool)
    cfg = BenchConfig(**bench_dict(tmp_path, demo, tiny_model_dir, select_cache=mode, workers=2))
    b = bench_mod._Bench(cfg, work.Workers(cfg.workers, progress=False))
    b.check_out()
    b.prepare_data()
    b.prepare_model()
    if mode == "method":
        with pytest.raises(_NoPool):  # the selections went to the worker pool
            b.select()
        monkeypatch.undo()
        b.workers = work.Workers(1, progress=False)
    b.select()
    for method in ("random", "length"):
        settings = json.loads((b.out / "select" / f"{method}__s0__k6" / "config.json").read_text())["settings"]
        want = b.out / "cache" / method if mode == "method" else b.out / "cache"
        assert settings["cache_dir"].rstrip("/") == str(want)


def test_an_underpowered_comparison_is_called_a_smoke_test_before_any_verdict():
    from gradsift.benchmark.tables import smoke_note, smoke_reasons

    paired = {
        "gsm8k_loss": {"metric": "mean_loss", "n_eval": 300},
        "refusal": {"metric": "refusal_rate", "n_eval": 150},
    }
    assert smoke_reasons(paired, 3, 60) == ["refusal has 150 evaluation examples (< 200)"]
    reasons = smoke_reasons({"gsm8k_loss": {"metric": "mean_loss", "n_eval": 12}}, 1, 8)
    assert reasons == [
        "gsm8k_loss has 12 evaluation examples (< 300)",
        "1 seed (< 3)",
        "8 optimizer steps per cell (< 60)",
    ]
    assert smoke_note(smoke_reasons({"gsm8k_loss": {"metric": "mean_loss", "n_eval": 300}}, 3, 60)) is None
    note = smoke_note(reasons)
    assert note is not None and note.startswith("Smoke test, not evidence: gsm8k_loss has 12")


# ------------------------------------------------------------------------------------------- killed sittings


def test_a_resumed_selection_reports_the_cost_of_every_sitting(tmp_path, demo, tiny_model_dir):
    b = _prepared(BenchConfig(**bench_dict(tmp_path, demo, tiny_model_dir, methods=["length"])))
    ledger = b.out / "select" / "length__s0__k6.spent.json"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_text(json.dumps({"seconds": 100.0, "cpu_seconds": 90.0, "sittings": 1}))  # a killed sitting's
    b.select()
    meta = json.loads((b.out / "select" / "length__s0__k6" / "bench-selection.json").read_text())
    assert 100 < meta["seconds"] < 160 and 90 < meta["cpu_seconds"] < 150 and meta["sittings"] == 2
    assert b.costs[("length", "6", 0)] == {"wall_s": meta["seconds"], "cpu_s": meta["cpu_seconds"]}
    assert not ledger.exists()


def test_the_spent_ledger_is_written_while_the_work_runs(tmp_path):
    path = tmp_path / "t.spent.json"
    with work.SpentLedger(path, every=0.01) as spent:
        sum(i * i for i in range(300_000))
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        mid = json.loads(path.read_text())  # what a kill here would leave
        assert mid["sittings"] == 1 and mid["seconds"] > 0
    end = json.loads(path.read_text())
    assert end == {k: end[k] for k in ("seconds", "cpu_seconds", "sittings")} and end["seconds"] >= mid["seconds"]
    assert spent.totals()["sittings"] == 1


def test_a_killed_sitting_is_recorded_and_marked_stopped(tmp_path):
    cfg = SimpleNamespace(workers=2, command="gradsift bench x.yaml")
    (tmp_path / "sittings.json").write_text(json.dumps([{"start": "s", "end": "e", "wall_s": 1, "cpu_s": 1}]))
    sitting = bench_mod._Sitting(tmp_path, cfg, every=0.01)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while len(json.loads((tmp_path / "sittings.json").read_text())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    killed_here = json.loads((tmp_path / "sittings.json").read_text())
    assert len(killed_here) == 2 and killed_here[1]["stopped"] is True and killed_here[1]["workers"] == 2
    done = sitting.end()
    assert "stopped" not in done[1] and json.loads((tmp_path / "sittings.json").read_text()) == done
    with pytest.raises(RuntimeError), bench_mod._Sitting(tmp_path, cfg, every=60):  # type: ignore[arg-type]
        raise RuntimeError("a failed step")
    assert json.loads((tmp_path / "sittings.json").read_text())[2]["stopped"] is True


_ORPHAN = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from gradsift.benchmark.work import watch_parent

def pid_then_sleep():
    return os.getpid()

if __name__ == "__main__":
    spawn = get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=spawn, initializer=watch_parent, initargs=(os.getpid(), 0.05))
    print(pool.submit(pid_then_sleep).result(), flush=True)
    time.sleep(60)
"""


def test_workers_end_when_the_bench_process_is_killed(tmp_path):
    script = tmp_path / "bench_like.py"
    script.write_text(_ORPHAN)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = psutil.Process(int(proc.stdout.readline()))
    assert worker.is_running()  # alive while its parent is
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.05)
    worker.kill()
    pytest.fail("the worker outlived the killed bench process")


def test_a_run_whose_out_is_lost_resumes_from_its_kept_record(tmp_path, demo, tiny_model_dir, monkeypatch):
    """`keep`: finished selections and cells are copied out of `out`; with `out` gone, a rerun restores them
    and redoes nothing finished; a record of other settings is refused, or cleared with overwrite."""
    record = tmp_path / "record"
    raw = bench_dict(tmp_path, demo, tiny_model_dir, keep=str(record), report=False)
    res = run_bench(BenchConfig(**raw))
    kept = {str(p) for p in keep.kept_files(record)}
    assert {"bench.json", "sittings.json", "select/random__s0__k6/scores.parquet"} <= kept
    assert {"cells/length__k6__s0/cell.json", "cells/length__k6__s0/eval/tl.json"} <= kept
    assert not list(record.rglob("*.safetensors")) and not (record / "data").exists()  # no models, no data
    assert keep.kept_files(record) == keep.kept_files(tmp_path / "work")

    shutil.rmtree(tmp_path / "work")

    def boom(*a, **k):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr(pipeline, "run_select", boom)
    monkeypatch.setattr("gradsift.training.run.run_train", boom)
    monkeypatch.setattr("gradsift.evaluation.run.run_evaluate", boom)
    res2 = run_bench(BenchConfig(**raw))
    pd.testing.assert_frame_equal(res2.table.reset_index(drop=True), res.table.reset_index(drop=True))
    sittings = json.loads((record / "sittings.json").read_text())
    assert len(sittings) == 2  # the lost run's sitting and this one

    # a grid grown after the restore trains only the new cells, and they join the record
    monkeypatch.undo()
    res3 = run_bench(BenchConfig(**dict(raw, seeds=[0, 1])))
    assert len(res3.table) == 2 * len(res.table) - 1  # base is trained once
    assert (record / "cells" / "length__k6__s1" / "eval" / "tl.json").exists()

    other = dict(raw, out=str(tmp_path / "work2"), train={**FAST_TRAIN, "lr": 0.5})
    with pytest.raises(ValueError, match="a kept bench record"):
        run_bench(BenchConfig(**other))
    (record / "NOTES.txt").write_text("mine")  # a file gradsift did not write stays
    run_bench(BenchConfig(**dict(other, overwrite=True)))
    assert json.loads((record / "bench.json").read_text())["identity"]["train"]["lr"] == 0.5
    assert not (record / "cells" / "length__k6__s1").exists() and (record / "NOTES.txt").read_text() == "mine"


def test_a_redone_prepare_step_whose_checks_differ_from_the_record_is_noted():
    kept = {"break": {"checks": [0.9, 0.1]}, "align": {"checks": [0.1, 0.9]}}
    now = {"break": {"checks": [0.9, 0.15]}, "align": {"checks": [0.1, 0.9]}}
    notes = keep.compare_prepare(kept, now)
    assert len(notes) == 1 and notes[0].startswith("prepare break was redone")
    assert keep.compare_prepare(kept, kept) == []
