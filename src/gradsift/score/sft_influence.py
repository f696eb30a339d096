"""Gradient-influence scorers for SFT pools: LESS, PRISM and BIDS, with their shared steps.

The math lives in :mod:`gradsift.score.less`, :mod:`gradsift.score.prism` and :mod:`gradsift.select.bids`;
this module supplies their inputs, computed once per run and cached under the context's ``workdir``
so that several methods (and later runs with the same cache) share them:

1. Checkpoints (methods.md section 1): LESS's warm-up (LoRA on a seeded 5% of the pool for a few
   epochs, one checkpoint per epoch with its Adam state and mean learning rate), or, with
   ``warmup="none"``, the base model with a fresh LoRA (or a user ``adapter``) as the single checkpoint.
2. Feature stores per checkpoint: candidate features (Adam-preconditioned update directions when the
   checkpoint has an optimizer state, LESS; plain gradients for PRISM), target gradients, and for
   PRISM the gradients of the targets' rejected responses ``y-``.
3. PRISM's ``y-`` for targets without a ``rejected`` field: the model's own greedy response, generated
   once and stored (gradsift's choice, methods.md section 2).

Options (``SelectConfig.options`` / ``--option key=value``), with defaults:
  ``warmup`` ``"less"`` | ``"none"``; ``warmup_fraction`` 0.05; ``warmup_epochs`` 4; ``warmup_lr`` 1e-4;
  ``warmup_batch_size`` 4; ``warmup_min_examples`` 8; ``adapter`` (with ``warmup="none"``);
  ``lora_rank`` 8; ``lora_alpha`` 16; ``lora_targets`` ``"q_proj,v_proj"``;
  ``projector`` ``"auto"`` (dense when preconditioning, else factorized); ``dim`` 8192 (dense); ``k_in``/``k_out`` 16;
  ``less_aggregation`` ``"task-max"`` | ``"instance-max"`` | ``"sum"``;
  ``prism_reduction`` ``"sum"`` (candidate loss, as the source) | ``"mean"``;
  ``prism_scoring`` ``"raw"`` | ``"cosine"``;
  ``prism_uniform`` false; ``prism_max_new_tokens`` 128; ``bids_normalize`` true.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradsift.data.records import Example, fingerprint
from gradsift.features.extract import FeatureConfig, extract_features
from gradsift.score.base import ScoreContext, Scores
from gradsift.store.atomic import write_json_atomic
from gradsift.store.features import FeatureStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A model state at which gradients are taken.

    Attributes:
        name: Directory-safe name (``base`` or ``epoch-k``).
        adapter: LoRA adapter directory, or None for a fresh LoRA on the base model.
        optimizer: Directory with the Adam state (warm-up checkpoints), or None.
        weight: The checkpoint's weight in the sum over checkpoints (LESS: the epoch's mean learning rate).
    """

    name: str
    adapter: str | None
    optimizer: str | None
    weight: float


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _opt(ctx: ScoreContext, name: str, default: Any) -> Any:
    return ctx.options.get(name, default)


def _lora_targets(ctx: ScoreContext) -> list[str]:
    value = _opt(ctx, "lora_targets", "q_proj,v_proj")
    return [t.strip() for t in value.split(",")] if isinstance(value, str) else list(value)


def checkpoints(ctx: ScoreContext) -> list[Checkpoint]:
    """The run's checkpoints, warming up once per pool and settings (cached in ``ctx.shared``)."""
    if "checkpoints" in ctx.shared:
        return ctx.shared["checkpoints"]
    mode = _opt(ctx, "warmup", "less")
    if mode not in ("less", "none"):
        raise ValueError(f"option warmup must be 'less' or 'none', got {mode!r}")
    if mode == "none":
        adapter = _opt(ctx, "adapter", None)
        ckpts = [Checkpoint("base" if adapter is None else "adapter-" + _key(adapter), adapter, None, 1.0)]
    else:
        from gradsift.model.lora import LoraSettings
        from gradsift.train.warmup import WarmupSettings, run_warmup

        settings = WarmupSettings(
            fraction=float(_opt(ctx, "warmup_fraction", 0.05)),
            epochs=int(_opt(ctx, "warmup_epochs", 4)),
            seed=ctx.seed,
            min_examples=int(_opt(ctx, "warmup_min_examples", 8)),
        )
        lora = LoraSettings(
            rank=int(_opt(ctx, "lora_rank", 8)),
            alpha=int(_opt(ctx, "lora_alpha", 16)),
            target_modules=_lora_targets(ctx),
        )
        config = {
            "learning_rate": float(_opt(ctx, "warmup_lr", 1e-4)),
            "per_device_train_batch_size": int(_opt(ctx, "warmup_batch_size", 4)),
            "max_length": ctx.max_length,
            "seed": ctx.seed,
            "logging_steps": 1,
        }
        key = _key([settings.as_dict(), lora.as_dict(), config, fingerprint(ctx.pool)])
        t = time.perf_counter()
        lm = ctx.fresh_model()
        result = run_warmup(lm.model, lm.tokenizer, ctx.pool, ctx.workdir / f"warmup-{key}", settings, lora, config)
        ctx.shared.setdefault("timings", {})["warmup"] = time.perf_counter() - t
        ckpts = [Checkpoint(f"epoch-{c.epoch}", str(c.path), str(c.path), float(c.lr)) for c in result.checkpoints]
    ctx.shared["checkpoints"] = ckpts
    return ckpts


