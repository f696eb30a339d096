"""Feature extraction: records -> per-example LoRA gradients -> projection -> a resumable store.

Composes the gradient engine (:class:`~gradsift.gradients.grads.LoraGradients`), a projector
(:mod:`~gradsift.gradients.projection`, optionally Adam-preconditioned) and the on-disk
:class:`~gradsift.store.features.FeatureStore`. Rows already in the store are skipped, so a rerun
after a crash resumes; a store made with other settings is refused unless ``overwrite``.

Scale-out: launched under ``torchrun --nproc_per_node N -m gradsift features ...``, every rank
takes the rows ``row % N == rank`` and writes them into the same store (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from gradsift.atomic import write_json_atomic
from gradsift.data.load import load_examples, load_pairs
from gradsift.data.records import Example, Kind, Pair, fingerprint
from gradsift.data.tokenize import Encoded, bucket_batches, collate, encode_examples, encode_pairs
from gradsift.gradients.grads import LoraGradients, pair_groups
from gradsift.gradients.precondition import AdamState, PreconditionedProjector, load_checkpoint_optimizer
from gradsift.gradients.projection import DenseProjector, FactorizedProjector, Projector, SparseProjector
from gradsift.model.load import MODEL_HELP, DType, LoadedModel, ModelSettings, load_model
from gradsift.model.lora import OPTIMIZER_JSON, LoraSettings, attach_lora, load_adapter
from gradsift.model.task import DPOTask, SFTTask
from gradsift.progress import Progress
from gradsift.settings import check_fields, setting
from gradsift.store.features import FeatureStore, store_lock

log = logging.getLogger(__name__)

FeatureKind = Literal["sft", "target", "pair"]
ProjectorName = Literal["auto", "dense", "factorized", "sparse"]


@dataclass
class FeatureConfig:
    """Settings of one feature extraction (one data split at one checkpoint).

    Attributes:
        data: The records (file, saved dataset directory or ``hf:name``).
        out: Store directory.
        kind: ``sft`` (candidates), ``target`` (targets) or ``pair`` (preference pairs, DPO-loss gradients).
        response: For sft/target: ``chosen`` (the record's response, ``y+``) or ``rejected`` (its
            ``rejected`` field, PRISM's ``y-``).
        model: ``builtin``, a local directory, a ``.gguf`` file or a hub id.
        dtype: Model dtype (``auto``: bfloat16 on capable GPUs, float32 on CPU).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        adapter: A LoRA adapter directory (a warm-up checkpoint); without it a fresh LoRA is attached.
        optimizer: A warm-up checkpoint directory with Adam moments: features become LESS's
            Adam-preconditioned update directions (methods.md section 1; sparse or dense projection).
        adam_eps: Where Adam's epsilon goes: ``inside`` (``m'/sqrt(v'+eps)``, LESS's released code, default)
            or ``outside`` (``m'/(sqrt(v')+eps)``, LESS's paper).
        lora_rank: Rank of a fresh LoRA (ignored with `adapter`).
        lora_alpha: Alpha of a fresh LoRA.
        lora_targets: Modules of a fresh LoRA.
        lora_seed: Seed of a fresh LoRA's initialisation.
        lora_layers: Decoder layers of a fresh LoRA: None (all), ``last:K`` or ``0,5,7`` (ignored with
            `adapter`, whose own placement counts). Fewer layers, shorter backward pass.
        projector: ``factorized`` (per-layer Kronecker projection, never builds the gradient), ``sparse``
            (sparse Johnson-Lindenstrauss over the flat gradient, `sparse_s` non-zeros per column), ``dense``
            (LESS's Rademacher projection of the flat gradient) or ``auto`` (factorized; sparse with `optimizer`,
            whose preconditioning needs the flat gradient).
        dim: Output dimension of the sparse and dense projectors.
        sparse_s: Non-zeros per column of the sparse projector (divides `dim`).
        k_in: Factorized projector: target size of each layer's input side.
        k_out: Factorized projector: target size of each layer's output side.
        projection: ``rademacher`` or ``gaussian`` entries.
        projection_seed: Seed of the projection; every process and device builds the same matrix.
        reduction: Per-example loss: token ``mean`` (default) or ``sum`` over response tokens.
        beta: DPO temperature (pairs).
        max_length: Token limit per sequence.
        batch_tokens: Padded tokens per batch (length-bucketed).
        max_batch: Most examples per batch.
        store_dtype: ``float16`` or ``float32`` rows on disk.
        fmt: Force the data format.
        limit: Use only the first N records (0: all).
        on_invalid: ``raise`` or ``skip`` invalid records.
        overwrite: Replace a store made with other settings.
    """

    data: str = setting(help="records: JSONL/JSON/CSV/TSV/Parquet (optionally .gz), saved dataset dir or hf:NAME")
    out: str = setting(help="store directory")
    kind: FeatureKind = setting("sft", help="candidates, targets or preference pairs")
    response: Literal["chosen", "rejected"] = setting("chosen", help="y+ or the rejected response y-")
    model: str = setting("builtin", help=MODEL_HELP, group="model")
    dtype: DType = setting("auto", help="model dtype", group="model")
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N", group="model")
    adapter: str | None = setting(None, help="LoRA adapter directory (a warm-up checkpoint); default a fresh LoRA")
    optimizer: str | None = setting(None, help="warm-up checkpoint with Adam moments: LESS's preconditioned features")
    adam_eps: Literal["inside", "outside"] = setting(
        "inside", help="Adam feature m'/sqrt(v'+eps) (LESS code) or outside"
    )
    lora_rank: int = setting(8, help="rank of a fresh LoRA")
    lora_alpha: int = setting(16, help="alpha of a fresh LoRA")
    lora_targets: list[str] = setting(
        default_factory=lambda: ["q_proj", "v_proj"], help="modules of a fresh LoRA, comma-separated"
    )
    lora_seed: int = setting(0, help="seed of a fresh LoRA")
    lora_layers: str | None = setting(None, help="decoder layers of a fresh LoRA: last:K or a list such as 0,5,7")
    projector: ProjectorName = setting("auto", help="auto: factorized, sparse with --optimizer")
    dim: int = setting(8192, help="sparse/dense projection dimension")
    sparse_s: int = setting(4, help="sparse projection: non-zeros per column")
    k_in: int = setting(16, help="factorized: input-side size per layer")
    k_out: int = setting(16, help="factorized: output-side size per layer")
    projection: Literal["rademacher", "gaussian"] = setting("rademacher", help="projection entries")
    projection_seed: int = setting(0, help="projection seed")
    reduction: Literal["mean", "sum"] = setting("mean", help="per-example loss: token mean or sum")
    beta: float = setting(0.1, help="DPO beta for pairs")
    max_length: int = setting(256, help="token limit per sequence")
    batch_tokens: int = setting(1536, help="padded tokens per batch")
    max_batch: int = setting(64, help="most examples per batch")
    store_dtype: Literal["float16", "float32"] = setting("float16", help="row dtype on disk")
    fmt: str | None = setting(None, help="force the data format")
    limit: int = setting(0, help="use only the first N records (0: all)")
    on_invalid: Literal["raise", "skip"] = setting("raise", help="stop at or skip invalid records and lines")
    overwrite: bool = setting(False, help="replace a store made with other settings")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.optimizer and self.projector == "factorized":
            raise ValueError("Adam preconditioning needs the full gradient: use projector 'sparse', 'dense' or 'auto'")
        if self.kind == "pair" and self.response != "chosen":
            raise ValueError("response applies to sft/target features, not to pairs")
        if self.projector_name == "sparse" and (self.sparse_s < 1 or self.dim % self.sparse_s):
            raise ValueError(f"sparse_s must be >= 1 and divide dim ({self.dim}), got {self.sparse_s}")
        for name in ("dim", "k_in", "k_out", "max_length", "batch_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_tokens < self.max_length:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must be at least max_length ({self.max_length})")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0 (0 means all), got {self.limit}")
        ModelSettings(model=self.model, dtype=self.dtype, device=self.device)  # type: ignore[arg-type]
        self.lora_settings()

    def lora_settings(self) -> LoraSettings:
        """The settings of a fresh LoRA (without `adapter`)."""
        return LoraSettings(
            rank=self.lora_rank, alpha=self.lora_alpha, target_modules=list(self.lora_targets), layers=self.lora_layers
        )

    @property
    def projector_name(self) -> str:
        if self.projector == "auto":
            return "sparse" if self.optimizer else "factorized"
        return self.projector


def file_digest(path: Path) -> str:
    """First 16 hex digits of a file's SHA-256, read in 1 MiB blocks (cache keys for checkpoint files)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _dir_digest(path: str | None, pattern: str) -> str | None:
    if not path:
        return None
    files = sorted(Path(path).glob(pattern))
    if not files:
        raise FileNotFoundError(f"{path}: no {pattern}")
    return hashlib.sha256("".join(file_digest(f) for f in files).encode()).hexdigest()[:16]


