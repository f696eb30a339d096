"""Feature-extraction speed: LESS's per-example loop vs gradsift vs plain LoRA training (gradsift issue 3).

One process, the same examples, the same LoRA weights, model loading excluded, one warm-up
iteration excluded from every timing:

(a) ``less``: LESS's gradient collection, re-implemented here as LESS runs it without trak's CUDA
    kernel (sources below): one forward and ``loss.backward()`` per example, the flattened ``p.grad``
    of the LoRA weights, and every 16 gradients a dense Rademacher projection to k = 8192 whose matrix
    is regenerated block by block from its seed on every call (trak's ``BasicProjector``).
(b) ``gradsift``: :func:`gradsift.gradients.extract.extract_features` with its default settings
    (factorized projector, length-bucketed batches, float16 store), end to end: LoRA adapter loading,
    tokenisation, gradients, projection and store writes. ``gradsift-engine`` is the same computation
    on pre-tokenised batches (:class:`LoraGradients` + :class:`FactorizedProjector` + ``bucket_batches``),
    timed piece by piece to show where the time goes.
(b') ``gradsift-dense``: ``extract_features`` with ``projector="dense"`` (k = 8192, LESS's projection).
(b_sparse) ``gradsift-adam-sparse``: LESS's Adam-preconditioned features (``optimizer=`` a checkpoint whose
    Adam moments come from two AdamW steps on the same LoRA), default projector: sparse JL, k = 8192, s = 4.
(b_dense) ``gradsift-adam-dense``: the same with LESS's dense Rademacher projection (the earlier default).
(c) ``train``: plain LoRA training steps (forward, backward, AdamW step) over the same length-bucketed
    batches, with gradsift's loss (output head on response tokens only): the throughput limit.

What (a) follows, read from the public sources:

- princeton-nlp/LESS ``less/data_selection/collect_grad_reps.py``: ``collect_grads`` with a batch-size-1
  DataLoader; ``obtain_gradients``: ``loss = model(**batch).loss; loss.backward()`` then
  ``torch.cat([p.grad.view(-1) for p in model.parameters() if p.grad is not None])``; ``model.zero_grad()``
  after each example; ``project_interval = 16``; ``_project``: ``torch.stack(full_grads).to(torch.float16)``
  then ``projector.project(grads, model_id=0)``; projectors built with ``seed=0``,
  ``proj_type=rademacher``, ``block_size=128``, ``max_batch_size=16``, ``dtype`` = the model's dtype;
  ``get_trak_projector`` falls back to ``BasicProjector`` when trak's ``fast_jl`` kernel is missing.
  ``get_info.py`` loads the model with ``from_pretrained`` (eval mode) and the LoRA weights trainable.
  The gradient type here is LESS's ``sgd`` (plain gradients, like gradsift's default features); its
  ``adam`` type adds two elementwise operations on the [P] vector per example.
- MadryLab/trak ``trak/projectors.py`` ``BasicProjector``: ``ceil(proj_dim / block_size)`` blocks, block
  ``i`` drawn from a generator seeded with ``seed + 1000 * i + 100000 * model_id`` into one reused
  [grad_dim, block_size] buffer (``bernoulli_(p=0.5)``, then ``* 2 - 1``) on every ``project`` call;
  ``sketch[:, st:ed] = grads.type(dtype) @ block``; the result is cast back to the input dtype and is
  not scaled (LESS normalises the rows afterwards).

Checks (outside the timings): LESS's per-example gradients equal gradsift's flattened gradients (the
same numbers, so any difference below comes from the projections), and the cosine Gram matrices of
(a), (b) and (b') each match the exact Gram of the full gradients within the Johnson-Lindenstrauss
error expected of their dimension. The projection matrices of (a) and (b') differ (trak's generator
scheme vs gradsift's), so features are never compared row by row.

Run: ``.venv/bin/python bench/features.py [--device cpu|cuda] [--n N] [--out FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import math
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from gradsift.data.load import load_examples
from gradsift.data.records import Example
from gradsift.data.tokenize import Encoded, bucket_batches, collate, encode_examples
from gradsift.gradients.extract import FeatureConfig, extract_features
from gradsift.gradients.grads import LayerFactors, LoraGradients
from gradsift.gradients.projection import DenseProjector, FactorizedProjector, SparseProjector
from gradsift.machine import machine_info
from gradsift.model.load import LoadedModel, ModelSettings, load_model
from gradsift.model.lora import LoraSettings, attach_lora, load_adapter
from gradsift.model.task import SFTTask
from gradsift.training.warmup import save_optimizer_state

DATA = "/work/shared/data/alpagasus/data/random/random_9k.json.gz"
LESS_INTERVAL = 16
"""LESS's ``project_interval``: gradients projected together."""
LESS_BLOCK = 128
"""LESS's ``block_size`` for trak's projector: columns of the matrix generated at once."""
LESS_SEED = 0
CHECK_ROWS = 64
"""Examples in the Gram-matrix agreement check (the first ones)."""
GRAD_CHECK_ROWS = 4
"""Examples whose LESS gradient is compared entry by entry with gradsift's."""
WARM_ROWS = 2
"""Examples in the untimed warm-up batch of each gradsift and training phase (LESS: one example)."""


