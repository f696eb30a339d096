"""Selector evaluation: ratio-based efficiency and ranking-based feasibility (methods.md section 5).

From Liu et al. 2024/2025, "Take the Essence and Discard the Dross: A Rethinking on Data Selection for
Fine-Tuning Large Language Models" (arXiv 2406.14115), whose ranking code is released as the TEDD-Ranker
web page (github.com/tREeFrOGcoder/TEDD-Ranker, ``index.html`` at commit 28048bf, 2025-02).

Efficiency:
  - SDF (selected dataset fraction) = selected examples / candidate pool.
  - PIR (performance improvement ratio) = mean over benchmarks of (score after training on the selection) /
    (score after training on the full data). Verified: the authors' ``getPIR`` averages the per-benchmark
    ratios ``SEM / BM``. gradsift's choice: a benchmark where lower is better (a loss) enters as
    ``full / selected``, so a ratio above 1 always means the selection did better; PIR needs positive scores.
  - Efficiency = signed distance of a method's (SDF, PIR) point from the line through two reference methods'
    points, positive above the line (more improvement for its fraction than the references' trade-off).
    Verified: the distance is signed and perpendicular to a line through two reference methods. Our choices:
    the references default to random selection (at its own SDF) and full data (at (1, 1)) instead of the
    survey's Instruction-Mining and InstructionGPT-4, and the distance is taken in data units
    (SDF and PIR axes unscaled); the authors take it in the plot's pixel coordinates, which depend on the axis
    ranges. The survey's linear maps that put PIRs from other benchmarks on its win-rate scale are not used:
    gradsift compares runs on the same benchmarks.

Feasibility (verified from the same code):
  - simplicity penalty = 2 x (LLMs trained to build the selector) + (algorithm steps) + (1 if no code released);
  - flexibility penalty = 3 x [needs the target model] + 2 x [needs target data] + 1 x [needs an external LLM
    API]; the web page asks "Model free: if the selector model is changed, will the performance be
    influenced?", "Dataset free: if the candidate dataset is changed, do you need to re-train the selector?"
    and "ChatGPT free". gradsift reads "needs target data" as in methods.md section 5: the selector depends on
    user-supplied target/validation examples, so it is rebuilt when they change;
  - simplicity and flexibility ranks rank the penalties (smaller penalty, better rank 1); the feasibility rank
    ranks the sum of the two ranks.
  - Ties: the authors use dense ranking (tied values share a rank and the next value takes the next integer),
    comparing values within 1e-6 of the first value of a tie group. gradsift mirrors that by default and offers
    ``"min"`` ranking (the next value's rank skips the tied places, as ``scipy.stats.rankdata(method="min")``).
  - Not mirrored: two hand-set exceptions in the authors' table (a selector training over 100 LLMs gets a fixed
    penalty of 200; Superfiltering's LLM weight is 1.5), which concern none of gradsift's methods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

TieMethod = Literal["dense", "min"]
RANK_TOLERANCE = 1e-6
"""Values closer than this to the first value of a tie group share its rank (as in the authors' code)."""


def selected_fraction(n_selected: int, n_total: int) -> float:
    """SDF: the fraction of the candidate pool selected.

    Raises:
        ValueError: Unless ``0 < n_selected <= n_total``.
    """
    if n_total < 1 or not 0 < n_selected <= n_total:
        raise ValueError(f"need 0 < n_selected <= n_total, got n_selected={n_selected}, n_total={n_total}")
    return n_selected / n_total


@dataclass
class BenchmarkScore:
    """One benchmark's score after training on a selection and after training on the full data.

    Attributes:
        benchmark: Benchmark name.
        selected: Score of the model trained on the selection.
        full: Score of the model trained on the full data.
        higher_is_better: False for losses and error rates; the ratio is then inverted.
    """

    benchmark: str
    selected: float
    full: float
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.selected) and math.isfinite(self.full)):
            raise ValueError(f"{self.benchmark}: scores must be finite, got {self.selected} and {self.full}")
        if self.higher_is_better and not (self.full > 0 and self.selected >= 0):
            raise ValueError(
                f"{self.benchmark}: a ratio needs a positive full-data score and a non-negative selection score, "
                f"got full={self.full}, selected={self.selected}"
            )
        if not self.higher_is_better and not (self.selected > 0 and self.full >= 0):
            raise ValueError(
                f"{self.benchmark}: a lower-is-better ratio needs a positive selection score and a non-negative "
                f"full-data score, got selected={self.selected}, full={self.full}"
            )

    @property
    def ratio(self) -> float:
        """selected / full, or full / selected when lower is better: above 1 means the selection did better."""
        return self.selected / self.full if self.higher_is_better else self.full / self.selected


