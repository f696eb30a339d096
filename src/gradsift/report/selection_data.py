"""What a selection report shows, as plain data: the model of the page ``gradsift select`` writes as ``report.html``.

`gradsift.select_report` builds a `SelectionReport` from a selection run (its ``scores.parquet``,
``config.json`` and pool) with every derived number already computed (shares, overlaps, rank correlations,
the examples to show and why); `gradsift.report.selection` and `gradsift.report.selection_plots` only format
and draw it. Per-candidate arrays keep the whole pool: the figures subsample what they plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradsift.report.data import Overlap, PoolItem


@dataclass
class Helped:
    """A target a candidate helps, for "why this example".

    Attributes:
        target_id: The target's id.
        value: The method's per-target influence (`gradsift.recipes.sft` says which quantity).
        text: The target's prompt and answer, shortened (empty when the targets could not be read).
    """

    target_id: str
    value: float
    text: str = ""


@dataclass
class Shown:
    """A pool record shown in a method's top or bottom table.

    Attributes:
        item: The record (id, task, prompt, response).
        row: Its pool row.
        rank: Position in the method's selection (0 first), or None when not selected.
        score: The method's score (NaN: none).
        value: The plotted value when it is not the score (band methods' raw value), else NaN.
        helps: The targets it helps most, largest first (LESS, PRISM, BIDS).
        band: Percentile rank of each band column (TIF, LossDiff, IRM, fusion), name -> [0, 100].
        in_band: Whether it lies in the method's band (band methods), else None.
    """

    item: PoolItem
    row: int
    rank: int | None
    score: float
    value: float = float("nan")
    helps: list[Helped] = field(default_factory=list)
    band: dict[str, float] = field(default_factory=dict)
    in_band: bool | None = None


@dataclass
class MethodView:
    """One method's selection and scores.

    Attributes:
        name: Method name.
        selected: Selected pool rows [S] in selection order.
        score: The method's score of every candidate [N] (NaN: not selectable).
        plotted: The values whose distribution the report draws [N]: the score, or for band methods the raw
            value the band is taken on.
        plotted_label: What `plotted` is.
        percentile: Mid-rank percentile of each candidate's plotted value among the finite ones [N], in
            (0, 100), ties sharing one; NaN where the value is not finite.
        cuts: Vertical lines on the distribution: ``(value, label)``, e.g. the lowest selected score or the
            band limits.
        order: How the selection was made, one sentence.
        top: The first selected records, in selection order.
        bottom: The lowest `plotted` values.
        why: What the "why" column of its tables shows (empty: none).
        info: The method's facts from ``config.json`` (JSON-serialisable).
    """

    name: str
    selected: np.ndarray
    score: np.ndarray
    plotted: np.ndarray
    plotted_label: str
    percentile: np.ndarray
    cuts: list[tuple[float, str]] = field(default_factory=list)
    order: str = ""
    top: list[Shown] = field(default_factory=list)
    bottom: list[Shown] = field(default_factory=list)
    why: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Shares:
    """Share of each label (task, source file) in the pool and in each selection.

    Attributes:
        title: What is shared out (``task``, ``source file``).
        labels: Labels by pool share, largest first.
        pool: Pool share of each label [L].
        selections: Method -> share of each label in its selection [L].
        counts: Pool count of each label [L].
    """

    title: str
    labels: list[str]
    pool: list[float]
    selections: dict[str, list[float]]
    counts: list[int]


@dataclass
class Lengths:
    """Response lengths of the pool and of each selection.

    Attributes:
        unit: What a length counts (``characters``).
        pool: Length of every pool record [N] (pairs: the chosen response).
        quantiles: ``"pool"`` and each method -> [min, 25%, median, 75%, max] of its records' lengths.
    """

    unit: str
    pool: np.ndarray
    quantiles: dict[str, list[float]]


@dataclass
class SelectionReport:
    """Everything a selection report shows; built by `gradsift.select_report.build_report` or by hand.

    Attributes:
        title: The run's name (its directory).
        created: When the report was made (ISO time, UTC).
        kind: ``sft`` or ``pair``.
        n_pool: Candidates.
        budget: What each top-k method kept, as a count.
        methods: The methods, in the run's order.
        tasks: Task shares of the pool and the selections.
        sources: Source-file shares.
        lengths: Response lengths.
        overlap: Jaccard overlap of the selections.
        spearman: Rank correlation of every two methods' scores [M, M] (NaN where undefined).
        timings: Stage -> seconds, in the order they ran (``total`` last).
        detail_timings: Finer stages (warm-up, each feature pass) -> seconds.
        settings: The run's settings.
        provenance: Model, data fingerprints, versions, machine: name -> text.
        tokenization: Truncation counts, name -> value.
        notes: Caveats (e.g. targets that could not be read).
    """

    title: str
    created: str
    kind: str
    n_pool: int
    budget: int
    methods: list[MethodView]
    tasks: Shares
    sources: Shares
    lengths: Lengths
    overlap: Overlap
    spearman: np.ndarray
    timings: dict[str, float]
    detail_timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    tokenization: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