def read_records(cfg: FeatureConfig) -> list[Example] | list[Pair]:
    """The records of a feature config, limited to the first `limit`."""
    if cfg.kind == "pair":
        records: Any = load_pairs(cfg.data, fmt=cfg.fmt, on_invalid=cfg.on_invalid)
    else:
        kind = Kind.TARGET if cfg.kind == "target" or cfg.response == "rejected" else Kind.SFT
        records = load_examples(cfg.data, kind=kind, fmt=cfg.fmt, on_invalid=cfg.on_invalid)
    return records[: cfg.limit] if cfg.limit else records


def prepare_model(cfg: FeatureConfig, loaded: LoadedModel | None = None) -> LoadedModel:
    """Load the model and put LoRA on it: the checkpoint's adapter, or a fresh seeded one.

    A fresh LoRA starts with ``B = 0`` (peft's default): gradients w.r.t. ``A`` vanish and those w.r.t.
    ``B`` are ``delta (A x)^T``, a seeded random sketch of the full weight gradient.
    """
    lm = loaded or load_model(ModelSettings(model=cfg.model, dtype=cfg.dtype, device=cfg.device))  # type: ignore[arg-type]
    if hasattr(lm.model, "peft_config"):
        raise ValueError("the model already carries a peft adapter; pass the base model")
    if cfg.adapter:
        model = load_adapter(lm.model, cfg.adapter, trainable=True)
    else:
        model = attach_lora(lm.model, cfg.lora_settings(), seed=cfg.lora_seed)
    model.to(lm.device)
    model.eval()
    return LoadedModel(model, lm.tokenizer, lm.source, lm.fingerprint, lm.device, lm.dtype)


