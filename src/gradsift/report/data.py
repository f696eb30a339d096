"""What a bench report shows, as plain data: the report's own model, so its pages import nothing else of gradsift.

`gradsift.benchmark.reportdata` builds a `ReportData` from a finished bench run, with every derived number
the pages show (task shares, overlaps) already computed; the pages (`gradsift.report.markdown`,
`gradsift.report.html`, `gradsift.report.plots`) only format and draw it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BASELINES = ("full", "full-epoch", "base", "original", "aligned")
#: How a bench note that the comparison is underpowered begins (the report lists such notes first).
SMOKE_PREFIX = "Smoke test, not evidence"
"""Rows that are not selections: the whole pool for a cell's steps and for one epoch, the untrained model, the
model before `prepare` and after its ``align`` step."""


@dataclass
class MethodSelection:
    """One method's selection, for the report.

    Attributes:
        method: Method name.
        budget: Number of examples asked for.
        seed: Seed of the selection.
        rows: Selected pool rows, in selection order.
        scores: Score of every pool row [N] (NaN: not selectable), or None for methods without scores.
    """

    method: str
    budget: int
    seed: int
    rows: list[int]
    scores: np.ndarray | None


@dataclass
class BenchmarkInfo:
    """A benchmark as the report shows it."""

    name: str
    task: str
    metric: str
    higher_is_better: bool
    n: int = 0

    @property
    def column(self) -> str:
        return f"{self.name}.{self.metric}"


@dataclass
class PoolItem:
    """A pool record as the report shows it (`response` holds both responses of a pair)."""

    id: str
    task: str | None
    prompt: str
    response: str


@dataclass
class TaskShares:
    """Share of each task label in the pool and in each selection.

    Attributes:
        tasks: Task labels by share of the pool, largest first (``"(none)"`` for records without a label).
        shares: ``shares["pool"][task]`` and ``shares[method][task]`` in [0, 1]; the pool first, then the
            selections in their order.
    """

    tasks: list[str] = field(default_factory=list)
    shares: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Overlap:
    """Jaccard overlap of the selections.

    Attributes:
        methods: The selections' methods [M], in their order.
        jaccard: Jaccard index of every two selections [M, M], 1 on the diagonal.
        expected_random: Expected Jaccard index of two independent uniform selections of the largest budget
            (None without selections).
    """

    methods: list[str] = field(default_factory=list)
    jaccard: np.ndarray = field(default_factory=lambda: np.ones((0, 0)))
    expected_random: float | None = None


@dataclass
class ReportData:
    """Everything the report shows; built by `gradsift.benchmark.reportdata.collect_report_data` or by hand.

    Attributes:
        title: Scenario name.
        created: When the results were aggregated (ISO time, UTC).
        machine: Platform, CPU, GPU, library versions.
        settings: Scenario summary (model, kind, pool and target sizes, budgets, seeds, training).
        benchmarks: The benchmarks and their primary metrics.
        table: Results table (one row per cell), a pandas DataFrame.
        efficiency: Efficiency rows (one per budget and method: mean SDF and PIR, efficiency and its rank).
        feasibility: Feasibility rows.
        pool: The pool's records [N].
        selections: The selection of each method at the largest budget and first seed.
        task_shares: Task shares of the pool and of `selections`.
        overlap: Jaccard overlap of `selections`.
        unavailable: Methods skipped, with the reason.
        notes: Caveats.
        references: The two methods whose points define the efficiency line.
        comparisons: Paired comparisons per benchmark: ``{benchmark: {task, metric, higher_is_better, n_eval,
            methods: {method: {budget: entry}}, secondary: {metric: {higher_is_better, methods}}}}``; an entry
            holds ``n_seeds``, ``mean``, ``ci95_low``, ``ci95_high``, ``select_wall_s``, ``select_cpu_s`` and
            ``vs_random``, ``vs_full``, ``vs_full_epoch``, ``vs_embed`` where they apply, each ``{diff,
            ci95_low, ci95_high, verdict}`` (diff = method minus reference; verdict ``better``, ``worse`` or
            ``no difference`` by the metric's direction).
        lr_search: The learning-rate search: grid, deciding metric, value per rate and budget, the chosen rate.
        prepare: Per prepare step: rounds, checks and whether its threshold was reached.
    """

    title: str
    created: str
    machine: dict[str, str]
    settings: dict[str, Any]
    benchmarks: list[BenchmarkInfo]
    table: Any
    efficiency: list[dict[str, Any]]
    feasibility: list[dict[str, Any]]
    pool: list[PoolItem]
    selections: list[MethodSelection]
    task_shares: TaskShares
    overlap: Overlap
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    references: tuple[str, str] = ("random", "full")
    comparisons: dict[str, Any] = field(default_factory=dict)
    lr_search: dict[str, Any] | None = None
    prepare: dict[str, Any] = field(default_factory=dict)

    def extremes(self, method: str, n: int = 5) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """The `n` highest- and lowest-scored pool rows of a method: ``[(row, score)]`` each, best first."""
        sel = next(s for s in self.selections if s.method == method)
        if sel.scores is None:
            return [], []
        s = np.asarray(sel.scores, dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(s))
        order = ok[np.argsort(-s[ok], kind="stable")]
        top = [(int(i), float(s[i])) for i in order[:n]]
        bottom = [(int(i), float(s[i])) for i in order[::-1][:n]]
        return top, bottom