@dataclass
class Phase:
    """One timed run.

    Attributes:
        name: Short label (``less``, ``gradsift``, ...).
        what: One line saying what ran.
        examples: Examples processed in the timed part.
        seconds: Wall-clock seconds of the timed part.
        cpu_seconds: Process CPU time (user + system) over the timed part.
        rss_start: Resident memory when the timed part began (bytes).
        rss_peak: Highest resident memory sampled during it (bytes).
        cuda_peak: ``torch.cuda.max_memory_allocated`` during it (bytes; None on CPU).
        load: 1-minute load average at the start and at the end.
        parts: Seconds spent in named pieces of the timed part.
    """

    name: str
    what: str
    examples: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_start: int = 0
    rss_peak: int = 0
    cuda_peak: int | None = None
    load: tuple[float, float] = (0.0, 0.0)
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Examples per wall-clock second."""
        return self.examples / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_rate(self) -> float:
        """Examples per CPU second: less sensitive to waiting for a core on a shared machine."""
        return self.examples / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only), so a phase's RSS growth starts from live memory
    rather than from what earlier phases left in the allocator."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def measured(phase: Phase, device: torch.device, examples: int, interval: float = 0.01) -> Iterator[None]:
    """Time a block (after a device sync) over `examples` examples and sample its resident memory from a
    background thread; print the phase's line when it ends.

    RSS is sampled because torch's CPU allocations bypass ``tracemalloc``; on CUDA the allocator's own
    peak is recorded as well.
    """
    phase.examples = examples
    proc = psutil.Process()
    gc.collect()
    release_free_heap()
    stop = threading.Event()
    peak = [proc.memory_info().rss]

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], proc.memory_info().rss)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    phase.rss_start = peak[0]
    load0 = os.getloadavg()[0]
    cpu0 = sum(proc.cpu_times()[:2])
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield
        _sync(device)
    finally:
        phase.seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        phase.cpu_seconds = sum(proc.cpu_times()[:2]) - cpu0
        phase.rss_peak = max(peak[0], proc.memory_info().rss)
        phase.load = (load0, os.getloadavg()[0])
        if device.type == "cuda":
            phase.cuda_peak = torch.cuda.max_memory_allocated(device)
        # printed as each phase ends: a run cut short (a GPU lease's limit) still leaves its timings in the log
        print(
            f"  {phase.name}: {phase.examples} examples in {phase.seconds:.1f} s ({phase.rate:.3f} ex/s, "
            f"{phase.cpu_seconds:.1f} CPU-s), RSS peak {mib(phase.rss_peak)} MiB, CUDA {mib(phase.cuda_peak)} MiB",
            flush=True,
        )


class Stopwatch:
    """Accumulates seconds per named piece; syncs the device at both ends so CUDA pieces are real."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        _sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------------------------- (a) LESS