def make_projector(cfg: FeatureConfig, grads: LoraGradients, device: torch.device) -> Projector:
    """The projector a config asks for, Adam-preconditioned when it names an optimizer state."""
    if cfg.projector_name == "factorized":
        return FactorizedProjector(
            [layer.shape for layer in grads.layers],
            k_in=cfg.k_in,
            k_out=cfg.k_out,
            kind=cfg.projection,
            seed=cfg.projection_seed,
        )
    flat: DenseProjector | SparseProjector
    if cfg.projector_name == "sparse":
        flat = SparseProjector(grads.num_params, k=cfg.dim, s=cfg.sparse_s, seed=cfg.projection_seed)
    else:
        flat = DenseProjector(grads.num_params, k=cfg.dim, kind=cfg.projection, seed=cfg.projection_seed)
    if not cfg.optimizer:
        return flat
    m, v, (b1, b2), eps = load_checkpoint_optimizer(cfg.optimizer)
    saved = json.loads((Path(cfg.optimizer) / OPTIMIZER_JSON).read_text()).get("params", [])
    saved_layout = [(p["name"], tuple(p["shape"])) for p in saved]
    layout = [(layer.param_name, layer.shape) for layer in grads.layers]
    if m.numel() != grads.num_params or saved_layout != layout:
        first = next((i for i, (a, b) in enumerate(zip(saved_layout, layout, strict=False)) if a != b), None)
        detail = (
            f"; first difference: saved {saved_layout[first]} vs model {layout[first]}" if first is not None else ""
        )
        raise ValueError(
            f"{cfg.optimizer}: the Adam state ({m.numel()} parameters in {len(saved_layout)} tensors) does not match "
            f"the model's LoRA ({grads.num_params} in {len(layout)}){detail}; use the adapter of the same checkpoint"
        )
    return PreconditionedProjector(AdamState(m, v, b1, b2, eps, cfg.adam_eps).to(device), flat)


