"""Recipes of the gradient-influence methods for SFT pools: LESS, PRISM and BIDS, with their shared steps.

The math lives in :mod:`gradsift.score.less`, :mod:`gradsift.score.prism` and :mod:`gradsift.score.influence`,
BIDS's iterative pick in :mod:`gradsift.selection.bids`; this module supplies their inputs, computed once per
run and cached under the context's ``workdir`` so that several methods (and later runs with the same cache)
share them:

1. Checkpoints (methods.md section 1): LESS's warm-up (LoRA on a seeded 5% of the pool for a few
   epochs, one checkpoint per epoch with its Adam state and mean learning rate), or, with
   ``warmup="none"``, the base model with a fresh LoRA (or a user ``adapter``) as the single checkpoint.
   LESS and BIDS warm up by default (LESS's paper and released code). PRISM scores at the model given by
   default (``warmup="none"`` unless the ``warmup`` option is set): the paper's text takes ``pi_q``, ``g*``
   and ``y-`` from "the current model", one model, and gradsift knows of no released code of PRISM. With
   ``warmup="less"`` PRISM shares LESS's warm-up checkpoints (gradsift's extension) and everything of a
   checkpoint comes from that checkpoint.
2. Feature stores per checkpoint: candidate features (Adam-preconditioned update directions when the
   checkpoint has an optimizer state, LESS; plain gradients for PRISM), target gradients, and for
   PRISM the gradients of the targets' rejected responses ``y-``.
3. PRISM's ``y-`` for targets without a ``rejected`` field: the greedy response of the checkpoint itself
   (its adapter loaded), generated once per checkpoint and stored (gradsift's choice, methods.md section 2).

Options (``SelectConfig.options`` / ``--option key=value``): `gradsift.recipes.options` declares them with
their defaults and checks (``gradsift select --method less --help-options`` lists them); the recipes read the
checked values through `gradsift.recipes.options.resolve`.

"Why this example": every method here adds, per candidate, the `HELPS` targets it helps most and by how much,
as columns ``help_<j>_id`` and ``help_<j>_value`` (j = 1 is the most helped; the id is None where a candidate
has no such target, e.g. a bad row). "Helps" is the method's own per-target quantity: LESS's influence
``A_ij`` (summed over checkpoints), PRISM's per-target term ``t_q(z)`` of its score (`gradsift.score.prism`),
BIDS's column-z-scored influence (raw ``A_ij`` with ``bids_normalize=false``), the values it selects by.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import gradsift.costs as costs
from gradsift.atomic import write_json_atomic
from gradsift.data.records import Example, fingerprint
from gradsift.gradients.extract import FeatureConfig, extract_features
from gradsift.progress import bars
from gradsift.recipes.base import ScoreContext, adapter_digest
from gradsift.recipes.options import resolve
from gradsift.score.base import Scores
from gradsift.score.influence import TopTargets, influence_matrix, top_targets
from gradsift.score.less import less_scores
from gradsift.score.prism import prism_scores
from gradsift.selection.bids import aggregate_select, bids_select, coverage, zscore_columns
from gradsift.settings import settings_hash
from gradsift.store.features import FeatureStore


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
    return settings_hash(obj, 10)


def _options(ctx: ScoreContext, method: str) -> dict[str, Any]:
    """The checked options of `method` (LESS, PRISM and BIDS share every option but their own)."""
    return resolve(method, ctx.options)


def checkpoints(ctx: ScoreContext, method: str) -> list[Checkpoint]:
    """The checkpoints `method` scores at, warming up once per pool and settings (cached in ``ctx.shared``).

    The ``warmup`` option picks them; without it PRISM takes the model given (``none``) and LESS and BIDS
    warm up (``less``), module docstring.
    """
    opts = _options(ctx, method)
    mode = opts["warmup"]
    cached = ctx.shared.setdefault("checkpoints", {})
    if mode in cached:
        return cached[mode]
    adapter = opts["adapter"]
    if mode == "none":
        ckpts = [Checkpoint("base" if adapter is None else "adapter-" + _key(adapter), adapter, None, 1.0)]
    else:
        from gradsift.model.lora import LoraSettings
        from gradsift.training.warmup import WarmupSettings, load_warmup, run_warmup

        settings = WarmupSettings(
            fraction=opts["warmup_fraction"],
            epochs=opts["warmup_epochs"],
            seed=ctx.seed,
            min_examples=opts["warmup_min_examples"],
        )
        lora = LoraSettings(
            rank=opts["lora_rank"],
            alpha=opts["lora_alpha"],
            target_modules=opts["lora_targets"],
            layers=opts["lora_layers"],
        )
        config = {
            "learning_rate": opts["warmup_lr"],
            "per_device_train_batch_size": opts["warmup_batch_size"],
            "max_length": ctx.max_length,
            "seed": ctx.seed,
            "logging_steps": 1,
        }
        t = time.perf_counter()
        base = ctx.model
        # The model is part of the key: runs on other models may share the cache directory.
        key = _key(
            [settings.as_dict(), lora.as_dict(), config, fingerprint(ctx.pool), base.fingerprint, str(base.dtype)]
        )
        run_dir = ctx.workdir / f"warmup-{key}"
        if (run_dir / "warmup.json").exists():
            result = load_warmup(run_dir)
            costs.reuse(run_dir)
        else:
            with costs.computing(run_dir):
                lm = ctx.fresh_model()
                # the trainer's bar follows gradsift's progress mode (not part of the key: it changes nothing learnt)
                shown = {**config, "disable_tqdm": not bars()}
                result = run_warmup(lm.model, lm.tokenizer, ctx.pool, run_dir, settings, lora, shown)
        ctx.shared.setdefault("timings", {})["warmup"] = time.perf_counter() - t
        ckpts = [Checkpoint(f"epoch-{c.epoch}", str(c.path), str(c.path), float(c.lr)) for c in result.checkpoints]
    cached[mode] = ckpts
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
            preconditioned, which needs a projection of the flat gradient (sparse JL unless the ``projector``
            option says ``dense``), so the targets use the same projection.
        response: ``chosen`` or ``rejected`` (PRISM's ``y-``).
        reduction: Per-example loss reduction, ``mean`` or ``sum``.
    """
    precondition = less_space and split == "pool" and ckpt.optimizer is not None
    # LESS's feature space is also BIDS's; PRISM's plain gradients have PRISM's options
    opts = _options(ctx, "less" if less_space else "prism")
    projector = opts["projector"]
    if less_space and ckpt.optimizer and projector == "auto":
        projector = "sparse"
    cfg = FeatureConfig(
        data=f"<{split}>",
        out="",
        kind="target" if split == "targets" else "sft",
        response=response,  # type: ignore[arg-type]
        adapter=ckpt.adapter,
        optimizer=ckpt.optimizer if precondition else None,
        adam_eps=opts["adam_eps"],
        lora_rank=opts["lora_rank"],
        lora_alpha=opts["lora_alpha"],
        lora_targets=opts["lora_targets"],
        lora_seed=ctx.seed,
        lora_layers=opts["lora_layers"],
        projector=projector,
        dim=opts["dim"],
        sparse_s=opts["sparse_s"],
        k_in=opts["k_in"],
        k_out=opts["k_out"],
        projection_seed=ctx.seed,
        reduction=reduction,  # type: ignore[arg-type]
        max_length=ctx.max_length,
        batch_tokens=ctx.batch_tokens,  # type: ignore[arg-type]
        store_dtype=opts["store_dtype"],
    )
    variant = f"{split}-{fingerprint(records)[:8]}-{response}-{reduction}{'-adam' if cfg.optimizer else ''}"
    t = time.perf_counter()
    # Every setting and the model are in the name, so runs with other settings sharing the cache get their
    # own stores instead of being refused by the existing ones.
    model = ctx.model
    key = _key([_store_key_settings(cfg), model.fingerprint, str(model.dtype)])
    cfg.out = str(ctx.workdir / "features" / ckpt.name / f"{variant}-{cfg.projector_name}-{key}")
    done = _complete_store(Path(cfg.out), records)
    # A finished store is reused without loading another copy of the model (costly for large models).
    if done is not None:
        store = done
        costs.reuse(Path(cfg.out))
    else:
        with costs.computing(Path(cfg.out)):
            store = extract_features(cfg, records=records, loaded=ctx.fresh_model())
    timings = ctx.shared.setdefault("timings", {})
    timings[f"features/{ckpt.name}/{variant}"] = time.perf_counter() - t
    return store