class TrakBasicProjector:
    """trak's ``BasicProjector`` (Rademacher), as LESS constructs it: see the module docstring.

    Args:
        grad_dim: P, the length of a flattened gradient.
        proj_dim: k.
        seed: Base seed (LESS: 0).
        device: Where the block matrix lives and is generated.
        dtype: The block matrix's dtype (LESS: the model's).
        block_size: Columns per generated block (LESS: 128).
        model_id: Checkpoint id mixed into the seeds (LESS: 0).
    """

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        block_size: int = LESS_BLOCK,
        model_id: int = 0,
    ) -> None:
        self.proj_dim, self.device, self.dtype = proj_dim, device, dtype
        self.block_size = min(proj_dim, block_size)
        self.num_blocks = math.ceil(proj_dim / self.block_size)
        self.proj_matrix = torch.empty(grad_dim, self.block_size, dtype=dtype, device=device)
        self.generator = torch.Generator(device=device)
        self.generator_states = []
        for i in range(self.num_blocks):
            self.generator.manual_seed(seed + int(1e3) * i + int(1e5) * model_id)
            self.generator_states.append(self.generator.get_state())
        self._generate(self.generator_states[0])

    def _generate(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
        self.proj_matrix.bernoulli_(p=0.5, generator=self.generator)
        self.proj_matrix *= 2.0
        self.proj_matrix -= 1.0

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """[B, P] -> [B, k] unscaled, in ``grads.dtype``."""
        sketch = torch.zeros(grads.size(0), self.proj_dim, dtype=self.dtype, device=self.device)
        if self.num_blocks == 1:
            torch.matmul(grads.type(self.dtype), self.proj_matrix, out=sketch)
        else:
            for ind in range(self.num_blocks):
                self._generate(self.generator_states[ind])
                st, ed = ind * self.block_size, min((ind + 1) * self.block_size, self.proj_dim)
                sketch[:, st:ed] = grads.type(self.dtype) @ self.proj_matrix[:, : ed - st]
        return sketch.type(grads.dtype)


def less_batch(item: Encoded, device: torch.device) -> dict[str, torch.Tensor]:
    """One example as LESS's batch-size-1 DataLoader yields it (no padding)."""
    ids = torch.tensor([item.input_ids], device=device)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.tensor([item.labels], device=device),
    }