def store_settings(
    cfg: FeatureConfig, lm: LoadedModel, grads: LoraGradients, projector: Projector, records: list[Any]
) -> dict[str, Any]:
    """Everything that makes two stores comparable; a mismatch refuses to mix them."""
    return {
        "kind": cfg.kind,
        "response": cfg.response,
        "model": lm.fingerprint,
        "model_source": lm.source,
        "dtype": str(lm.dtype).replace("torch.", ""),
        "adapter": _dir_digest(cfg.adapter, "adapter_model.*"),
        "optimizer": _dir_digest(cfg.optimizer, "optimizer.*"),
        "lora": None
        if cfg.adapter
        else {
            "rank": cfg.lora_rank,
            "alpha": cfg.lora_alpha,
            "targets": list(cfg.lora_targets),
            "seed": cfg.lora_seed,
            **({"layers": cfg.lora_layers} if cfg.lora_layers else {}),
        },
        "lora_params": grads.num_params,
        "projector": projector.describe(),
        "reduction": cfg.reduction,
        "beta": cfg.beta if cfg.kind == "pair" else None,
        "max_length": cfg.max_length,
        # batching changes the padding and the batched kernels, and with them the features (up to ~2e-4): a
        # resume with other batching would mix two kinds of rows
        "batching": {"batch_tokens": cfg.batch_tokens, "max_batch": cfg.max_batch},
        "data": fingerprint(records),
    }