def performance_improvement_ratio(scores: Sequence[BenchmarkScore]) -> dict[str, Any]:
    """PIR: mean over benchmarks of each benchmark's ratio.

    Returns:
        ``{"pir": mean ratio, "per_benchmark": {benchmark: ratio}}``.

    Raises:
        ValueError: No scores, or a benchmark named twice.
    """
    if not scores:
        raise ValueError("PIR needs at least one benchmark score")
    names = [s.benchmark for s in scores]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark named more than once: {sorted({n for n in names if names.count(n) > 1})}")
    per = {s.benchmark: s.ratio for s in scores}
    return {"pir": sum(per.values()) / len(per), "per_benchmark": per}


@dataclass
class MethodPoint:
    """A method's place in the efficiency plane.

    Attributes:
        method: Method name.
        sdf: Selected dataset fraction, in (0, 1].
        pir: Performance improvement ratio, >= 0.
    """

    method: str
    sdf: float
    pir: float

    def __post_init__(self) -> None:
        if not 0 < self.sdf <= 1:
            raise ValueError(f"{self.method}: SDF must be in (0, 1], got {self.sdf}")
        if not (math.isfinite(self.pir) and self.pir >= 0):
            raise ValueError(f"{self.method}: PIR must be finite and >= 0, got {self.pir}")


FULL_DATA = MethodPoint("full", 1.0, 1.0)
"""Training on everything: SDF 1 and PIR 1 by definition."""


def signed_distance(point: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    """Perpendicular distance of `point` from the line through `a` and `b`, positive above it.

    Args:
        point: (SDF, PIR).
        a: First reference point (SDF, PIR).
        b: Second reference point; its SDF must differ from `a`'s.

    Raises:
        ValueError: `a` and `b` have the same SDF (a vertical line has no "above").
    """
    (x, y), (xa, ya), (xb, yb) = point, a, b
    if abs(xb - xa) < 1e-12:
        raise ValueError(f"the two reference points need different SDFs, got {xa} and {xb}")
    slope = (yb - ya) / (xb - xa)
    return ((y - ya) - slope * (x - xa)) / math.sqrt(1.0 + slope * slope)


def rank(values: Sequence[float], ties: TieMethod = "dense", tolerance: float = RANK_TOLERANCE) -> list[int]:
    """Ranks, smallest value first (rank 1).

    Args:
        values: Values to rank.
        ties: ``"dense"`` (the authors' convention: 1, 1, 2) or ``"min"`` (1, 1, 3).
        tolerance: Values within this of the first value of a tie group are tied.

    Returns:
        One rank per value, in input order.
    """
    if ties not in ("dense", "min"):
        raise ValueError(f"ties must be 'dense' or 'min', got {ties!r}")
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0] * len(values)
    current, group_start = 0, None
    for pos, i in enumerate(order):
        if group_start is None or abs(values[i] - group_start) > tolerance:
            current = current + 1 if ties == "dense" else pos + 1
            group_start = values[i]
        ranks[i] = current
    return ranks