def less_gradient(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """LESS's ``obtain_gradients``: [P] flattened LoRA gradient of one example's mean token loss."""
    loss = model(**batch).loss
    loss.backward()
    return torch.cat([p.grad.view(-1) for p in model.parameters() if p.grad is not None])


def run_less(model: Any, items: Sequence[Encoded], k: int, device: torch.device, phase: Phase) -> torch.Tensor:
    """(a) LESS's ``collect_grads`` loop; returns the projected features [N, k] (float16, unscaled)."""
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype = next(model.parameters()).dtype
    less_gradient(model, less_batch(items[0], device))  # warm-up
    model.zero_grad()
    watch = Stopwatch(device)
    projected: list[torch.Tensor] = []
    full_grads: list[torch.Tensor] = []

    def project() -> None:
        stacked = torch.stack(full_grads).to(torch.float16)
        projected.append(projector.project(stacked).cpu())
        full_grads.clear()

    with measured(phase, device, len(items)):
        with watch("projection"):  # collect_grads builds its projector (and the first block) on every call
            projector = TrakBasicProjector(num_params, k, LESS_SEED, device, dtype)
        for count, item in enumerate(items, start=1):
            with watch("gradients"):
                full_grads.append(less_gradient(model, less_batch(item, device)))
                model.zero_grad()
            if count % LESS_INTERVAL == 0:
                with watch("projection"):
                    project()
        if full_grads:
            with watch("projection"):
                project()
    phase.examples = len(items)
    phase.parts = watch.totals
    return torch.cat(projected)


# ----------------------------------------------------------------------------------------- (b) gradsift


class TimedSink:
    """A projector wrapper that adds the time of each ``project`` call to a stopwatch."""

    def __init__(self, inner: FactorizedProjector, watch: Stopwatch) -> None:
        self.inner, self.watch = inner, watch

    @property
    def dim(self) -> int:
        return self.inner.dim

    def project(self, out: torch.Tensor, factors: LayerFactors) -> None:
        with self.watch("projection hooks"):
            self.inner.project(out, factors)


class TimedTask:
    """A task wrapper that times the forward pass (``losses``)."""

    def __init__(self, inner: SFTTask, watch: Stopwatch) -> None:
        self.inner, self.watch = inner, watch

    def losses(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.watch("forward"):
            return self.inner.losses(model, batch)


def run_gradsift(
    make_loaded: Callable[[], LoadedModel],
    records: Sequence[Example],
    cfg: FeatureConfig,
    warm_cfg: FeatureConfig,
    warm_records: Sequence[Example],
    phase: Phase,
) -> np.ndarray:
    """(b)/(b') ``extract_features`` end to end on a fresh base-model copy; returns the stored rows [N, dim]."""
    extract_features(warm_cfg, records=list(warm_records), loaded=make_loaded(), progress=False)
    loaded = make_loaded()
    with measured(phase, loaded.device, len(records)):
        store = extract_features(cfg, records=list(records), loaded=loaded, progress=False)
    phase.examples = len(records)
    features = store.read().features.astype(np.float32)
    store.close()
    return features


def run_engine(
    model: Any, items: Sequence[Encoded], batches: Sequence[list[int]], pad_id: int, device: torch.device, phase: Phase
) -> torch.Tensor:
    """gradsift's engine on pre-tokenised bucketed batches, timed piece by piece; returns [N, dim]."""
    grads = LoraGradients(model)
    watch = Stopwatch(device)
    projector = TimedSink(FactorizedProjector([layer.shape for layer in grads.layers]), watch)
    task = TimedTask(SFTTask(), watch)

    def batch_of(idx: list[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in collate([items[i] for i in idx], pad_id).items()}

    grads.compute(batch_of(list(range(WARM_ROWS))), SFTTask(), sink=projector.inner)  # warm-up
    features = torch.empty(len(items), projector.dim)
    with measured(phase, device, len(items)):
        for idx in batches:
            with watch("total"):
                out = grads.compute(batch_of(idx), task, sink=projector)
                features[idx] = out.features.float().cpu()
    phase.examples = len(items)
    total = watch.totals.pop("total")
    phase.parts = {
        "forward": watch.totals["forward"],
        "backward (excluding projection hooks)": total - watch.totals["forward"] - watch.totals["projection hooks"],
        "projection hooks": watch.totals["projection hooks"],
    }
    return features


# -------------------------------------------------------------------------------------------- (c) train


def run_train(
    model: Any, items: Sequence[Encoded], batches: Sequence[list[int]], pad_id: int, device: torch.device, phase: Phase
) -> None:
    """(c) LoRA training steps (forward, backward, AdamW step) over the same batches."""
    model.train()
    task = SFTTask()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)

    def step(idx: list[int]) -> None:
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], pad_id).items()}
        task.losses(model, batch).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(list(range(WARM_ROWS)))  # warm-up
    with measured(phase, device, len(items)):
        for idx in batches:
            step(idx)
    phase.examples = len(items)


# ------------------------------------------------------------------------------------------------ checks


def adam_steps(
    model: Any, items: Sequence[Encoded], batches: Sequence[list[int]], pad_id: int, device: torch.device, out: Path
) -> None:
    """Two AdamW steps on the LoRA, then its moments saved into `out` as a warm-up checkpoint holds them."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    for idx in batches[:2]:
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], pad_id).items()}
        opt.zero_grad()
        SFTTask().losses(model, batch).mean().backward()
        opt.step()
    save_optimizer_state(model, opt, out)


def exact_gradients(model: Any, items: Sequence[Encoded], pad_id: int, device: torch.device) -> torch.Tensor:
    """Full flattened per-example gradients [n, P] (float32, CPU) from gradsift's engine."""
    grads = LoraGradients(model)
    rows = torch.empty(len(items), grads.num_params)
    for idx in bucket_batches([len(e) for e in items], 2048, 16):
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], pad_id).items()}
        rows[idx] = grads.compute(batch, SFTTask()).features.float().cpu()
    return rows