def _store_key_settings(cfg: FeatureConfig) -> dict[str, Any]:
    """The settings that name a feature store: every field but the paths, less those that do not apply (so
    stores made before an option existed keep their names where the option changes nothing)."""
    unused = {"out", "data"}
    if cfg.optimizer is None:
        unused.add("adam_eps")
    if cfg.projector_name != "sparse":
        unused.add("sparse_s")
    if cfg.lora_layers is None:
        unused.add("lora_layers")
    return {k: v for k, v in asdict(cfg).items() if k not in unused}


def _complete_store(path: Path, records: list[Example]) -> FeatureStore | None:
    """The store at `path` if it is complete and was made from these records, else None."""
    if not (path / "metadata.json").exists():
        return None
    store = FeatureStore.load(path)
    if store.is_complete() and store.settings.get("data") == fingerprint(records):
        return store
    return None


def less_inputs(ctx: ScoreContext) -> tuple[list[np.ndarray], list[np.ndarray], list[float], np.ndarray]:
    """LESS's candidate and target features per checkpoint, the checkpoint weights and the bad-row mask."""
    if "less_inputs" not in ctx.shared:
        targets = _require_targets(ctx, "less")
        cands, tgts, weights, bad = [], [], [], np.zeros(len(ctx.pool), dtype=bool)
        for ck in checkpoints(ctx, "less"):
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


