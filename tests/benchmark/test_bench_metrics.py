"""Paired comparisons of groups of cells: who is compared with whom, the numbers against the bootstrap itself,
verdicts by the metric's direction, and per-example values from evaluation results."""

from __future__ import annotations

import numpy as np
import pytest

from gradsift.benchmark.metrics import Group, compare_groups, example_values, verdict
from gradsift.stats import Interval, paired_bootstrap


def groups() -> list[Group]:
    return [
        Group("base", "0"),
        Group("full", "100%"),
        Group("full-epoch", "epoch"),
        Group("random", "5%"),
        Group("embed", "5%"),
        Group("less", "5%"),
        Group("less-v", "5%", base_method="less"),
        Group("length", "5%"),
        Group("length", "10%"),
        Group("tif", "band"),
    ]


def test_references_random_at_the_same_budget_full_and_embed_for_gradient_methods():
    gs = groups()
    refs = {(g.method, g.budget): sorted(g.references(gs)) for g in gs}
    assert refs[("less", "5%")] == ["embed", "full", "full-epoch", "random"]
    assert refs[("less-v", "5%")] == ["embed", "full", "full-epoch", "random"]  # a variant of a gradient method
    assert refs[("length", "5%")] == ["full", "full-epoch", "random"]
    assert refs[("length", "10%")] == ["full", "full-epoch"]  # no random at 10%
    assert refs[("tif", "band")] == ["full", "full-epoch"]  # no embed, no random at the band
    assert refs[("random", "5%")] == ["full", "full-epoch"]
    assert refs[("full", "100%")] == ["full-epoch"] and refs[("full-epoch", "epoch")] == ["full"]
    assert refs[("base", "0")] == ["full", "full-epoch"]
    assert Group("less", "5%").references(gs)["random"] == Group("random", "5%")


def test_compare_groups_against_the_bootstrap_and_by_direction():
    rng = np.random.default_rng(0)
    n = 30
    hard = rng.normal(size=n)
    values = {
        Group("random", "5%"): hard + rng.normal(scale=0.01, size=(3, n)),
        Group("less", "5%"): hard - 0.5 + rng.normal(scale=0.01, size=(3, n)),
        Group("full", "100%"): hard + 0.5 + rng.normal(scale=0.01, size=(2, n)),
    }
    for higher in (False, True):
        out = compare_groups(values, higher, label="tl/mean_loss", n_boot=400, seed=7)
        less = out["less"]["5%"]
        assert less["mean"] == pytest.approx(values[Group("less", "5%")].mean())
        assert less["ci95_low"] < less["mean"] < less["ci95_high"]
        vs = less["vs_random"]
        # the interval is the paired bootstrap's: same width as a bootstrap of the pair with any seed, roughly
        width = paired_bootstrap(values[Group("less", "5%")], values[Group("random", "5%")], n_boot=400, seed=1)
        assert vs["ci95_high"] - vs["ci95_low"] == pytest.approx(width.high - width.low, rel=0.5)
        assert vs["diff"] == pytest.approx(values[Group("less", "5%")].mean() - values[Group("random", "5%")].mean())
        assert vs["ci95_high"] < 0  # lower than random on every example
        assert vs["verdict"] == ("worse" if higher else "better")
        assert less["vs_full"]["verdict"] == ("worse" if higher else "better")
        assert out["full"]["100%"]["n_seeds"] == 2 and "vs_random" not in out["random"]["5%"]
    # a rerun draws the same intervals; another label draws others
    again = compare_groups(values, False, label="tl/mean_loss", n_boot=400, seed=7)
    other = compare_groups(values, False, label="bbh/mean_loss", n_boot=400, seed=7)
    assert again == compare_groups(values, False, label="tl/mean_loss", n_boot=400, seed=7)
    assert other["less"]["5%"]["ci95_low"] != again["less"]["5%"]["ci95_low"]


def test_compare_groups_refuses_groups_on_other_examples():
    with pytest.raises(ValueError, match="different numbers of examples"):
        compare_groups({Group("a", "1"): np.ones((1, 3)), Group("b", "1"): np.ones((1, 4))}, True)


def test_verdict_needs_the_interval_on_the_better_side():
    assert verdict(Interval(0.2, 0.1, 0.3), True) == "better"
    assert verdict(Interval(0.2, 0.1, 0.3), False) == "worse"
    assert verdict(Interval(-0.2, -0.3, -0.1), False) == "better"
    assert verdict(Interval(0.05, -0.01, 0.1), True) == "no difference"


def test_example_values_by_metric():
    result = {
        "metrics": {"accuracy": 0.5, "mean_margin": 0.1},
        "examples": [{"id": "a", "correct": True, "margin": 0.3}, {"id": "b", "correct": False, "margin": -0.1}],
    }
    ids, acc = example_values(result, "accuracy")
    assert ids == ["a", "b"] and acc.tolist() == [1.0, 0.0] and acc.mean() == result["metrics"]["accuracy"]
    assert example_values(result, "mean_margin")[1].tolist() == [0.3, -0.1]
    assert example_values(result, "token_mean_loss") is None  # not a mean over examples
    with pytest.raises(ValueError, match="without 'loss'"):
        example_values(result, "mean_loss")