def cosine_gram(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    x = x / x.norm(dim=1, keepdim=True)
    return x @ x.T


def gram_error(approx: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(RMS, max) of the off-diagonal differences of two cosine Gram matrices."""
    off = ~torch.eye(exact.shape[0], dtype=torch.bool)
    diff = (approx - exact)[off]
    return float(diff.pow(2).mean().sqrt()), float(diff.abs().max())


# ------------------------------------------------------------------------------------------------ report


def machine(device: torch.device) -> list[str]:
    info = machine_info()
    lines = [
        f"- Platform: {info['platform']}, Python {info['python']}",
        f"- CPU: {info['processor']}, {info['cpus']} logical cores, {info.get('memory', 'unknown')} RAM; "
        f"torch threads: {info['torch_threads']}",
        f"- torch {info['torch']}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    return lines


def distribution(values: Sequence[int]) -> str:
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return (
        f"min {q[0]:.0f}, p25 {q[1]:.0f}, median {q[2]:.0f}, p75 {q[3]:.0f}, max {q[4]:.0f}, "
        f"mean {statistics.fmean(values):.1f}"
    )


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def verdict(value: float, goal: float) -> str:
    return f"goal >= {goal:g}: {'met' if value >= goal else 'NOT met'}"


def report(
    args: argparse.Namespace,
    device: torch.device,
    info: dict[str, Any],
    phases: dict[str, Phase],
    checks: list[str],
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> str:
    a, b, c = phases["less"], phases["gradsift"], phases["train"]
    engine, dense = phases["gradsift-engine"], phases["gradsift-dense"]
    sparse_adam, dense_adam = phases["adam-sparse"], phases["adam-dense"]
    goals = [("b/a", b, a, 3.0 if device.type == "cpu" else 10.0), ("b_sparse/a", sparse_adam, a, 3.0)]
    if device.type == "cpu":
        goals += [("b/c", b, c, 0.8), ("b_sparse/c", sparse_adam, c, 0.8)]
    others = [
        ("b'/a", dense, a),
        ("b_dense/a", dense_adam, a),
        ("b_dense/c", dense_adam, c),
        ("b_sparse/b_dense", sparse_adam, dense_adam),
        ("engine/a", engine, a),
        ("engine/c", engine, c),
    ]
    table = [
        "| phase | what | examples | seconds | examples/s | examples/CPU-s | cores busy | load (1 min) start -> end "
        "| peak RSS MiB (growth) | peak CUDA MiB |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in phases.values():
        table.append(
            f"| {p.name} | {p.what} | {p.examples} | {p.seconds:.1f} | {p.rate:.3f} | {p.cpu_rate:.3f} | "
            f"{p.cpu_seconds / p.seconds:.2f} | {p.load[0]:.2f} -> {p.load[1]:.2f} | "
            f"{mib(p.rss_peak)} (+{mib(p.rss_peak - p.rss_start)}) | {mib(p.cuda_peak)} |"
        )
    calls = math.ceil(a.examples / LESS_INTERVAL)
    engine_rest = engine.seconds - sum(engine.parts.values())
    lines = [
        f"# Feature-extraction speed ({device.type})",
        "",
        f"Command: `{info['command']}`",
        f"Date: {info['date']}",
        "",
        "## Machine",
        *machine(device),
        f"- Load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load[0])}, "
        f"after: {'/'.join(f'{x:.2f}' for x in load[1])}. On a shared machine the wall-clock rates "
        "depend on the other jobs; 'cores busy' (this process's CPU time over wall time) falls below the "
        "thread count when it waited for a core, and the examples per CPU-second are less sensitive to that.",
        "",
        "## Setup",
        f"- Data: the first {info['n']} valid examples of `{info['data']}` (records with an empty response "
        f"skipped by `on_invalid='skip'`{info['dropped']}), tokenised with the built-in model's "
        f"tokenizer at max_length {args.max_length}.",
        f"- Tokens per example: {distribution(info['lengths'])}; loss (response) tokens: "
        f"{distribution(info['loss_tokens'])}; truncated: {info['truncated']}.",
        f"- Model: {info['model']} ({info['dtype']}) on {device}; LoRA q_proj,v_proj r=8 alpha=16 with "
        "Gaussian weights (std 0.02, so A and B both have gradients, as at a LESS warm-up checkpoint): "
        f"P = {info['num_params']:,} parameters in {info['num_matrices']} matrices.",
        f"- Batches of every phase but (a): gradsift's defaults, `bucket_batches(lengths, "
        f"{FeatureConfig.batch_tokens}, {FeatureConfig.max_batch})` -> sizes "
        f"{info['batch_sizes']}, {info['padded']:,} padded tokens for {sum(info['lengths']):,} real ones "
        f"({1 - sum(info['lengths']) / info['padded']:.0%} padding; (a) runs unpadded). "
        f"Untimed warm-up before each phase: one example (a), a batch of {WARM_ROWS} "
        "(the others).",
        f"- Projections: (a), (b') and (b_dense) Rademacher k = {args.k}; (b_sparse) sparse JL k = {args.k}, s = 4; "
        f"(b) factorized 16 x 16 per LoRA matrix (rank side kept) = {info['factorized_dim']:,} features.",
        "- Adam state of (b_sparse) and (b_dense): the moments of two AdamW steps (lr 1e-4) on the first two "
        "batches, saved beside the adapter as a warm-up checkpoint saves them; LESS's eps-inside form.",
        "",
        "## Results",
        *table,
        "",
        "Ratios of examples/s (and of examples per CPU-second):",
        "",
        *[
            f"- **{name} = {x.rate / y.rate:.2f}** ({x.cpu_rate / y.cpu_rate:.2f}); {verdict(x.rate / y.rate, goal)}"
            for name, x, y, goal in goals
        ],
        *[f"- {name} = {x.rate / y.rate:.2f} ({x.cpu_rate / y.cpu_rate:.2f})" for name, x, y in others],
        "",
        "## Where the time goes",
        f"- (a) LESS: gradients {a.parts['gradients']:.1f} s ({a.parts['gradients'] / a.seconds:.0%}), "
        f"projection {a.parts['projection']:.1f} s ({a.parts['projection'] / a.seconds:.0%}) in {calls} calls "
        f"(each regenerates the whole {info['num_params']:,} x {args.k} matrix) and the projector's construction. "
        f"Its gradients alone run at {a.examples / a.parts['gradients']:.3f} examples/s: (b) is "
        f"{b.rate / (a.examples / a.parts['gradients']):.2f}x that, so b/a is bounded by what the projection costs "
        "LESS unless gradsift's forward and backward get cheaper than LESS's per-example ones.",
        "- gradsift engine: "
        + ", ".join(f"{k} {v:.1f} s ({v / engine.seconds:.0%})" for k, v in engine.parts.items())
        + f", collation and copies {engine_rest:.1f} s"
        + (
            " (the engine synchronises the GPU around every piece, so its total is an upper bound)."
            if device.type == "cuda"
            else "."
        ),
        f"- (b) end to end vs engine: {b.seconds - engine.seconds:+.1f} s (adapter loading, tokenisation and "
        "store writes, plus noise).",
        "",
        "## Agreement (not timed)",
        *checks,
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--n", type=int, default=None, help="examples (default 64 on CPU, 1024 on CUDA)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--k", type=int, default=8192, help="dense projection size of (a) and (b')")
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", default=None, help="results file (default bench/results/features-<device>.md)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 short examples, k=256, out under bench/logs")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.max_length, args.k = args.n or 4, 32, 256
    args.n = args.n or (64 if args.device == "cpu" else 1024)
    if args.n < 2:
        p.error("--n must be at least 2")
    if args.out is None:
        here = Path(__file__).resolve().parent
        args.out = str(
            here / "logs" / f"features-{args.device}-quick.md"
            if args.quick
            else here / "results" / f"features-{args.device}.md"
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    info: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "data": args.data,
    }
    base = load_model(ModelSettings(model="builtin", device=args.device))
    device, tok = base.device, base.tokenizer
    examples = load_examples(args.data, on_invalid="skip")
    # the first N whose (truncated) encoding keeps a response token: LESS's mean loss needs one
    records, items, dropped = [], [], 0
    for ex in examples:
        [enc], _ = encode_examples(tok, [ex], args.max_length)
        if enc.n_loss_tokens == 0:
            dropped += 1
            continue
        records.append(ex)
        items.append(enc)
        if len(records) == args.n:
            break
    if len(records) < args.n:
        raise SystemExit(f"{args.data}: only {len(records)} usable examples, --n {args.n} asked")
    lengths = [len(e) for e in items]
    batches = bucket_batches(lengths, FeatureConfig.batch_tokens, FeatureConfig.max_batch)
    info.update(
        n=args.n,
        dropped=f", {dropped} more without a response token after truncation" if dropped else "",
        lengths=lengths,
        loss_tokens=[e.n_loss_tokens for e in items],
        truncated=sum(e.truncated for e in items),
        model=base.source,
        dtype=str(base.dtype).replace("torch.", ""),
        batch_sizes=[len(b) for b in batches],
        padded=sum(len(b) * max(lengths[i] for i in b) for b in batches),
    )

    def fresh_base() -> LoadedModel:
        return LoadedModel(copy.deepcopy(base.model), tok, base.source, base.fingerprint, device, base.dtype)

    def with_adapter() -> Any:
        model = load_adapter(copy.deepcopy(base.model), adapter_dir, trainable=True).to(device)
        model.eval()
        return model

    phases = {
        "less": Phase("(a) less", "LESS loop: per-example backward, trak BasicProjector every 16"),
        "gradsift": Phase("(b) gradsift", "`extract_features`, default settings, end to end"),
        "gradsift-engine": Phase("(b) engine", "LoraGradients + FactorizedProjector, pre-tokenised"),
        "gradsift-dense": Phase("(b') gradsift dense", f"`extract_features`, projector dense k={args.k}"),
        "adam-sparse": Phase("(b_sparse) Adam sparse", f"Adam-preconditioned, sparse JL k={args.k} s=4 (default)"),
        "adam-dense": Phase("(b_dense) Adam dense", f"Adam-preconditioned, dense Rademacher k={args.k}"),
        "train": Phase("(c) train", "LoRA training steps (AdamW), same batches"),
    }
    with tempfile.TemporaryDirectory(prefix="gradsift-bench-") as tmp:
        adapter_dir = str(Path(tmp) / "adapter")
        lora = attach_lora(copy.deepcopy(base.model), LoraSettings(), seed=0, init="gaussian")
        lora.save_pretrained(adapter_dir)
        del lora
        adam_steps(with_adapter(), items, batches, tok.pad_token_id, device, Path(adapter_dir))

        def config(name: str, **kw: Any) -> FeatureConfig:
            return FeatureConfig(
                data=args.data,
                out=str(Path(tmp) / name),
                adapter=adapter_dir,
                device=args.device,
                max_length=args.max_length,
                **kw,
            )

        warm = records[:WARM_ROWS]
        model = with_adapter()
        print(f"(a) LESS loop on {args.n} examples ...", flush=True)
        feats_a = run_less(model, items, args.k, device, phases["less"])
        info["num_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        check_n = min(args.n, CHECK_ROWS)
        exact = exact_gradients(model, items[:check_n], tok.pad_token_id, device)
        less_rows = []
        for item in items[:GRAD_CHECK_ROWS]:
            less_rows.append(less_gradient(model, less_batch(item, device)).float().cpu())
            model.zero_grad()
        del model
        print("(b) gradsift extract_features ...", flush=True)
        feats_b = run_gradsift(fresh_base, records, config("b"), config("b-warm"), warm, phases["gradsift"])
        print("(b) gradsift engine ...", flush=True)
        model = with_adapter()
        info["num_matrices"] = len(LoraGradients(model).layers)
        feats_engine = run_engine(model, items, batches, tok.pad_token_id, device, phases["gradsift-engine"])
        del model
        print("(b') gradsift dense ...", flush=True)
        dense_kw = {"projector": "dense", "dim": args.k}
        feats_dense = run_gradsift(
            fresh_base, records, config("d", **dense_kw), config("d-warm", **dense_kw), warm, phases["gradsift-dense"]
        )
        adam_feats = {}
        for name, kw in (("adam-sparse", {}), ("adam-dense", {"projector": "dense"})):
            print(f"({name}) gradsift Adam-preconditioned ...", flush=True)
            adam_kw = {"optimizer": adapter_dir, "dim": args.k, **kw}
            adam_feats[name] = run_gradsift(
                fresh_base, records, config(name, **adam_kw), config(f"{name}-warm", **adam_kw), warm, phases[name]
            )
        print("(c) LoRA training steps ...", flush=True)
        model = with_adapter()
        run_train(model, items, batches, tok.pad_token_id, device, phases["train"])
        del model
    info["factorized_dim"] = feats_b.shape[1]
    load_after = os.getloadavg()

    less_stack = torch.stack(less_rows)
    rel = (less_stack - exact[:GRAD_CHECK_ROWS]).norm(dim=1) / less_stack.norm(dim=1)
    truth = cosine_gram(exact)
    checks = [
        f"- Gradients: LESS's per-example `p.grad` vs gradsift's flattened per-example gradients (padded "
        f"batches), first {GRAD_CHECK_ROWS} examples: max relative difference {float(rel.max()):.1e}.",
        f"- Cosine Gram matrices of the first {check_n} examples vs the exact one from the full gradients "
        "(off-diagonal RMS / max difference; a random k-dimensional projection estimates a cosine c with "
        f"standard deviation about (1 - c^2) / sqrt(k), at most {1 / math.sqrt(args.k):.3f} at k = {args.k}):",
    ]
    named = {
        "(a) LESS, trak BasicProjector": feats_a[:check_n].float(),
        "(b') gradsift dense": torch.from_numpy(feats_dense[:check_n]),
        "(b) gradsift factorized (store, float16)": torch.from_numpy(feats_b[:check_n]),
        "(b) engine (float32)": feats_engine[:check_n],
    }
    for name, rows in named.items():
        rms, worst = gram_error(cosine_gram(rows), truth)
        checks.append(f"  - {name}: RMS {rms:.4f}, max {worst:.4f}")
    rms, worst = gram_error(
        cosine_gram(named["(a) LESS, trak BasicProjector"]), cosine_gram(named["(b') gradsift dense"])
    )
    checks.append(f"  - (a) vs (b') directly: RMS {rms:.4f}, max {worst:.4f} (two independent matrices)")
    rms, worst = gram_error(
        cosine_gram(named["(b) engine (float32)"]), cosine_gram(named["(b) gradsift factorized (store, float16)"])
    )
    checks.append(f"  - (b) engine vs (b) end to end (same matrices): RMS {rms:.1e}, max {worst:.1e}")
    checks.append(
        f"- Sparse vs dense JL at equal k = {args.k}, on the exact gradients of the same {check_n} examples "
        "(cosine Gram vs the exact one; several projection seeds, so the spread shows):"
    )
    for seed in range(3):
        for name, proj in (
            ("sparse (s = 4)", SparseProjector(exact.shape[1], k=args.k, seed=seed)),
            ("dense Rademacher", DenseProjector(exact.shape[1], k=args.k, seed=seed)),
        ):
            rms, worst = gram_error(cosine_gram(proj.project_flat(exact.cpu().double()).float()), truth)
            checks.append(f"  - {name}, seed {seed}: RMS {rms:.4f}, max {worst:.4f}")
    sparse_adam = torch.from_numpy(adam_feats["adam-sparse"][:check_n])
    dense_adam = torch.from_numpy(adam_feats["adam-dense"][:check_n])
    rms, worst = gram_error(cosine_gram(sparse_adam), cosine_gram(dense_adam))
    checks.append(
        f"  - Adam-preconditioned features, (b_sparse) vs (b_dense) cosine Grams: RMS {rms:.4f}, max {worst:.4f} "
        "(two independent projections of the same update directions)"
    )

    text = report(args, device, info, phases, checks, (load_before, load_after))
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written {out}")


if __name__ == "__main__":
    main()