def _distributed() -> tuple[int, int]:
    """Rank and world size, initialising torch.distributed when launched by torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def extract_features(
    cfg: FeatureConfig,
    records: list[Example] | list[Pair] | None = None,
    loaded: LoadedModel | None = None,
    progress: bool = True,
) -> FeatureStore:
    """Compute the missing rows of a feature store and return the store.

    Args:
        cfg: What to extract.
        records: The records (read from ``cfg.data`` when omitted).
        loaded: A loaded base model to reuse (without adapter; LoRA is attached in place).
        progress: Show a progress bar.

    Returns:
        The store, complete: [N, dim] rows plus the ``loss`` extra (``margin`` too for pairs:
        the implicit reward margin ``beta * m``).

    Raises:
        ValueError: Settings that differ from an existing store's (without ``overwrite``), bad input.
    """
    rank, world = _distributed()
    # one writer per store (the ranks of one torchrun share it): a second run fails here, before any work
    with store_lock(cfg.out) if rank == 0 else contextlib.nullcontext():
        return _extract(cfg, records, loaded, progress, rank, world)


def _extract(
    cfg: FeatureConfig,
    records: list[Example] | list[Pair] | None,
    loaded: LoadedModel | None,
    progress: bool,
    rank: int,
    world: int,
) -> FeatureStore:
    if records is None:
        records = read_records(cfg)
    elif cfg.limit:
        records = records[: cfg.limit]
    if not records:
        raise ValueError(f"{cfg.data}: no records to extract features from")
    lm = prepare_model(cfg, loaded)
    if world > 1 and lm.device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        lm = LoadedModel(lm.model.to(device), lm.tokenizer, lm.source, lm.fingerprint, device, lm.dtype)
    grads = LoraGradients(lm.model)
    projector = make_projector(cfg, grads, lm.device)
    settings = store_settings(cfg, lm, grads, projector, list(records))
    extras = ("loss", "tokens", "margin") if cfg.kind == "pair" else ("loss", "tokens")
    n = len(records)
    if rank == 0:
        store = FeatureStore.open(
            cfg.out,
            n,
            projector.dim,
            settings,
            dtype=cfg.store_dtype,
            overwrite=cfg.overwrite,
            extras=extras,
            command=_command(),
        )
    _barrier(world)
    if rank != 0:
        store = FeatureStore.open(cfg.out, n, projector.dim, settings, dtype=cfg.store_dtype, extras=extras)
    if rank == 0:
        write_json_atomic(Path(cfg.out) / "feature_config.json", asdict(cfg))
    todo = store.missing_rows(rank, world)
    if len(todo):
        _fill(cfg, store, [records[i] for i in todo], todo, lm, grads, projector, progress and rank == 0)
    _barrier(world)
    bad = store.bad_rows()
    if len(bad) and rank == 0:
        ids = [records[i].id for i in bad[:10]]
        log.warning("%s: %d examples had NaN/inf gradients and are excluded from scores: %s", cfg.out, len(bad), ids)
    return store


class _MarginDPOTask(DPOTask):
    """:class:`DPOTask` that keeps the margins [B] of its last ``losses`` call (detached).

    The ``margin`` extra comes from them: recovering ``beta m`` from the float32 loss as
    ``-log(expm1(loss))`` gives inf wherever ``-log sigmoid(beta m)`` underflows to 0 (``beta m`` above ~100).
    """

    last_margins: torch.Tensor | None = None

    def margins(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        m = super().margins(model, batch)
        self.last_margins = m.detach()
        return m


def _command() -> str:
    import sys

    return " ".join(["gradsift", *sys.argv[1:]]) if sys.argv and "gradsift" in sys.argv[0] else ""


def _fill(
    cfg: FeatureConfig,
    store: FeatureStore,
    records: list[Any],
    rows: np.ndarray,
    lm: LoadedModel,
    grads: LoraGradients,
    projector: Projector,
    progress: bool,
) -> None:
    tok = lm.tokenizer
    pad = tok.pad_token_id
    if cfg.kind == "pair":
        encoded_pairs, _ = encode_pairs(tok, records, cfg.max_length)
        lengths = [max(len(c), len(r)) * 2 for c, r in encoded_pairs]
        task: Any = _MarginDPOTask(beta=cfg.beta)
    else:
        encoded, _ = encode_examples(tok, records, cfg.max_length, response=cfg.response)
        lengths = [len(e) for e in encoded]
        task = SFTTask(reduction=cfg.reduction)
    bar = Progress(len(rows), f"features {Path(cfg.out).name}", "ex", enabled=progress)
    for idx in bucket_batches(lengths, cfg.batch_tokens, cfg.max_batch):
        if cfg.kind == "pair":
            items: list[Encoded] = [encoded_pairs[i][0] for i in idx] + [encoded_pairs[i][1] for i in idx]
            groups = pair_groups(len(idx), lm.device)
        else:
            items, groups = [encoded[i] for i in idx], None
        batch = {k: v.to(lm.device) for k, v in collate(items, pad).items()}
        out = grads.compute(batch, task, sink=projector, groups=groups)
        n_tok = (batch["labels"][:, 1:] != -100).sum(-1).cpu().numpy()
        b = len(idx)
        # An example with no loss token has no gradient, and a pair with no loss token on one side compares
        # nothing: mark them bad (NaN features and loss) rather than store plausible zero rows.
        empty = n_tok == 0 if cfg.kind != "pair" else (n_tok[:b] == 0) | (n_tok[b:] == 0)
        out.features[torch.from_numpy(empty).to(out.features.device)] = float("nan")
        losses = out.losses.double().cpu().numpy()
        losses[empty] = np.nan
        extras = {"loss": losses.astype(np.float32)}
        if cfg.kind == "pair":
            extras["tokens"] = (n_tok[:b] + n_tok[b:]).astype(np.float32)
            margins = cfg.beta * task.last_margins.double().cpu().numpy()
            margins[empty] = np.nan
            extras["margin"] = margins.astype(np.float32)
        else:
            extras["tokens"] = n_tok.astype(np.float32)
        store.write_rows(rows[idx], out.features.float().cpu().numpy(), extras)
        bar.update(len(idx))
    bar.close()
