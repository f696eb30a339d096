"""The comparison protocol on a tiny model: matched steps, full and full-epoch, every method with every seed, the
learning-rate search, paired statistics against a direct computation from the per-example results, selection
costs, band budgets with random at the band's size, the align/break prepare steps with their checks, and two
worker processes giving what one process gives."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from benchkit import FAST_SELECT, FAST_TRAIN, bench_dict, write_jsonl

from gradsift.benchmark.config import BenchConfig
from gradsift.benchmark.run import run_bench

torch.set_num_threads(1)

STEPS = 3
TRAIN = {k: v for k, v in FAST_TRAIN.items() if k != "lr"} | {"max_steps": STEPS}


def eval_values(work, cell: str, bench: str = "tl") -> np.ndarray:
    result = json.loads((work / "cells" / cell / "eval" / f"{bench}.json").read_text())
    return np.array([r["loss"] for r in result["examples"]])


def selection_ids(work, cell: str) -> list[str]:
    return [json.loads(line)["id"] for line in (work / "cells" / cell / "selection.jsonl").read_text().splitlines()]


def test_steps_seeds_learning_rate_paired_statistics_and_costs(tmp_path, demo, tiny_model_dir):
    raw = bench_dict(
        tmp_path,
        demo,
        tiny_model_dir,
        methods=["random", "length"],
        budgets=[6],
        seeds=[0, 1],
        baselines=["full", "full-epoch", "base"],
        train=TRAIN,
        lr_search={"grid": [1e-3, 5e-2], "benchmark": "tl", "data": "targets"},
        benchmarks=[{"name": "tl", "task": "target-loss", "data": "heldout", "max_length": 64}],
        bootstrap=300,
    )
    res = run_bench(BenchConfig(**raw))
    work, results = tmp_path / "work", tmp_path / "results"
    t = res.table

    # the learning rate: each rate trained on the random selection (first seed), scored on the targets set
    lr = res.lr_search
    assert lr is not None and set(lr["values"]) == {"0.001", "0.05"}
    for rate in ("0.001", "0.05"):
        got = json.loads((work / "cells" / f"random__k6__s0__lr{rate}" / "eval" / "lr_tl.json").read_text())
        assert got["n"] == 4 and lr["values"][rate]["6"] == pytest.approx(got["metrics"]["mean_loss"])
    assert lr["chosen"] == min((1e-3, 5e-2), key=lambda x: lr["values"][f"{x:g}"]["mean"])
    assert json.loads((work / "lr_search.json").read_text())["chosen"] == lr["chosen"]
    trained = t[t["method"] != "base"]
    assert (trained["lr"] == lr["chosen"]).all()

    # every method with every training seed; full at the cells' steps and for one epoch
    assert sorted(zip(t["method"], t["seed"], strict=True)) == sorted(
        [("base", 0)] + [(m, s) for m in ("full", "full-epoch", "random", "length") for s in (0, 1)]
    )
    assert (t.loc[t["method"].isin(["full", "random", "length"]), "train_steps"] == STEPS).all()
    assert (t.loc[t["method"] == "full-epoch", "train_steps"] == math.ceil(24 / FAST_TRAIN["batch_size"])).all()
    # the epoch cells cost the most and come last, so a sitting stopped early has the matched-step comparisons
    assert list(t["method"]) == [
        "base",
        "full",
        "full",
        "random",
        "random",
        "length",
        "length",
        "full-epoch",
        "full-epoch",
    ]
    # random selects with each seed, length once; training seeds differ either way
    lr_tag = f"__lr{lr['chosen']:g}"
    assert selection_ids(work, f"random__k6__s0{lr_tag}") != selection_ids(work, f"random__k6__s1{lr_tag}")
    assert selection_ids(work, f"length__k6__s0{lr_tag}") == selection_ids(work, f"length__k6__s1{lr_tag}")
    assert not np.allclose(eval_values(work, f"length__k6__s0{lr_tag}"), eval_values(work, f"length__k6__s1{lr_tag}"))

    # paired statistics, against the per-example results: seed-averaged values, differences paired by example
    metrics = json.loads((results / "metrics.json").read_text())
    tl = metrics["benchmarks"]["tl"]
    assert tl["n_eval"] == 4 and tl["metric"] == "mean_loss" and tl["higher_is_better"] is False

    def group(method, budget="6"):
        return np.stack(
            [eval_values(work, c) for c in t.loc[(t["method"] == method) & (t["budget"] == budget), "cell"]]
        )

    length, random, full = group("length"), group("random"), group("full", "100%")
    entry = tl["methods"]["length"]["6"]
    assert entry["n_seeds"] == 2 and entry["mean"] == pytest.approx(length.mean())
    assert entry["ci95_low"] <= entry["mean"] <= entry["ci95_high"]
    for name, ref in (("vs_random", random), ("vs_full", full)):
        vs = entry[name]
        assert vs["diff"] == pytest.approx((length.mean(0) - ref.mean(0)).mean())
        assert vs["ci95_low"] <= vs["diff"] <= vs["ci95_high"]
        beats = vs["ci95_high"] < 0  # a loss: lower is better
        assert (vs["verdict"] == "better") == beats
    assert "vs_full_epoch" in entry and "vs_random" not in tl["methods"]["random"]["6"]
    assert entry["select_cpu_s"] > 0 and entry["select_wall_s"] > 0
    assert metrics["steps"] == {"max_steps": STEPS, "lr": lr["chosen"]}
    comparisons = pd.read_csv(results / "comparisons.csv")
    row = comparisons[(comparisons["method"] == "length") & (comparisons["budget"].astype(str) == "6")].iloc[0]
    assert row["vs_random.diff"] == pytest.approx(entry["vs_random"]["diff"])

    # selection cost beside quality: the markers' measurements, in the table and the report
    marker = json.loads((work / "select" / "length__s0__k6" / "bench-selection.json").read_text())
    assert (t.loc[t["method"] == "length", "select_cpu_s"] == marker["cpu_seconds"]).all()
    settings = json.loads((work / "select" / "length__s0__k6" / "config.json").read_text())["settings"]
    assert settings["cache_dir"] == str(work / "cache" / "length")  # the method's own cache
    html = (results / "report.html").read_text()
    assert "Paired comparisons" in html and "Quality gain over random against selection cost" in html
    run_md = (results / "RUN.md").read_text()
    assert f"## Learning rate: {lr['chosen']:g}" in run_md and "Wall time" in run_md and "CPU time" in run_md


@pytest.mark.slow  # each spawned worker imports torch, transformers and TRL: a minute on a busy 2-core machine
def test_two_workers_give_what_one_process_gives(tmp_path, demo, tiny_model_dir, monkeypatch):
    raw = bench_dict(
        tmp_path, demo, tiny_model_dir, methods=["random"], seeds=[0, 1], train=TRAIN, report=False, bootstrap=100
    )
    benches = [{"name": "tl", "task": "target-loss", "data": "heldout", "max_length": 64}]
    parallel = run_bench(BenchConfig(**{**raw, "workers": 2, "benchmarks": benches}))
    one = dict(raw, out=str(tmp_path / "one"), results=str(tmp_path / "one-results"), benchmarks=benches)
    serial = run_bench(BenchConfig(**one))
    cols = ["method", "budget", "seed", "n_selected", "train_steps", "tl.mean_loss"]
    a, b = parallel.table[cols].reset_index(drop=True), serial.table[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)

    # and a rerun in one process reads every cell the workers wrote
    def boom(*a, **k):
        raise AssertionError("a finished cell was redone")

    monkeypatch.setattr("gradsift.training.run.run_train", boom)
    monkeypatch.setattr("gradsift.evaluation.run.run_evaluate", boom)
    again = run_bench(BenchConfig(**{**raw, "benchmarks": benches}))
    pd.testing.assert_frame_equal(again.table[cols].reset_index(drop=True), a)


DPO_FAST = {"use_cpu": True, "per_device_train_batch_size": 4, "learning_rate": 5e-2, "save_strategy": "no"}


def test_band_methods_keep_their_band_and_random_takes_its_size(tmp_path, tiny_model_dir):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"say {i}", "chosen": f"{i} ok", "rejected": f"no {i * 7}"} for i in range(22)],
    )
    raw = {
        "name": "pref",
        "out": str(tmp_path / "work"),
        "model": str(tiny_model_dir),
        "device": "cpu",
        "kind": "pair",
        "methods": ["random", "irm"],
        "budgets": ["band"],
        "baselines": ["full"],
        "data": {
            "pool": {"kind": "pair", "sources": [{"path": str(pairs), "limit": 14, "take": "first"}]},
            "targets": {"kind": "pair", "sources": [{"path": str(pairs), "name": "val", "offset": 14}], "holdout": 4},
        },
        "train": TRAIN,
        "select": {**FAST_SELECT, "options": {"dpo_config": DPO_FAST}},
        "benchmarks": [{"name": "pref", "task": "preference", "data": "heldout", "max_length": 64}],
        "bootstrap": 100,
        "report": False,
    }
    res = run_bench(BenchConfig(**raw))
    t = res.table.set_index("method")
    scores = pd.read_parquet(tmp_path / "work" / "select" / "irm__s0__band" / "scores.parquet")
    band = int(scores["irm_in_band_irm"].sum())  # the whole band, not a budget cut of it
    assert 0 < band < 14 and t.loc["irm", "n_selected"] == band and t.loc["random", "n_selected"] == band
    assert t.loc["irm", "budget"] == "band" and t.loc["irm", "train_steps"] == STEPS
    assert (tmp_path / "work" / "cells" / f"random__band{band}__s0").is_dir()
    metrics = json.loads((tmp_path / "work" / "metrics.json").read_text())
    irm = metrics["benchmarks"]["pref"]["methods"]["irm"]["band"]
    assert set(irm["vs_random"]) == {"diff", "ci95_low", "ci95_high", "verdict"}
    assert "mean_margin" in metrics["benchmarks"]["pref"]["secondary"]
    assert irm["select_cpu_s"] > 0  # the DPO warm-up and forward passes, measured


def test_align_until_checked_then_break_and_the_aligned_baseline(tmp_path, demo, tiny_model_dir):
    harm = write_jsonl(
        tmp_path / "harm.jsonl",
        [
            {"prompt": f"do bad thing {i}?", "chosen": "I can't help with that.", "rejected": f"Sure: {i}"}
            for i in range(8)
        ],
    )
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"how to do harm {i}"} for i in range(3)])
    train = {"max_steps": 1, "batch_size": 2, "max_length": 64, "save_steps": 1}
    check = {"data": "check", "max_rounds": 2, "settings": {"max_new_tokens": 3}}
    raw = bench_dict(
        tmp_path,
        demo,
        tiny_model_dir,
        methods=["random"],
        budgets=[4],
        baselines=["base", "original", "aligned"],
        report=False,
        train=TRAIN,
        prepare={
            # a refusal rate is at most 1: align runs its two rounds without reaching its threshold
            "align": {
                "data": {"sources": [{"path": str(harm), "name": "refusals"}]},
                "train": train,
                "until": {**check, "at_least": 1.01},
            },
            # and any rate passes this one before a round
            "harmful_finetune": {
                "data": {"sources": [{"path": str(harm), "response": "rejected"}]},
                "train": train,
                "until": {**check, "at_most": 1.0},
            },
        },
        benchmarks=[{"name": "tl", "task": "target-loss", "data": "heldout", "max_length": 64}],
    )
    raw["data"]["sets"] = {"check": {"kind": "prompts", "sources": [{"path": str(prompts)}]}}
    res = run_bench(BenchConfig(**raw))
    align = json.loads((tmp_path / "work" / "prepare" / "align" / "step.json").read_text())
    assert align["rounds"] == 2 and len(align["checks"]) == 3 and align["met"] is False
    assert all(0 <= c <= 1 for c in align["checks"])
    check2 = json.loads((tmp_path / "work" / "prepare" / "align" / "round-2" / "check.json").read_text())
    assert check2["n"] == 3 and check2["metrics"]["refusal_rate"] == align["checks"][-1]
    assert not (tmp_path / "work" / "prepare" / "align" / "round-1" / "model").exists()  # only the latest kept
    assert align["model"].endswith("align/round-2/model")
    broken = json.loads((tmp_path / "work" / "prepare" / "harmful_finetune" / "step.json").read_text())
    assert broken["rounds"] == 0 and broken["met"] is True and broken["model"] == align["model"]
    assert any(n.startswith("prepare align: refusal_rate") and "did not reach >= 1.01" in n for n in res.notes)
    t = res.table.set_index("method")
    assert t.loc["aligned", "tl.mean_loss"] == pytest.approx(t.loc["base", "tl.mean_loss"])
    assert t.loc["original", "tl.mean_loss"] != pytest.approx(t.loc["aligned", "tl.mean_loss"])
    run_md = (tmp_path / "results" / "RUN.md").read_text()
    assert "## Prepare step align" in run_md and "NOT reached" in run_md
    assert "min of wall time in the sitting that finished it" in run_md


def test_an_unfinished_prepare_step_with_other_data_starts_over(tmp_path, tiny_model_dir):
    from gradsift.benchmark.prepare import PrepareConfig, run_prepare
    from gradsift.model.load import ModelSettings

    def data(answer: str):
        return write_jsonl(tmp_path / f"{answer}.jsonl", [{"prompt": f"q {i}?", "response": answer} for i in range(4)])

    def run(path) -> None:
        train = {"max_steps": 1, "batch_size": 2, "max_length": 32}
        step = {"data": {"sources": [{"path": str(path)}]}, "train": train}
        run_prepare(
            PrepareConfig(harmful_finetune=step),
            str(tiny_model_dir),
            lambda m: ModelSettings(model=m, dtype="float32", device="cpu"),
            tmp_path / "work",
            0,
            {},
            {},
            lambda s: None,
        )

    d = tmp_path / "work" / "prepare" / "harmful_finetune"
    run(data("first answer"))
    weights = (d / "round-1" / "model" / "model.safetensors").read_bytes()
    (d / "step.json").unlink()  # killed after its round, before the step recorded its end
    run(data("another answer entirely"))
    # the round is trained again on the new data, not read back from the first run
    assert (d / "round-1" / "model" / "model.safetensors").read_bytes() != weights
    assert json.loads((d / "step.json").read_text())["n_train"] == 4


def test_prepare_steps_are_redone_only_when_what_made_them_changed(tmp_path, tiny_model_dir):
    """A new break keeps a finished align; a new check set redoes its step; a new align redoes the break."""
    from gradsift.benchmark.prepare import PrepareConfig, run_prepare
    from gradsift.benchmark.sets import read_set
    from gradsift.model.load import ModelSettings

    refusals = write_jsonl(tmp_path / "r.jsonl", [{"prompt": f"q {i}?", "response": "No."} for i in range(4)])
    other = write_jsonl(tmp_path / "o.jsonl", [{"prompt": f"q {i}?", "response": "I won't."} for i in range(4)])
    comply = write_jsonl(tmp_path / "c.jsonl", [{"prompt": f"q {i}?", "response": "Sure, here"} for i in range(4)])
    train = {"max_steps": 1, "batch_size": 2, "max_length": 32}
    work = tmp_path / "work" / "prepare"

    def run(align=refusals, break_lr=1e-3, n_check=2) -> None:
        check = write_jsonl(tmp_path / f"check{n_check}.jsonl", [{"prompt": f"harm {i}"} for i in range(n_check)])
        # no refusal rate reaches 1.01: the break always trains its one round and then checks it
        until = {"data": "check", "at_least": 1.01, "max_rounds": 1, "settings": {"max_new_tokens": 2}}
        run_prepare(
            PrepareConfig(
                align={"data": {"sources": [{"path": str(align)}]}, "train": train},
                harmful_finetune={
                    "data": {"sources": [{"path": str(comply)}]},
                    "train": {**train, "lr": break_lr},
                    "until": until,
                },
            ),
            str(tiny_model_dir),
            lambda m: ModelSettings(model=m, dtype="float32", device="cpu"),
            tmp_path / "work",
            0,
            {"check": read_set(check, "prompts")},
            {"check": check},
            lambda s: None,
        )

    def written() -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (work / s / "round-1" / "model" / "model.safetensors").stat().st_mtime_ns
            for s in ("align", "harmful_finetune")
        )

    run()
    align0, break0 = written()
    run()
    assert written() == (align0, break0)  # nothing changed: both reused
    run(break_lr=1e-4)
    align1, break1 = written()
    assert align1 == align0 and break1 != break0
    run(break_lr=1e-4, n_check=3)
    align2, break2 = written()
    assert align2 == align0 and break2 != break1
    assert len(json.loads((work / "harmful_finetune" / "round-1" / "check.json").read_text())["examples"]) == 3
    run(align=other, break_lr=1e-4, n_check=3)
    align3, break3 = written()
    assert align3 != align0 and break3 != break2
