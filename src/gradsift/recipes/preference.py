"""TIF, LossDiff, IRM and their error-complementary fusion for preference pairs: the DPO runs, forward passes and
gradient passes their scores need (methods.md section 3).

The scores themselves are `gradsift.score.preference` (definitions there), the bands and the selection
`gradsift.selection.band.select_pairs`. IF and IRM are taken at the warm-up checkpoint ``theta_w``, LossDiff
between ``theta_w`` and ``theta_val``; the DPO reference is the base model, i.e. the adapter switched off.

Shared steps, each cached under ``ctx.workdir / "preference"`` in a directory named by a hash of everything
that decides its content (settings, model and data fingerprints, the adapters it starts from), so runs with
other settings never mix and a rerun reuses what is done (inside each directory the run-dir and feature-store
checks refuse mismatches as usual):

- ``dpo-pool-<key>/``: the warm-up, `gradsift.training.dpo.train_dpo` with LoRA for one epoch on the pool.
- ``dpo-val-<key>/``: ``theta_val``, one epoch of DPO on the validation set ``V``.
- ``features/if-exact-<key>/`` and ``valgrad-<key>.npy``: IF itself, a one-column resumable feature store, and the
  summed validation gradient it is taken against (default ``projector=exact``); with ``projector=factorized`` or
  ``dense``, ``features/{pool,val}-<key>/``: projected per-pair gradients from
  `gradsift.gradients.extract.extract_features`.
- ``logps-<key>.npz`` + ``.json``: summed log-probabilities of every pair's chosen and rejected response under
  one checkpoint (the base model for the reference, the warm-up, ``theta_val``), forward only.

gradsift's choices (options, all read from ``ctx.options``):

- ``val_init`` (``warmup``, default): ``theta_val`` is one epoch of DPO on ``V`` starting from the warm-up
  model, as the paper's text describes LossDiff (the loss change when moving from the warm-up model toward
  ``theta_val``, positively correlated with IF). The warm-up adapter is merged into the base and a new
  adapter trained on ``V``; TRL's reference during that epoch is then the warm-up model. After one step of
  size ``eta`` LossDiff is, to first order, ``eta / |V|`` times the inner product of the pair's gradient with
  the summed validation gradient: IF, taken in the new adapter's parameters (on a tiny model its ranking
  matches IF's with Spearman above 0.9). ``base`` starts ``theta_val`` from the base model (gradsift's
  earlier default, "the model after one epoch of DPO on the validation set" read literally; it does not
  depend on the pool and is reused across pools). Then ``l(theta_val; d)`` is close to ``log 2`` for every
  pair and LossDiff is nearly ``l(theta_w; d) = softplus(-IRM(d))``, a decreasing function of IRM (Spearman
  -0.96 on HH-RLHF). gradsift knows of no released code for TIF, so the paper's text is the only source.
  LossDiff is always evaluated with the base model as reference.
- ``pref_mode`` (``band`` or ``topk``) and ``band_order`` (``centre`` or ``high``): how the scores become a
  selection, `gradsift.selection.band`. The paper keeps the whole middle band (about 60% of the pool for the
  fusion), so without a budget given (``ctx.budget`` None) a band method selects its whole band; a budget
  given explicitly cuts the band, centre first, and ``topk`` mode keeps `ScoreContext.top_k_budget` pairs.
- DPO runs use TRL's `DPOConfig` with gradsift's defaults ``learning_rate=1e-4`` (TRL's 1e-6 is meant for full
  fine-tuning and hardly moves a LoRA adapter), batch size 8, ``max_length = ctx.max_length``,
  ``seed = ctx.seed``; option ``dpo_config`` overrides any field.
- IF is exact by default: TIF needs only one direction, the summed validation gradient ``G``, so each pair's
  ``<g(d), G>`` is taken from its gradient factors (`DirectionSink`) at the cost of one gradient pass, without
  projecting or storing gradients. DPO gradients of different pairs are nearly orthogonal (cosines of a few
  hundredths on SmolLM2), so a 16 x 16 factorized projection's error is as large as IF itself there; the
  projected modes remain as options for comparison.
- Validation pairs come from option ``validation`` (a file read with `gradsift.data.load.load_pairs`, or a
  list of `Pair`s); without it, from ``ctx.targets`` when every target has a ``rejected`` response.

Each scorer's `Scores.score` is its selection priority (higher first, NaN outside the band in band mode; the
raw value in top-k mode), so ``top_k(score, budget)`` reproduces ``selected``; the raw values, their percentile
ranks (``pct_<name>``, each pair's position in its band) and the in-band flags are columns.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

import gradsift.costs as costs
from gradsift.atomic import write_bytes_atomic, write_json_atomic, write_npy_atomic
from gradsift.data.load import load_pairs
from gradsift.data.records import Pair, fingerprint
from gradsift.data.tokenize import Encoded, bucket_batches, collate, encode_pairs
from gradsift.gradients.grads import DirectionSink, FlatGradients, LoraGradients, pair_groups
from gradsift.model.load import LoadedModel
from gradsift.model.lora import LoraSettings, load_adapter
from gradsift.model.task import DPOTask, pair_logps
from gradsift.progress import bars, progress
from gradsift.recipes.base import ScoreContext, adapter_digest
from gradsift.recipes.options import PREFERENCE_FAMILY, ValInit, resolve_family
from gradsift.score.base import Scores
from gradsift.score.preference import (
    dpo_loss,
    implicit_reward_margin,
    influence_from_features,
    loss_diff,
    reward_margins,
    summed_direction,
)
from gradsift.selection.band import BandOrder, PrefMode, percentile_ranks, select_pairs
from gradsift.settings import settings_hash
from gradsift.stats import overlap, spearman

DPO_DEFAULTS: dict[str, Any] = {"learning_rate": 1e-4, "per_device_train_batch_size": 8}
_CACHE = "preference"


@dataclass
class PreferenceOptions:
    """Options of the preference scorers (module docstring for the choices), checked, with their defaults, by
    `gradsift.recipes.options` (``gradsift select --method tif --help-options`` lists them).

    Attributes:
        validation: The validation pairs ``V``: a file path for `load_pairs`, a list of `Pair`s, or None (the
            targets, when each has a rejected response).
        validation_format: Force the validation file's format.
        beta: DPO temperature, for the DPO runs and every score.
        band_lo: Lower percentile of the middle band, in [0, 100).
        band_hi: Upper percentile, in (band_lo, 100].
        pref_mode: ``band`` or ``topk``.
        band_order: ``centre`` or ``high``: order of the band members up to the budget.
        val_init: ``warmup`` (the paper's text) or ``base``: where ``theta_val`` starts.
        projector: How IF is computed: ``exact`` (the inner product of each pair's full LoRA gradient with the
            summed validation gradient, no projection error), or from stored ``factorized`` or ``dense``
            projected gradient features (`gradsift.gradients.projection`).
        proj_dim: Output dimension of the dense projector.
        k_in: Factorized projector: target size of each LoRA matrix's input side.
        k_out: Factorized projector: target size of each LoRA matrix's output side.
        store_dtype: ``float32`` (DPO gradients are small, float16 could flush them to zero) or ``float16`` rows.
        lora_rank: LoRA rank of the DPO runs.
        lora_alpha: LoRA alpha of the DPO runs.
        lora_targets: Modules the LoRA adapts.
        dpo_config: `trl.DPOConfig` overrides for both DPO runs (on top of `DPO_DEFAULTS`).
        compare_tif: Fusion also computes TIF and reports the overlap of the two selections.
    """

    validation: str | Path | list[Pair] | None
    validation_format: str | None
    beta: float
    band_lo: float
    band_hi: float
    pref_mode: PrefMode
    band_order: BandOrder
    val_init: ValInit
    projector: Literal["exact", "factorized", "dense"]
    proj_dim: int
    k_in: int
    k_out: int
    store_dtype: Literal["float32", "float16"]
    lora_rank: int
    lora_alpha: int
    lora_targets: list[str]
    dpo_config: dict[str, Any]
    compare_tif: bool

    @property
    def lora(self) -> LoraSettings:
        """LoRA settings of the DPO runs."""
        return LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha, target_modules=list(self.lora_targets))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PreferenceOptions:
        """The preference options of a run's options, checked and with their defaults (other keys are ignored).

        Raises:
            ValueError: A bad value, naming the option.
        """
        v = resolve_family(PREFERENCE_FAMILY, options)
        v["pref_mode"], v["band_order"] = PrefMode(v["pref_mode"]), BandOrder(v["band_order"])
        v["val_init"] = ValInit(v["val_init"])
        return cls(**v)


# ---------------------------------------------------------------------------------------------------------------
# Shared, cached steps


def _key(payload: Any) -> str:
    return settings_hash(payload, 12)


class PreferenceSteps:
    """The warm-up, ``theta_val``, gradient features and log-probabilities that the preference scorers share.

    Every step is computed at most once per object and cached on disk (module docstring); `info` collects what
    each step did (run directories, whether it was reused, truncated and dropped pairs, seconds).

    Args:
        ctx: The scoring context; ``ctx.pairs`` is the pool.
        opts: The options.
        method: Name of the calling method, for error messages.

    Raises:
        ValueError: The context has no preference pairs.
    """

    def __init__(self, ctx: ScoreContext, opts: PreferenceOptions, method: str) -> None:
        if not ctx.pairs:
            raise ValueError(f"the {method} method scores preference pairs: run with kind 'pair' (--kind pair)")
        self.ctx, self.opts, self.method = ctx, opts, method
        self.root = Path(ctx.workdir) / _CACHE
        self.info: dict[str, Any] = {"timings_s": {}}

    def _timed(self, name: str, start: float) -> None:
        self.info["timings_s"][name] = round(time.perf_counter() - start, 3)

    @cached_property
    def base(self) -> LoadedModel:
        """The shared base model (``ctx.model``): reference log-probabilities and fingerprints only."""
        return self.ctx.model

    @cached_property
    def validation(self) -> list[Pair]:
        """The validation pairs ``V``.

        Raises:
            ValueError: No validation set given and no targets with rejected responses, or an empty one.
        """
        v = self.opts.validation
        if isinstance(v, str | Path):
            pairs = load_pairs(v, fmt=self.opts.validation_format)
            source = str(v)
        elif v is not None:
            pairs, source = list(v), "options"
        elif self.ctx.targets and all(t.rejected is not None for t in self.ctx.targets):
            pairs = [
                Pair(t.id, t.prompt_messages, t.response, str(t.rejected), t.task, t.raw, t.source, t.line)
                for t in self.ctx.targets
            ]
            source = "targets"
        else:
            raise ValueError(
                f"the {self.method} method needs a validation set of preference pairs: pass option "
                "validation=PATH (--option validation=val.jsonl), or targets that all have a rejected response"
            )
        if not pairs:
            raise ValueError(f"the validation set ({source}) holds no pairs")
        self.info["validation"] = {"source": source, "n": len(pairs), "fingerprint": fingerprint(pairs)}
        return pairs

    def _dpo_overrides(self) -> dict[str, Any]:
        return {**DPO_DEFAULTS, "max_length": self.ctx.max_length, "seed": self.ctx.seed, **self.opts.dpo_config}

    def _train(self, role: str, pairs: list[Pair], init: list[Path]) -> Path:
        """One epoch (by default) of LoRA DPO on `pairs`, from the base model with the `init` adapters merged."""
        from trl import DPOConfig

        from gradsift.training.common import comparable_config, make_config
        from gradsift.training.dpo import train_dpo

        t = time.perf_counter()
        overrides = self._dpo_overrides()
        cfg = make_config(DPOConfig, overrides, self.root / "key", required={"beta": self.opts.beta})
        key = _key(
            {
                "model": self.base.fingerprint,
                "data": fingerprint(pairs),
                "lora": self.opts.lora.as_dict(),
                "trainer": comparable_config(cfg),
                "init": [adapter_digest(p) for p in init],
            }
        )
        out = self.root / f"dpo-{role}-{key}"
        lm = self.ctx.fresh_model()
        model = lm.model
        for adapter in init:
            model = load_adapter(model, adapter, trainable=False).merge_and_unload()
        # the trainer's bar follows gradsift's progress mode (a bookkeeping field: not in the key)
        shown = {"disable_tqdm": not bars(), **overrides}
        since = costs.now()
        res = train_dpo(model, lm.tokenizer, pairs, out, self.opts.lora, config=shown, beta=self.opts.beta)
        self.info[f"dpo_{role}"] = {
            "run_dir": str(out),
            "reused": res.reused,
            "global_step": res.global_step,
            "init": [str(p) for p in init],
            "trl_counts": res.counts.as_dict(),
        }
        if res.reused:
            costs.reuse(out)
        else:
            costs.record(out, since)
        self._timed(f"dpo_{role}", t)
        return res.adapter_dir

    @cached_property
    def warmup(self) -> Path:
        """Adapter directory of the warm-up: DPO on the whole pool from the base model."""
        return self._train("pool", self.ctx.pairs, [])

    @cached_property
    def theta_val_chain(self) -> list[Path]:
        """Adapters that make ``theta_val``, in order (the warm-up first when ``val_init`` is ``warmup``)."""
        init = [self.warmup] if self.opts.val_init is ValInit.WARMUP else []
        return [*init, self._train("val", self.validation, init)]

    def _encoded(self, which: Literal["pool", "val"]) -> list[tuple[Encoded, Encoded]]:
        pairs = self.ctx.pairs if which == "pool" else self.validation
        encoded, stats = encode_pairs(self.base.tokenizer, pairs, self.ctx.max_length)
        self.info.setdefault("truncated_by_max_length", {})[which] = stats.as_dict()
        return encoded

    @cached_property
    def encoded_pool(self) -> list[tuple[Encoded, Encoded]]:
        return self._encoded("pool")

    def logps(self, name: str, adapters: list[Path]) -> np.ndarray:
        """Summed log-probabilities [N, 2] of the pool's responses under the base model with `adapters` applied
        (merged in order, the last one loaded), cached; no adapter gives the reference."""
        t = time.perf_counter()
        settings = {
            "model": self.base.fingerprint,
            "adapters": [adapter_digest(p) for p in adapters],
            "data": fingerprint(self.ctx.pairs),
            "max_length": self.ctx.max_length,
        }
        path = self.root / f"logps-{name}-{_key(settings)}.npz"
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists() and json.loads(meta.read_text()) == settings:
            with np.load(path, allow_pickle=False) as z:
                out = z["logps"]
            self.info.setdefault("logps", {})[name] = {"path": str(path), "reused": True}
            costs.reuse(path)
            self.encoded_pool  # noqa: B018 (tokenising records the truncation counts, reported on every run)
            return out
        since = costs.now()
        if adapters:
            lm = self.ctx.fresh_model()
            model = lm.model
            for adapter in adapters[:-1]:
                model = load_adapter(model, adapter, trainable=False).merge_and_unload()
            model = load_adapter(model, adapters[-1], trainable=False)
        else:
            model = self.base.model
        model.eval()
        pad = self.base.tokenizer.pad_token_id
        out = pair_logps(model, self.encoded_pool, pad, self.ctx.batch_tokens, desc=f"log-probs ({name})")
        buf = io.BytesIO()
        np.savez(buf, logps=out)
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buf.getvalue())
        write_json_atomic(meta, settings)
        self.info.setdefault("logps", {})[name] = {"path": str(path), "reused": False}
        costs.record(path, since)
        self._timed(f"logps_{name}", t)
        return out

    def margins(self, which: Literal["warmup", "val"]) -> np.ndarray:
        """Implicit reward margins ``m`` [N] (without beta) of the pool under the warm-up or ``theta_val``.

        The reference is the base model, as in the DPO runs and `DPOTask` with the adapter disabled.
        """
        ref = self.logps("reference", [])
        pol = self.logps("warmup", [self.warmup]) if which == "warmup" else self.logps("val", self.theta_val_chain)
        return reward_margins(pol, ref)

    def _features(self, which: Literal["pool", "val"]) -> Any:
        from gradsift.gradients.extract import FeatureConfig, extract_features

        t = time.perf_counter()
        pairs = self.ctx.pairs if which == "pool" else self.validation
        opts = self.opts
        settings = {
            "model": self.base.fingerprint,
            "adapter": adapter_digest(self.warmup),
            "data": fingerprint(pairs),
            "projector": opts.projector,
            "dim": opts.proj_dim if opts.projector == "dense" else [opts.k_in, opts.k_out],
            "seed": self.ctx.seed,
            "beta": opts.beta,
            "max_length": self.ctx.max_length,
            "store_dtype": opts.store_dtype,
        }
        out = self.root / "features" / f"{which}-{_key(settings)}"
        cfg = FeatureConfig(
            data=f"(preference {which} pairs)",
            out=str(out),
            kind="pair",
            adapter=str(self.warmup),
            projector="dense" if opts.projector == "dense" else "factorized",
            dim=opts.proj_dim,
            k_in=opts.k_in,
            k_out=opts.k_out,
            projection_seed=self.ctx.seed,
            beta=opts.beta,
            max_length=self.ctx.max_length,
            batch_tokens=max(self.ctx.batch_tokens, self.ctx.max_length),
            store_dtype=opts.store_dtype,
        )
        done_before = (out / "done.npy").exists() and bool(np.load(out / "done.npy", mmap_mode="r").all())
        since = costs.now()
        store = extract_features(cfg, records=pairs, loaded=self.ctx.fresh_model())
        if done_before:
            costs.reuse(out)
        else:
            costs.record(out, since)
        block = store.read()
        bad = np.flatnonzero(~block.valid)
        self.info.setdefault("features", {})[which] = {
            "path": str(out),
            "dim": store.layout.dim,
            "reused": done_before,
            "n_bad": len(bad),
            "bad_ids": [pairs[i].id for i in bad[:50]],
        }
        self._timed(f"features_{which}", t)
        return block

    def _gradient_batches(
        self,
        grads: Any,
        lm: LoadedModel,
        encoded: Sequence[tuple[Encoded, Encoded]],
        sink: Any,
        ref: np.ndarray | None = None,
        desc: str = "gradients",
    ) -> Iterator[tuple[list[int], Any]]:
        """Per-pair DPO gradients of `encoded`, batched as the feature extractor batches pairs; `ref` ([N, 2]
        reference log-probabilities, when known) saves the reference forward pass."""
        task = DPOTask(beta=self.opts.beta)
        lengths = [2 * max(len(c), len(r)) for c, r in encoded]
        with progress(len(encoded), desc, "pair") as bar:
            for idx in bucket_batches(lengths, max(self.ctx.batch_tokens, self.ctx.max_length)):
                items = [encoded[i][0] for i in idx] + [encoded[i][1] for i in idx]
                batch = {k: v.to(lm.device) for k, v in collate(items, lm.tokenizer.pad_token_id).items()}
                if ref is not None:
                    pair_ref = np.concatenate([ref[idx, 0], ref[idx, 1]])
                    batch["ref_logps"] = torch.from_numpy(pair_ref).to(lm.device, torch.float32)
                yield idx, grads.compute(batch, task, sink=sink, groups=pair_groups(len(idx), lm.device))
                bar.update(len(idx))

    def _exact_influence(self) -> np.ndarray:
        """IF without projection: the summed validation gradient ``G`` [P] once (cached as ``.npy``), then
        ``<g(d), G>`` for every pool pair through `DirectionSink`, in a resumable one-column feature store."""
        from gradsift.store.features import FeatureStore, store_lock

        t = time.perf_counter()
        settings = {
            "model": self.base.fingerprint,
            "adapter": adapter_digest(self.warmup),
            "pool": fingerprint(self.ctx.pairs),
            "validation": fingerprint(self.validation),
            "beta": self.opts.beta,
            "max_length": self.ctx.max_length,
        }
        key = _key(settings)
        folder = self.root / "features"
        store_path, grad_path = folder / f"if-exact-{key}", folder / f"valgrad-{key}.npy"
        grad_info = grad_path.with_suffix(".json")
        reused = (store_path / "metadata.json").exists() and FeatureStore.load(store_path).is_complete()
        if reused:
            costs.reuse(store_path)
        else:
            # the reference log-probabilities are a cache entry of their own: computed (or charged) outside
            # this entry's measured cost
            self.logps("reference", [])
            since = costs.now()
            # one writer per store: a second run sharing this cache fails at once instead of after its pass
            with store_lock(store_path):
                lm = self.ctx.fresh_model()
                model = load_adapter(lm.model, self.warmup, trainable=True)
                model.eval()
                lm = LoadedModel(model, lm.tokenizer, lm.source, lm.fingerprint, lm.device, lm.dtype)
                grads = LoraGradients(model)
                if not (grad_path.exists() and grad_info.exists()):
                    total = np.zeros(grads.num_params)
                    bad: list[int] = []
                    val = self._encoded("val")
                    for idx, out in self._gradient_batches(
                        grads, lm, val, FlatGradients(grads.num_params), desc="G (val)"
                    ):
                        ok = ~out.bad.cpu().numpy()
                        total += (
                            out.features[torch.from_numpy(ok).to(out.features.device)].double().sum(0).cpu().numpy()
                        )
                        bad += [i for i, good in zip(idx, ok, strict=True) if not good]
                    if len(bad) == len(val):
                        raise ValueError("every validation pair has a non-finite gradient: IF is undefined")
                    folder.mkdir(parents=True, exist_ok=True)
                    write_npy_atomic(grad_path, total)
                    write_json_atomic(
                        grad_info, {"n_bad": len(bad), "bad_ids": [self.validation[i].id for i in bad[:50]]}
                    )
                direction = torch.from_numpy(np.load(grad_path)).to(lm.device, torch.float32)
                store = FeatureStore.open(store_path, len(self.ctx.pairs), 1, settings, extras=("loss",))
                todo = store.missing_rows()
                encoded = [self.encoded_pool[i] for i in todo]
                # The pool's reference log-probabilities are cached for LossDiff and IRM anyway: reuse them here.
                ref = self.logps("reference", [])[todo]
                sink = DirectionSink(direction, grads.layers)
                for idx, out in self._gradient_batches(grads, lm, encoded, sink, ref, desc="IF (pool)"):
                    losses = out.losses.float().cpu().numpy()
                    store.write_rows(todo[idx], out.features.float().cpu().numpy(), {"loss": losses})
            costs.record(store_path, since)
        block = FeatureStore.load(store_path).read()
        bad_pool = np.flatnonzero(~block.valid)
        val_bad = json.loads(grad_info.read_text())
        self.info["features"] = {
            "mode": "exact",
            "pool": {
                "path": str(store_path),
                "reused": reused,
                "n_bad": len(bad_pool),
                "bad_ids": [self.ctx.pairs[i].id for i in bad_pool[:50]],
            },
            "val": {"path": str(grad_path), "n_bad": val_bad["n_bad"], "bad_ids": val_bad["bad_ids"]},
        }
        self._timed("influence_exact", t)
        out = np.asarray(block.features[:, 0], dtype=np.float64)
        out[~block.valid] = np.nan
        return out

    def _projected_influence(self) -> np.ndarray:
        pool = self._features("pool")
        val = self._features("val")
        direction = summed_direction(val.features, val.valid)
        self.info["features"]["mode"] = self.opts.projector
        return influence_from_features(pool.features, pool.valid, direction)

    @cached_property
    def influence(self) -> np.ndarray:
        """IF(d) = ``<g(d), sum_v g(v)>`` [N] float64 at the warm-up checkpoint; NaN for pairs with non-finite
        gradients (validation pairs with non-finite gradients are left out of the sum)."""
        out = self._exact_influence() if self.opts.projector == "exact" else self._projected_influence()
        self.encoded_pool  # noqa: B018 (records the truncation counts)
        self._encoded("val")
        return out


# ---------------------------------------------------------------------------------------------------------------
# Scorers


def _budget(ctx: ScoreContext, opts: PreferenceOptions) -> int | None:
    """Pairs to select: the budget given, else the whole band (None) in band mode and the top-k default."""
    if ctx.budget is not None or opts.pref_mode is PrefMode.TOPK:
        return ctx.top_k_budget
    return None


def _finish(steps: PreferenceSteps, band_columns: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> Scores:
    opts = steps.opts
    budget = _budget(steps.ctx, opts)
    sel = select_pairs(band_columns, budget, opts.band_lo, opts.band_hi, opts.pref_mode, opts.band_order)
    columns = {**extra, **band_columns}
    # Each pair's position in each band's score, for the report: the band is [band_lo, band_hi] in these units.
    columns.update({f"pct_{name}": percentile_ranks(values) for name, values in band_columns.items()})
    for name, mask in sel.in_band.items():
        if name != "all" or len(band_columns) > 1:
            columns[f"in_band_{name}" if name != "all" else "in_band"] = mask
    info = {**sel.info, "beta": opts.beta, "val_init": opts.val_init.value, **steps.info}
    return Scores(score=sel.score, columns=columns, info=info, selected=sel.selected)


def _options(ctx: ScoreContext) -> PreferenceOptions:
    return PreferenceOptions.from_options(ctx.options)


class TIFScorer:
    """TIF: IF in the middle percentile band (methods.md section 3); ``pref_mode=topk`` gives plain IF top-k."""

    def score(self, ctx: ScoreContext) -> Scores:
        steps = PreferenceSteps(ctx, _options(ctx), "tif")
        steps.validation  # noqa: B018 (a missing validation set fails before any training)
        return _finish(steps, {"if": steps.influence}, {})


class LossDiffScorer:
    """LossDiff ``l(theta_w; d) - l(theta_val; d)`` in its middle band (methods.md section 3)."""

    def score(self, ctx: ScoreContext) -> Scores:
        steps = PreferenceSteps(ctx, _options(ctx), "lossdiff")
        steps.validation  # noqa: B018 (a missing validation set fails before any training)
        ld = loss_diff(steps.margins("warmup"), steps.margins("val"), steps.opts.beta)
        return _finish(steps, {"lossdiff": ld.value}, {"loss_warmup": ld.loss_warmup, "loss_val": ld.loss_val})


class IRMScorer:
    """IRM, the implicit reward margin ``beta * m`` under the warm-up model, in its middle band (methods.md
    section 3). Needs no validation set."""

    def score(self, ctx: ScoreContext) -> Scores:
        steps = PreferenceSteps(ctx, _options(ctx), "irm")
        m, beta = steps.margins("warmup"), steps.opts.beta
        return _finish(steps, {"irm": implicit_reward_margin(m, beta)}, {"loss_warmup": dpo_loss(m, beta)})


class FusionScorer:
    """Error-complementary fusion: LossDiff and IRM both in their middle bands (methods.md section 3).

    With ``compare_tif`` (default) TIF is computed too: ``info["tif"]`` gives the overlap of the two selections
    and of the two bands, and ``info["spearman"]`` the rank correlations of LossDiff and IRM with IF.
    """

    def score(self, ctx: ScoreContext) -> Scores:
        steps = PreferenceSteps(ctx, _options(ctx), "fusion")
        steps.validation  # noqa: B018 (a missing validation set fails before any training)
        opts = steps.opts
        m_w = steps.margins("warmup")
        ld = loss_diff(m_w, steps.margins("val"), opts.beta)
        lossdiff, irm = ld.value, implicit_reward_margin(m_w, opts.beta)
        extra = {"loss_warmup": ld.loss_warmup, "loss_val": ld.loss_val}
        spearmans: dict[str, float | None] = {"lossdiff_irm": spearman(lossdiff, irm)}
        tif_info: dict[str, Any] | None = None
        if opts.compare_tif:
            influence = steps.influence
            tif = select_pairs(
                {"if": influence}, _budget(ctx, opts), opts.band_lo, opts.band_hi, opts.pref_mode, opts.band_order
            )
            extra.update({"if": influence, "in_band_if": tif.in_band["if"]})
            spearmans.update({"lossdiff_if": spearman(lossdiff, influence), "irm_if": spearman(irm, influence)})
            tif_info = {"selected": tif.selected}
        out = _finish(steps, {"lossdiff": lossdiff, "irm": irm}, extra)
        out.info["spearman"] = spearmans
        if tif_info is not None:
            in_fusion = np.flatnonzero(out.columns["in_band"])
            in_tif = np.flatnonzero(out.columns["in_band_if"])
            out.info["tif"] = {
                "selection_overlap": overlap(out.selected or [], tif_info["selected"]),
                "band_overlap": overlap(in_fusion.tolist(), in_tif.tolist()),
            }
        return out