def efficiency_table(
    points: Sequence[MethodPoint],
    references: tuple[str, str] = ("random", "full"),
    ties: TieMethod = "dense",
) -> list[dict[str, Any]]:
    """Efficiency of each method: signed distance above the reference line and its rank.

    Args:
        points: Methods' (SDF, PIR).
        references: Names of the two methods whose points define the line. ``"full"`` falls back to
            :data:`FULL_DATA` when no point of that name is given.
        ties: Tie handling of the rank (see :func:`rank`).

    Returns:
        One row per point, in input order: ``method``, ``sdf``, ``pir``, ``efficiency`` (signed distance) and
        ``efficiency_rank`` (1 = furthest above the line).

    Raises:
        ValueError: Duplicate method names, or a reference method missing.
    """
    names = [p.method for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"method named more than once: {sorted({n for n in names if names.count(n) > 1})}")
    by_name = {p.method: p for p in points}
    refs = []
    for name in references:
        if name in by_name:
            refs.append(by_name[name])
        elif name == FULL_DATA.method:
            refs.append(FULL_DATA)
        else:
            raise ValueError(f"reference method {name!r} has no (SDF, PIR) point; give one or choose other references")
    a, b = ((r.sdf, r.pir) for r in refs)
    distances = [signed_distance((p.sdf, p.pir), a, b) for p in points]
    ranks = rank([-d for d in distances], ties)
    return [
        {"method": p.method, "sdf": p.sdf, "pir": p.pir, "efficiency": d, "efficiency_rank": r}
        for p, d, r in zip(points, distances, ranks, strict=True)
    ]


@dataclass(frozen=True)
class FeasibilityAttributes:
    """What building and running a selector takes (the survey's feasibility inputs).

    Attributes:
        method: Method name.
        models_trained: LLMs trained (fine-tuned, even briefly) to build the selector.
        steps: Algorithm steps of the selection pipeline (the survey's appendix A.5 counts distinct stages).
        code_released: Whether code is public.
        needs_target_model: The selection depends on the model to be fine-tuned (not "model free").
        needs_target_data: The selection depends on target/validation examples besides the pool.
        needs_llm_api: The selection calls a proprietary LLM (ChatGPT, GPT-4, ...).
        note: Why the entries are what they are.
    """

    method: str
    models_trained: int
    steps: int
    code_released: bool
    needs_target_model: bool
    needs_target_data: bool
    needs_llm_api: bool
    note: str = ""

    def __post_init__(self) -> None:
        if self.models_trained < 0 or self.steps < 0:
            raise ValueError(f"{self.method}: models_trained and steps must be >= 0")

    @property
    def simplicity_penalty(self) -> int:
        """2 x models trained + steps + 1 if no code is released."""
        return 2 * self.models_trained + self.steps + (0 if self.code_released else 1)

    @property
    def flexibility_penalty(self) -> int:
        """3 x needs the target model + 2 x needs target data + 1 x needs an external LLM API."""
        return 3 * self.needs_target_model + 2 * self.needs_target_data + 1 * self.needs_llm_api


def feasibility_table(attributes: Sequence[FeasibilityAttributes], ties: TieMethod = "dense") -> list[dict[str, Any]]:
    """Simplicity, flexibility and feasibility ranks (1 = most feasible).

    Ranks are relative to the methods given: adding or removing a method can change the others' ranks.

    Returns:
        One row per method, in input order: its attributes, both penalties and the three ranks.

    Raises:
        ValueError: Duplicate method names.
    """
    names = [a.method for a in attributes]
    if len(set(names)) != len(names):
        raise ValueError(f"method named more than once: {sorted({n for n in names if names.count(n) > 1})}")
    simplicity = rank([a.simplicity_penalty for a in attributes], ties)
    flexibility = rank([a.flexibility_penalty for a in attributes], ties)
    feasibility = rank([s + f for s, f in zip(simplicity, flexibility, strict=True)], ties)
    return [
        {
            **asdict(a),
            "simplicity_penalty": a.simplicity_penalty,
            "flexibility_penalty": a.flexibility_penalty,
            "simplicity_rank": s,
            "flexibility_rank": f,
            "feasibility_rank": r,
        }
        for a, s, f, r in zip(attributes, simplicity, flexibility, feasibility, strict=True)
    ]


def _ours(method: str, trained: int, steps: int, model: bool, data: bool, note: str) -> FeasibilityAttributes:
    # every gradsift method is released with gradsift and none calls an external LLM API
    return FeasibilityAttributes(method, trained, steps, True, model, data, False, note)


