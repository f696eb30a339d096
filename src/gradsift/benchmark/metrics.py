"""The task metrics a bench reads, and paired comparisons of trained models on the same evaluation examples.

Every evaluation result keeps one row per example (`gradsift.evaluation.tasks.task_result`), so a metric that
is a mean over examples has a per-example value (`EXAMPLE_KEYS`): a loss, whether an answer was right, whether
the model refused, a reward margin. Two groups of models (one method at one budget, each trained with S seeds)
are compared on those values, paired on the same examples: the mean over examples of the difference of their
seed-averaged values, with a bootstrap interval that resamples examples and seeds
(`gradsift.stats.paired_bootstrap`). A group beats its reference only where that interval excludes 0 on the
better side of the metric's direction.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gradsift.evaluation.tasks import TaskKind
from gradsift.report.data import BASELINES
from gradsift.stats import Interval, paired_bootstrap

PRIMARY_METRICS: dict[TaskKind, tuple[str, bool]] = {
    TaskKind.GSM8K: ("exact_match", True),
    TaskKind.BBH: ("exact_match", True),
    TaskKind.MULTIPLE_CHOICE: ("accuracy", True),
    TaskKind.REFUSAL: ("refusal_rate", True),
    TaskKind.UTILITY: ("mean_loss", False),
    TaskKind.PREFERENCE: ("accuracy", True),
    TaskKind.TARGET_LOSS: ("mean_loss", False),
}
"""Default primary metric of each task kind and whether higher is better."""

METRIC_DIRECTIONS = {
    "exact_match": True,
    "macro_exact_match": True,
    "accuracy": True,
    "refusal_rate": True,
    "mean_reward_margin": True,
    "mean_margin": True,
    "mean_loss": False,
    "token_mean_loss": False,
}
"""Whether higher is better, for the task metrics a benchmark may choose as its primary one."""

EXAMPLE_KEYS = {
    "mean_loss": "loss",
    "accuracy": "correct",
    "exact_match": "correct",
    "refusal_rate": "refused",
    "mean_margin": "margin",
}
"""The per-example field whose mean over examples is the metric. Metrics without one (a token-weighted loss,
a macro average, ``mean_reward_margin`` = beta x ``mean_margin``) get no paired comparison."""

Verdict = Literal["better", "worse", "no difference"]

REFERENCES = ("random", "full", "full-epoch", "embed")
"""What a group is compared with: ``vs_random`` (random at the same budget), ``vs_full`` (the whole pool at
the same steps), ``vs_full_epoch`` (the whole pool for one epoch), ``vs_embed`` (gradient methods only)."""

GRADIENT_METHODS = frozenset({"less", "prism", "bids", "tif"})
"""Methods scored from per-example gradients: also compared with ``embed``, the cheapest target-aware baseline."""


def example_values(result: Mapping[str, Any], metric: str) -> tuple[list[str], np.ndarray] | None:
    """The ids and per-example values [N] behind `metric` in an evaluation result, or None when the metric is
    not a mean over examples (`EXAMPLE_KEYS`).

    Raises:
        ValueError: The result's rows lack the field.
    """
    key = EXAMPLE_KEYS.get(metric)
    if key is None:
        return None
    rows = result["examples"]
    missing = [r.get("id") for r in rows if key not in r]
    if missing:
        raise ValueError(f"{metric}: evaluation rows without {key!r} (ids {missing[:3]})")
    return [str(r["id"]) for r in rows], np.array([float(r[key]) for r in rows])


@dataclass(frozen=True)
class Group:
    """One method at one budget: the label of a set of trained models.

    Attributes:
        method: Method (or baseline) name.
        budget: Budget label as the results table shows it (``5%``, ``band``, ``100%``, ``epoch``, ``0``).
        base_method: The method it runs (a variant's method; else `method`).
    """

    method: str
    budget: str
    base_method: str = ""

    def references(self, groups: Sequence[Group]) -> dict[str, Group]:
        """The groups this one is compared with, by reference name (those present in `groups`): random at
        the same budget (selectors but random), full and full-epoch, embed at the same budget (gradient
        methods)."""
        by_key = {(g.method, g.budget): g for g in groups}
        out: dict[str, Group] = {}
        if self.method not in BASELINES and self.method != "random" and ("random", self.budget) in by_key:
            out["random"] = by_key[("random", self.budget)]
        for name in ("full", "full-epoch"):
            ref = next((g for g in groups if g.method == name), None)
            if ref is not None and self.method != name:
                out[name] = ref
        if (self.base_method or self.method) in GRADIENT_METHODS and ("embed", self.budget) in by_key:
            out["embed"] = by_key[("embed", self.budget)]
        return out


def verdict(interval: Interval, higher_is_better: bool) -> Verdict:
    """``better`` when the interval of ``group - reference`` lies entirely on the better side of 0, ``worse``
    when entirely on the other, else ``no difference``."""
    if not interval.excludes_zero():
        return "no difference"
    above = interval.low > 0
    return "better" if above == higher_is_better else "worse"


def _seed(base: int, *parts: str) -> int:
    return (base + zlib.crc32("/".join(parts).encode())) % 2**31


def compare_groups(
    values: Mapping[Group, np.ndarray],
    higher_is_better: bool,
    *,
    label: str = "",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each group's mean with its interval, and its paired difference from each of its references.

    Args:
        values: Per-seed, per-example values [S, N] of each group, all on the same N examples in one order.
        higher_is_better: Direction of the metric.
        label: Mixed into each comparison's bootstrap seed (e.g. the benchmark and metric), so every
            comparison has its own draws and a rerun reproduces them.
        n_boot: Bootstrap replicates.
        seed: Base seed of the draws.

    Returns:
        ``{method: {budget: entry}}``; an entry holds ``n_seeds``, ``mean``, ``ci95_low``, ``ci95_high`` and,
        for each reference present, ``vs_<reference>`` (``-`` as ``_``): ``{diff, ci95_low, ci95_high,
        verdict}`` with ``diff`` = group minus reference.

    Raises:
        ValueError: Groups evaluated on different numbers of examples.
    """
    groups = list(values)
    sizes = {np.atleast_2d(v).shape[1] for v in values.values()}
    if len(sizes) > 1:
        raise ValueError(f"groups were evaluated on different numbers of examples: {sorted(sizes)}")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for g in groups:
        a = np.atleast_2d(values[g])
        mean = paired_bootstrap(a, n_boot=n_boot, seed=_seed(seed, label, g.method, g.budget))
        entry: dict[str, Any] = {
            "n_seeds": int(a.shape[0]),
            "mean": mean.value,
            "ci95_low": mean.low,
            "ci95_high": mean.high,
        }
        for name, ref in g.references(groups).items():
            d = paired_bootstrap(
                a, values[ref], n_boot=n_boot, seed=_seed(seed, label, g.method, g.budget, ref.method, ref.budget)
            )
            entry[f"vs_{name.replace('-', '_')}"] = {
                "diff": d.value,
                "ci95_low": d.low,
                "ci95_high": d.high,
                "verdict": verdict(d, higher_is_better),
            }
        out.setdefault(g.method, {})[g.budget] = entry
    return out