def features(
    ctx: ScoreContext,
    ckpt: Checkpoint,
    split: str,
    records: list[Example],
    *,
    less_space: bool = False,
    response: str = "chosen",
    reduction: str = "mean",
) -> FeatureStore:
    """A complete feature store for `records` at `ckpt`, computed once and reused (resumes after a kill).

    Args:
        less_space: LESS's feature space: at a checkpoint with an Adam state, pool features are
            preconditioned, which needs the dense projector, so the targets use the same dense projection.
        response: ``chosen`` or ``rejected`` (PRISM's ``y-``).
        reduction: Per-example loss reduction, ``mean`` or ``sum``.
    """
    precondition = less_space and split == "pool" and ckpt.optimizer is not None
    projector = _opt(ctx, "projector", "auto")
    if less_space and ckpt.optimizer and projector == "auto":
        projector = "dense"
    cfg = FeatureConfig(
        data=f"<{split}>",
        out="",
        kind="target" if split == "targets" else "sft",
        response=response,  # type: ignore[arg-type]
        adapter=ckpt.adapter,
        optimizer=ckpt.optimizer if precondition else None,
        lora_rank=int(_opt(ctx, "lora_rank", 8)),
        lora_alpha=int(_opt(ctx, "lora_alpha", 16)),
        lora_targets=_lora_targets(ctx),
        lora_seed=ctx.seed,
        projector=projector,
        dim=int(_opt(ctx, "dim", 8192)),
        k_in=int(_opt(ctx, "k_in", 16)),
        k_out=int(_opt(ctx, "k_out", 16)),
        projection_seed=ctx.seed,
        reduction=reduction,
        max_length=ctx.max_length,
        batch_tokens=ctx.batch_tokens,  # type: ignore[arg-type]
        store_dtype=_opt(ctx, "store_dtype", "float16"),
    )
    variant = f"{split}-{fingerprint(records)[:8]}-{response}-{reduction}{'-adam' if cfg.optimizer else ''}"
    cfg.out = str(ctx.workdir / "features" / ckpt.name / f"{variant}-{cfg.projector_name}")
    t = time.perf_counter()
    store = extract_features(cfg, records=records, loaded=ctx.fresh_model())
    timings = ctx.shared.setdefault("timings", {})
    timings[f"features/{ckpt.name}/{variant}"] = time.perf_counter() - t
    return store


def less_inputs(ctx: ScoreContext) -> tuple[list[np.ndarray], list[np.ndarray], list[float], np.ndarray]:
    """LESS's candidate and target features per checkpoint, the checkpoint weights and the bad-row mask."""
    if "less_inputs" not in ctx.shared:
        targets = _require_targets(ctx, "less")
        cands, tgts, weights, bad = [], [], [], np.zeros(len(ctx.pool), dtype=bool)
        for ck in checkpoints(ctx):
            c, b = _arrays(features(ctx, ck, "pool", ctx.pool, less_space=True))
            cands.append(c)
            bad |= b
            tgts.append(_arrays(features(ctx, ck, "targets", targets, less_space=True))[0])
            weights.append(ck.weight)
        ctx.shared["less_inputs"] = (cands, tgts, weights, bad)
    return ctx.shared["less_inputs"]