GRADSIFT_METHODS: tuple[FeasibilityAttributes, ...] = (
    _ours("random", 0, 1, model=False, data=False, note="one step (sample); no model, no targets."),
    _ours("full", 0, 0, model=False, data=False, note="no selection at all; the reference point (1, 1)."),
    _ours(
        "length",
        0,
        2,
        model=False,
        data=False,
        note="measure response lengths, keep the longest; token counts barely depend on the tokenizer, so "
        "treated as model free.",
    ),
    _ours(
        "loss",
        0,
        2,
        model=True,
        data=False,
        note="forward pass for each candidate's response loss, keep by loss; the loss is the target model's.",
    ),
    _ours(
        "perplexity",
        0,
        2,
        model=True,
        data=False,
        note="same pipeline as loss (perplexity is exp of the token-mean loss), under the target model.",
    ),
    _ours(
        "ifd",
        0,
        3,
        model=True,
        data=False,
        note="loss of the response with and without the instruction, their ratio, keep; no pre-experience "
        "training (the IFD paper trains one model first; the survey counts 1 LLM, 3 steps).",
    ),
    _ours(
        "embed",
        0,
        3,
        model=False,
        data=True,
        note="embed candidates, embed targets, keep the most similar; a pretrained sentence encoder, not the "
        "target model, and nothing trained.",
    ),
    _ours(
        "less",
        1,
        4,
        model=True,
        data=True,
        note="LoRA warm-up on a random 5% (one model trained), candidate and target gradient features, cosine "
        "influence, keep the top; the survey also counts LESS as 1 LLM, 4 steps.",
    ),
    _ours(
        "prism",
        0,
        4,
        model=True,
        data=True,
        note="greedy responses as y- for targets without one, preference-weighted target direction, candidate "
        "gradients, inner products and top-k; scored at the model itself (one more trained model when scored "
        "at warm-up checkpoints).",
    ),
    _ours(
        "bids",
        1,
        5,
        model=True,
        data=True,
        note="LESS's warm-up and features, influence matrix per target example, column z-scores, iterative "
        "balanced selection.",
    ),
    _ours(
        "tif",
        1,
        4,
        model=True,
        data=True,
        note="one epoch of DPO warm-up on all pairs, pair gradients, validation-loss gradient and inner "
        "products, keep the middle percentile band.",
    ),
    _ours(
        "lossdiff",
        2,
        4,
        model=True,
        data=True,
        note="DPO warm-up on all pairs, then theta_val: one epoch of DPO on the validation set from the warm-up "
        "model (val_init=warmup; two models trained), loss difference per pair, middle band.",
    ),
    _ours(
        "irm",
        1,
        3,
        model=True,
        data=False,
        note="DPO warm-up on all pairs, implicit reward margin against the reference per pair, middle band; "
        "no validation data.",
    ),
    _ours(
        "fusion",
        2,
        5,
        model=True,
        data=True,
        note="the two trained models of lossdiff, LossDiff and IRM per pair, keep the intersection of both "
        "middle bands (with compare_tif, the default, also IF at the warm-up, for the overlap report).",
    ),
)
"""Feasibility inputs of gradsift's own methods, as gradsift runs them by default (``models_trained`` counts
the training runs `gradsift select` starts, ``needs_target_data`` whether it refuses to run without targets or
validation pairs; tests/evaluation/test_selector_metrics.py checks both against the recipes). Every method's
code is released with gradsift and none calls an external LLM API."""


def gradsift_feasibility(
    methods: Sequence[str] | None = None,
    ties: TieMethod = "dense",
    extra: Sequence[FeasibilityAttributes] = (),
) -> list[dict[str, Any]]:
    """Feasibility table of gradsift's methods (all, or those named), with `extra` entries (e.g. published
    selectors) added or overriding gradsift's of the same name.

    Raises:
        ValueError: An unknown method name.
    """
    known = {a.method: a for a in GRADSIFT_METHODS} | {a.method: a for a in extra}
    if methods is None:
        chosen = list(known.values())
    else:
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ValueError(f"no feasibility attributes for {unknown}; known: {sorted(known)}")
        chosen = [known[m] for m in methods]
    return feasibility_table(chosen, ties)