HELPS = 3
"""Targets named per candidate in the "helps most" columns (module docstring)."""


def help_columns(top: TopTargets, targets: list[Example], scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The "helps most" columns of `top`: ``help_<j>_id`` (the target's id, None where `top` has none) and
    ``help_<j>_value``, each [N]; `scale` [N] multiplies the values (PRISM's summed-loss rescaling)."""
    ids = np.array([t.id for t in targets] + [None], dtype=object)  # index -1 picks the None
    values = top.value if scale is None else top.value * scale[:, None]
    columns: dict[str, np.ndarray] = {}
    for j in range(top.index.shape[1]):
        columns[f"help_{j + 1}_id"] = ids[top.index[:, j]]
        columns[f"help_{j + 1}_value"] = values[:, j]
    return columns


def _timing_info(ctx: ScoreContext) -> dict[str, float]:
    return {k: round(v, 2) for k, v in ctx.shared.get("timings", {}).items()}


class LessScorer:
    """LESS (methods.md section 1): Adam-preconditioned candidate features vs target gradients, cosine,
    mean within each target task, max over tasks, summed over checkpoints weighted by learning rate."""

    def score(self, ctx: ScoreContext) -> Scores:
        aggregation = _options(ctx, "less")["less_aggregation"]
        targets = _require_targets(ctx, "less")
        cands, tgts, weights, bad = less_inputs(ctx)
        res = less_scores(
            cands, tgts, [t.task for t in targets], weights, aggregation=aggregation, bad=bad, helps=HELPS
        )
        columns = {f"task_{name}": res.task_scores[:, j] for j, name in enumerate(res.tasks)}
        assert res.helps is not None  # asked for above
        columns.update(help_columns(res.helps, targets))
        return Scores(
            score=np.where(np.isfinite(res.scores), res.scores, np.nan),
            columns=columns,
            info={
                "checkpoints": [ck.__dict__ for ck in checkpoints(ctx, "less")],
                "bad_rows": int(res.bad.sum()),
                "aggregation": aggregation,
                "timings_s": _timing_info(ctx),
            },
        )


class BidsScorer:
    """BIDS (methods.md section 4): the LESS influence matrix, column z-scored, iteratively balanced."""

    def score(self, ctx: ScoreContext) -> Scores:
        normalize = _options(ctx, "bids")["bids_normalize"]
        targets = _require_targets(ctx, "bids")
        cands, tgts, weights, bad = less_inputs(ctx)
        a = influence_matrix(cands, tgts, weights, normalize=True, bad=bad)
        budget = ctx.top_k_budget
        sel = bids_select(a, budget, bad=bad, normalize=normalize)
        z = zscore_columns(a, bad)
        # The score column: BIDS' first-step criterion, the best z-scored influence of each candidate.
        score = z.max(axis=1).astype(np.float64)
        tasks = [t.task for t in targets]
        # Coverage in z-scored units, so that tasks whose raw influences differ in scale compare.
        cov = coverage(z, tasks, sel.indices, bad=bad)
        # LESS's own selection from the same matrix, for the balance comparison BIDS is about
        less_sel = aggregate_select(a, tasks, budget, "task-max", bad=bad)
        cov_less = coverage(z, tasks, less_sel.indices, bad=bad)
        return Scores(
            score=score,
            columns=help_columns(top_targets(z if normalize else a, HELPS), targets),
            selected=sel.indices,
            info={
                "coverage": [c.__dict__ for c in cov],
                "coverage_less_task_max": [c.__dict__ for c in cov_less],
                "excluded": len(sel.excluded),
                "checkpoints": [ck.__dict__ for ck in checkpoints(ctx, "bids")],
                "timings_s": _timing_info(ctx),
            },
        )


def rejected_responses(ctx: ScoreContext, targets: list[Example], ckpt: Checkpoint, max_new: int) -> list[Example]:
    """Targets with a ``rejected`` response: the user's, else the greedy answer (up to `max_new` tokens) of the
    model at `ckpt` (its adapter loaded), generated once per checkpoint and stored."""
    missing = [t for t in targets if t.rejected is None]
    if not missing:
        return targets
    from gradsift.evaluation.generate import GenerationSettings, generate

    key: list[Any] = [ctx.model.fingerprint, fingerprint(missing), max_new]
    if ckpt.adapter is not None:
        # the base model's answers keep their key from before checkpoints generated their own
        key.append(adapter_digest(ckpt.adapter))
    path = ctx.workdir / f"prism-greedy-{_key(key)}.json"
    if path.exists():
        generated = json.loads(path.read_text())
        costs.reuse(path)
    else:
        since = costs.now()
        if ckpt.adapter is None:
            # a fresh LoRA starts with B = 0: the model of this checkpoint is the base model
            model, tokenizer = ctx.model.model, ctx.model.tokenizer
        else:
            from gradsift.model.lora import load_adapter

            lm = ctx.fresh_model()
            model, tokenizer = load_adapter(lm.model, ckpt.adapter, trainable=False), lm.tokenizer
        outputs = generate(
            model,
            tokenizer,
            [t.prompt_messages for t in missing],
            GenerationSettings(max_new_tokens=max_new, batch_size=8),
        )
        generated = {t.id: o for t, o in zip(missing, outputs, strict=True)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, generated)
        costs.record(path, since)
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
    target direction ``g* = mean_q pi_q (grad lbar(q, y+) - grad lbar(q, y-))``, with ``pi_q``, ``g*``,
    ``y-`` and the candidate gradients all from one checkpoint (by default the model given, module
    docstring)."""

    def score(self, ctx: ScoreContext) -> Scores:
        # options first: a typo should not cost a generation and a feature pass
        opts = _options(ctx, "prism")
        reduction, scoring = opts["prism_reduction"], opts["prism_scoring"]
        uniform, max_new = opts["prism_uniform"], opts["prism_max_new_tokens"]
        given = _require_targets(ctx, "prism")
        ckpts = checkpoints(ctx, "prism")
        cands, gp, gm, weights, bad = [], [], [], [], np.zeros(len(ctx.pool), dtype=bool)
        loss_p, loss_m = [], []
        tokens = None
        for ck in ckpts:
            targets = rejected_responses(ctx, given, ck, max_new)
            # One pass serves both reductions: the summed-loss gradient is the token-mean gradient times the
            # example's loss-token count, and the raw score is linear in it (rescaled below).
            store = features(ctx, ck, "pool", ctx.pool)
            c, b = _arrays(store)
            tokens = _extra(store, "tokens") if tokens is None else tokens
            cands.append(c)
            bad |= b
            sp = features(ctx, ck, "targets", targets)
            sm = features(ctx, ck, "targets", targets, response="rejected")
            gp.append(_arrays(sp)[0])
            gm.append(_arrays(sm)[0])
            weights.append(ck.weight)
            # this checkpoint's preference weights, from its own y-
            loss_p.append(_extra(sp, "loss"))
            loss_m.append(_extra(sm, "loss"))
        res = prism_scores(
            cands,
            gp,
            gm,
            np.stack(loss_p),
            np.stack(loss_m),
            weights,
            scoring=scoring,
            uniform=uniform,
            bad=bad,
            helps=HELPS,
        )
        score = np.where(np.isfinite(res.scores), res.scores, np.nan)
        rescale = tokens if reduction == "sum" and scoring == "raw" else None
        if rescale is not None:
            score = score * rescale
        assert res.helps is not None  # asked for above
        return Scores(
            score=score,
            columns=help_columns(res.helps, given, rescale),
            info={
                "preference_weights": {
                    ck.name: [round(float(p), 4) for p in pi] for ck, pi in zip(ckpts, res.preference, strict=True)
                },
                "n_generated_rejected": sum(t.rejected is None for t in given),
                "reduction": reduction,
                "checkpoints": [ck.__dict__ for ck in ckpts],
                "timings_s": _timing_info(ctx),
            },
        )