def _arrays(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    """Features as a read-only memmap [N, k] and the bad-row mask [N]."""
    feats = np.load(store.path / "features.npy", mmap_mode="r")
    bad = np.zeros(feats.shape[0], dtype=bool)
    bad[store.bad_rows()] = True
    return feats, bad


def _extra(store: FeatureStore, name: str) -> np.ndarray:
    return np.asarray(np.load(store.path / f"{name}.npy", mmap_mode="r"), dtype=np.float64)


def _require_targets(ctx: ScoreContext, method: str) -> list[Example]:
    if not ctx.targets:
        raise ValueError(f"the {method} method needs --targets")
    return ctx.targets


def _timing_info(ctx: ScoreContext) -> dict[str, float]:
    return {k: round(v, 2) for k, v in ctx.shared.get("timings", {}).items()}


class LessScorer:
    """LESS (methods.md section 1): Adam-preconditioned candidate features vs target gradients, cosine,
    mean within each target task, max over tasks, summed over checkpoints weighted by learning rate."""

    def score(self, ctx: ScoreContext) -> Scores:
        from gradsift.score.less import less_scores

        targets = _require_targets(ctx, "less")
        cands, tgts, weights, bad = less_inputs(ctx)
        aggregation = _opt(ctx, "less_aggregation", "task-max")
        res = less_scores(cands, tgts, [t.task for t in targets], weights, aggregation=aggregation, bad=bad)
        columns = {f"task_{name}": res.task_scores[:, j] for j, name in enumerate(res.tasks)}
        return Scores(
            score=np.where(np.isfinite(res.scores), res.scores, np.nan),
            columns=columns,
            info={
                "checkpoints": [ck.__dict__ for ck in checkpoints(ctx)],
                "bad_rows": int(res.bad.sum()),
                "aggregation": aggregation,
                "timings_s": _timing_info(ctx),
            },
        )


class BidsScorer:
    """BIDS (methods.md section 4): the LESS influence matrix, column z-scored, iteratively balanced."""

    def score(self, ctx: ScoreContext) -> Scores:
        from gradsift.score.influence import influence_matrix
        from gradsift.select.bids import aggregate_select, bids_select, coverage, zscore_columns

        targets = _require_targets(ctx, "bids")
        cands, tgts, weights, bad = less_inputs(ctx)
        a = influence_matrix(cands, tgts, weights, normalize=True, bad=bad)
        sel = bids_select(a, ctx.budget, bad=bad, normalize=bool(_opt(ctx, "bids_normalize", True)))
        # The score column: BIDS' first-step criterion, the best z-scored influence of each candidate.
        score = zscore_columns(a, bad).max(axis=1).astype(np.float64)
        tasks = [t.task for t in targets]
        cov = coverage(a, tasks, sel.indices, bad=bad)
        # LESS's own selection from the same matrix, for the balance comparison BIDS is about
        less_sel = aggregate_select(a, tasks, ctx.budget, "task-max", bad=bad)
        cov_less = coverage(a, tasks, less_sel.indices, bad=bad)
        return Scores(
            score=score,
            selected=sel.indices,
            info={
                "coverage": [c.__dict__ for c in cov],
                "coverage_less_task_max": [c.__dict__ for c in cov_less],
                "excluded": len(sel.excluded),
                "checkpoints": [ck.__dict__ for ck in checkpoints(ctx)],
                "timings_s": _timing_info(ctx),
            },
        )


def rejected_responses(ctx: ScoreContext, targets: list[Example]) -> list[Example]:
    """Targets with a ``rejected`` response: the user's, else the model's own greedy answer (stored once)."""
    missing = [t for t in targets if t.rejected is None]
    if not missing:
        return targets
    from gradsift.evaluate.generate import GenerationSettings, generate

    lm = ctx.model
    path = ctx.workdir / f"prism-greedy-{_key([lm.fingerprint, fingerprint(missing)])}.json"
    if path.exists():
        generated = json.loads(path.read_text())
    else:
        max_new = int(_opt(ctx, "prism_max_new_tokens", 128))
        outputs = generate(
            lm.model,
            lm.tokenizer,
            [t.prompt_messages for t in missing],
            GenerationSettings(max_new_tokens=max_new, batch_size=8),
        )
        generated = {t.id: o for t, o in zip(missing, outputs, strict=True)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, generated)
    out = []
    for t in targets:
        if t.rejected is None:
            t = Example(
                id=t.id,
                messages=t.messages,
                task=t.task,
                rejected=generated[t.id] or " ",
                raw=t.raw,
                source=t.source,
                line=t.line,
            )
        out.append(t)
    return out


class PrismScorer:
    """PRISM (methods.md section 2): candidate gradients (summed loss) against the preference-weighted
    target direction ``g* = mean_q pi_q (grad lbar(q, y+) - grad lbar(q, y-))``."""

    def score(self, ctx: ScoreContext) -> Scores:
        from gradsift.score.prism import prism_scores

        targets = rejected_responses(ctx, _require_targets(ctx, "prism"))
        reduction = _opt(ctx, "prism_reduction", "sum")
        cands, gp, gm, weights, bad = [], [], [], [], np.zeros(len(ctx.pool), dtype=bool)
        loss_p = loss_m = None
        for ck in checkpoints(ctx):
            c, b = _arrays(features(ctx, ck, "pool", ctx.pool, reduction=reduction))
            cands.append(c)
            bad |= b
            sp = features(ctx, ck, "targets", targets)
            sm = features(ctx, ck, "targets", targets, response="rejected")
            gp.append(_arrays(sp)[0])
            gm.append(_arrays(sm)[0])
            weights.append(ck.weight)
            if loss_p is None:
                # preference weights at the reference (first) checkpoint
                loss_p, loss_m = _extra(sp, "loss"), _extra(sm, "loss")
        res = prism_scores(
            cands,
            gp,
            gm,
            loss_p,
            loss_m,
            weights,
            scoring=_opt(ctx, "prism_scoring", "raw"),
            uniform=bool(_opt(ctx, "prism_uniform", False)),
            bad=bad,
        )
        return Scores(
            score=np.where(np.isfinite(res.scores), res.scores, np.nan),
            info={
                "preference_weights": [round(float(p), 4) for p in res.preference],
                "n_generated_rejected": sum(t.rejected is None for t in ctx.targets),
                "reduction": reduction,
                "checkpoints": [ck.__dict__ for ck in checkpoints(ctx)],
                "timings_s": _timing_info(ctx),
            },
        )
