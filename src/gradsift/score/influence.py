"""Chunked candidate x target feature products shared by the gradient scorers (methods.md sections 1, 2, 4).

A pool of N candidates against M targets gives an N x M influence matrix that need not fit in memory
(200,000 x 1,000 in float32 is 800 MB), and the candidate features themselves usually live in float16
memmaps. These helpers walk the pool in row blocks: each block is read, cast to float32, multiplied with
the (small, in-memory) target features and handed to the caller, who reduces it before the next one.

Bad rows. A candidate row counts as bad when the caller's ``bad`` mask says so or when its features are
not all finite (detected from the squared row norm, so a row whose squared norm overflows float32 counts
too: such a gradient is unusable either way). Bad rows come out of every block as all-NaN, so every
reduction downstream keeps them NaN and the scorers can report them and give them ``-inf``.
Targets are few and every score depends on all of them, so non-finite target features raise instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Working memory aimed at per block (candidate rows in float32 plus two [rows, M] float32 blocks).
CHUNK_BYTES = 64 * 2**20


def rows_of(features: Any, name: str) -> Any:
    """Check that `features` is a 2-D array-like with rows, returning it unchanged when it has a shape.

    Arrays and memmaps are returned as they are (no copy, no read); anything else goes through ``np.asarray``.

    Raises:
        ValueError: If `features` is not 2-D or has no rows.
    """
    if not hasattr(features, "shape"):
        features = np.asarray(features)
    if len(features.shape) != 2:
        raise ValueError(f"{name} must be a 2-D [rows, k] array, got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(features.shape)})")
    return features


def bad_mask(bad: Any, n_rows: int) -> np.ndarray:
    """Validate a caller's bad-row mask.

    Args:
        bad: None (no row known bad) or a boolean array of shape [n_rows].
        n_rows: Number of candidate rows N.

    Returns:
        A boolean array [N] (a fresh copy).

    Raises:
        ValueError: If `bad` is not boolean or has the wrong length (an index list would be misread as a mask).
    """
    if bad is None:
        return np.zeros(n_rows, dtype=bool)
    mask = np.asarray(bad)
    if mask.dtype != np.bool_:
        raise ValueError(f"bad must be a boolean mask of shape [{n_rows}], got dtype {mask.dtype}")
    if mask.shape != (n_rows,):
        raise ValueError(f"bad must have shape [{n_rows}] (one flag per candidate), got {mask.shape}")
    return mask.copy()


def checkpoint_weights(weights: Sequence[float] | None, n_checkpoints: int) -> np.ndarray:
    """Validate per-checkpoint weights (LESS: each epoch's mean learning rate, methods.md section 1).

    Args:
        weights: One non-negative finite weight per checkpoint, not all zero; None gives every checkpoint 1.
        n_checkpoints: Number of checkpoints C.

    Returns:
        float64 array [C].

    Raises:
        ValueError: On a length mismatch, a negative or non-finite weight, or all weights zero.
    """
    if n_checkpoints < 1:
        raise ValueError("at least one checkpoint of features is needed")
    if weights is None:
        return np.ones(n_checkpoints)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_checkpoints,):
        raise ValueError(f"need one weight per checkpoint ({n_checkpoints}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"checkpoint weights must be finite and >= 0, got {w.tolist()}")
    if not np.any(w > 0):
        raise ValueError("checkpoint weights are all zero: every score would be 0")
    return w


def prepare_targets(targets: Any, normalize: bool, name: str = "targets") -> np.ndarray:
    """Load target features into memory as float32, scaled to unit rows for cosine scoring.

    Args:
        targets: Target features [M, k] (array or memmap, any float dtype).
        normalize: Scale each row to unit L2 norm; an all-zero row stays zero (its cosine with anything is 0).
        name: Name used in error messages.

    Returns:
        float32 array [M, k].

    Raises:
        ValueError: If the features are not 2-D or contain NaN/inf.
    """
    t = np.array(rows_of(targets, name), dtype=np.float32)
    sq = np.einsum("ij,ij->i", t, t)
    if not np.all(np.isfinite(sq)):
        rows = np.flatnonzero(~np.isfinite(sq))[:10].tolist()
        raise ValueError(f"{name} have non-finite features in rows {rows}: every score would be NaN")
    if normalize:
        t *= inverse_norms(sq)[:, None]
    return t


def inverse_norms(sq_norms: np.ndarray) -> np.ndarray:
    """1 / sqrt(squared norms), with 0 for zero rows so their cosines are 0 rather than NaN."""
    norms = np.sqrt(sq_norms)
    out = np.zeros_like(norms)
    np.divide(1.0, norms, out=out, where=norms > 0)
    return out


def default_chunk_rows(k: int, m: int) -> int:
    """Rows per block so that a block's float32 buffers take about `CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // (4 * (k + 2 * m)))


def _block(cand: Any, start: int, stop: int, targets32: np.ndarray, normalize: bool, bad: np.ndarray) -> np.ndarray:
    """Influence block [stop-start, M] float32 of candidate rows start:stop against prepared targets."""
    x = np.asarray(cand[start:stop], dtype=np.float32)
    # Non-finite rows are expected input: they are flagged below and reported by the scorers, not warned about.
    with np.errstate(invalid="ignore", over="ignore"):
        sq = np.einsum("ij,ij->i", x, x)
        block = x @ targets32.T
        if normalize:
            # Scale the product rather than x: for float32 input x may be a view of the caller's array.
            block *= inverse_norms(sq)[:, None]
    block[~np.isfinite(sq) | bad[start:stop]] = np.nan
    return block


def influence_matrix_chunks(
    cand: Any, targets: Any, normalize: bool, chunk_rows: int | None = None, bad: Any = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Walk the influence matrix of one checkpoint in row blocks.

    Block entries are ``<g(z_i), g(v_j)>`` (raw) or ``cos(g(z_i), g(v_j))`` (``normalize=True``; methods.md
    section 1). Candidate rows with a zero feature vector get cosine 0.

    Args:
        cand: Candidate features [N, k]: numpy array or memmap, float16/32/64; read one block at a time.
        targets: Target features [M, k]; loaded into memory once.
        normalize: Cosine (True) or raw inner product (False).
        chunk_rows: Candidate rows per block; None picks about 64 MB of float32 buffers per block.
        bad: Optional boolean mask [N] of rows to exclude.

    Returns:
        An iterator of ``(start, block)`` with ``block`` float32 [n, M] for candidate rows ``start:start+n``;
        bad rows (masked or non-finite) are all-NaN. Inputs are checked when this is called, not when iterated.

    Raises:
        ValueError: On shape mismatches, a bad mask that is not boolean [N], non-finite targets, or
            ``chunk_rows < 1``.
    """
    return weighted_influence_chunks([cand], [targets], None, normalize, chunk_rows, bad)


def weighted_influence_chunks(
    cands: Sequence[Any],
    targets: Sequence[Any],
    weights: Sequence[float] | None,
    normalize: bool,
    chunk_rows: int | None = None,
    bad: Any = None,
    normalize_targets: bool | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Walk ``A = sum_c w_c * influence_c`` in row blocks, summed over checkpoints (methods.md sections 1, 4).

    Each block reads the same candidate rows from every checkpoint before moving on, so only one block per
    checkpoint is ever in memory.

    Args:
        cands: Per checkpoint, candidate features [N, k_c] (same N, same row order, in every checkpoint).
        targets: Per checkpoint, target features [M, k_c] (same M targets in every checkpoint).
        weights: Per checkpoint weight w_c (LESS: the epoch's mean learning rate); None weighs all 1.
        normalize: Cosine (True) or raw inner product (False) within each checkpoint.
        chunk_rows: Candidate rows per block; None picks about 64 MB of float32 buffers per block.
        bad: Optional boolean mask [N] of rows to exclude.
        normalize_targets: Scale the target rows to unit norm; None: as `normalize`. False with
            ``normalize=True`` divides by the candidate norms only, for targets the caller has scaled itself
            (PRISM's per-target terms of a cosine score, `gradsift.score.prism`).

    Returns:
        An iterator of ``(start, block)`` with ``block`` float32 [n, M]; rows bad in any checkpoint are all-NaN.
        Inputs are checked when this is called, not when iterated.

    Raises:
        ValueError: On mismatched checkpoints or shapes, bad weights or mask, non-finite targets, or
            ``chunk_rows < 1``.
    """
    plan = _Plan.build(cands, targets, weights, normalize, chunk_rows, bad, normalize_targets)
    return plan.blocks()


@dataclass(frozen=True)
class _Plan:
    """Validated checkpoints, ready to be walked block by block."""

    cands: list[Any]
    targets32: list[np.ndarray]
    weights: np.ndarray
    normalize: bool
    chunk_rows: int
    bad: np.ndarray

    @classmethod
    def build(
        cls,
        cands: Sequence[Any],
        targets: Sequence[Any],
        weights: Sequence[float] | None,
        normalize: bool,
        chunk_rows: int | None,
        bad: Any,
        normalize_targets: bool | None = None,
    ) -> _Plan:
        if len(cands) != len(targets):
            raise ValueError(f"got candidate features for {len(cands)} checkpoints but targets for {len(targets)}")
        w = checkpoint_weights(weights, len(cands))
        cands = [rows_of(c, f"candidate features (checkpoint {i})") for i, c in enumerate(cands)]
        unit = normalize if normalize_targets is None else normalize_targets
        targets32 = [prepare_targets(t, unit, f"target features (checkpoint {i})") for i, t in enumerate(targets)]
        n, m = cands[0].shape[0], targets32[0].shape[0]
        for i, (c, t32) in enumerate(zip(cands, targets32, strict=True)):
            if c.shape[0] != n:
                raise ValueError(f"checkpoint {i} has {c.shape[0]} candidate rows, checkpoint 0 has {n}")
            if t32.shape[0] != m:
                raise ValueError(f"checkpoint {i} has {t32.shape[0]} target rows, checkpoint 0 has {m}")
            if t32.shape[1] != c.shape[1]:
                raise ValueError(f"checkpoint {i}: candidate features have k={c.shape[1]}, targets k={t32.shape[1]}")
        if chunk_rows is None:
            chunk_rows = default_chunk_rows(max(c.shape[1] for c in cands), m)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return cls(cands, targets32, w, normalize, chunk_rows, bad_mask(bad, n))

    @property
    def shape(self) -> tuple[int, int]:
        return self.cands[0].shape[0], self.targets32[0].shape[0]

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        n = self.shape[0]
        for start in range(0, n, self.chunk_rows):
            stop = min(start + self.chunk_rows, n)
            acc = np.zeros((stop - start, self.shape[1]), dtype=np.float32)
            for c, t32, wc in zip(self.cands, self.targets32, self.weights, strict=True):
                block = _block(c, start, stop, t32, self.normalize, self.bad)
                if wc != 1.0:
                    block *= np.float32(wc)
                acc += block
            yield start, acc


def influence_matrix(
    cands: Sequence[Any],
    targets: Sequence[Any],
    weights: Sequence[float] | None,
    normalize: bool = True,
    chunk_rows: int | None = None,
    bad: Any = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The full weighted influence matrix A [N, M] (BIDS' input, methods.md section 4), assembled block by block.

    With ``normalize=True`` this is LESS influence per target example: ``A_ij = sum_c w_c cos(g_c(z_i), g_c(v_j))``.

    Args:
        cands: Per checkpoint, candidate features [N, k_c].
        targets: Per checkpoint, target features [M, k_c].
        weights: Per checkpoint weight (LESS: the epoch's mean learning rate); None weighs all 1.
        normalize: Cosine (True, LESS/BIDS) or raw inner product (False).
        chunk_rows: Candidate rows per block; None picks about 64 MB of buffers per block.
        bad: Optional boolean mask [N] of rows to exclude.
        out: Optional float32 array [N, M] to fill (e.g. a memmap when A itself is too large for memory).

    Returns:
        float32 array [N, M] (`out` when given); bad rows are all-NaN.

    Raises:
        ValueError: As `weighted_influence_chunks`, or if `out` has the wrong shape or dtype.
    """
    plan = _Plan.build(cands, targets, weights, normalize, chunk_rows, bad)
    if out is None:
        out = np.empty(plan.shape, dtype=np.float32)
    elif out.shape != plan.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {plan.shape}, got {out.dtype} {out.shape}")
    for start, block in plan.blocks():
        out[start : start + block.shape[0]] = block
    return out


@dataclass(frozen=True)
class TaskGroups:
    """Target examples grouped by task, tasks in order of first appearance.

    Attributes:
        names: Task labels, one per group, in order of first appearance.
        index: int64 array [M]: the group of each target example.
    """

    names: list[Hashable]
    index: np.ndarray

    def __post_init__(self) -> None:
        if self.index.ndim != 1 or len(self.index) == 0:
            raise ValueError("task groups need at least one target example")
        if self.index.min() < 0 or self.index.max() >= len(self.names):
            raise ValueError(f"task index must lie in [0, {len(self.names)}), got {self.index.tolist()}")

    @classmethod
    def from_labels(cls, labels: Sequence[Hashable] | None, n_targets: int) -> TaskGroups:
        """Group targets by label; None (no labels) puts all `n_targets` in one task named ``"all"``.

        Raises:
            ValueError: If the number of labels differs from `n_targets`.
        """
        if labels is None:
            return cls(["all"], np.zeros(n_targets, dtype=np.int64))
        labels = list(labels)
        if len(labels) != n_targets:
            raise ValueError(f"got {len(labels)} target task labels for {n_targets} target examples")
        position: dict[Hashable, int] = {}
        index = np.array([position.setdefault(label, len(position)) for label in labels], dtype=np.int64)
        return cls(list(position), index)

    @property
    def sizes(self) -> np.ndarray:
        """int64 array [T]: target examples per task."""
        return np.bincount(self.index, minlength=len(self.names))

    def mean_matrix(self) -> np.ndarray:
        """float32 array [M, T] with ``1/|task t|`` where target j is in task t, so ``A @ G`` is per-task means."""
        g = np.zeros((len(self.index), len(self.names)), dtype=np.float32)
        g[np.arange(len(self.index)), self.index] = 1.0 / self.sizes[self.index]
        return g


@dataclass(frozen=True)
class TopTargets:
    """The targets each candidate helps most: per candidate row, the `k` largest influences and their columns.

    Attributes:
        index: int64 [N, k]: target columns, largest influence first; -1 where a row has fewer than k finite
            entries (bad rows, or fewer than k targets).
        value: float64 [N, k]: the influences; NaN where `index` is -1.
    """

    index: np.ndarray
    value: np.ndarray

    @classmethod
    def empty(cls, n_rows: int, k: int) -> TopTargets:
        """A result for `n_rows` candidates with nothing filled in yet, to be filled block by block."""
        return cls(np.full((n_rows, k), -1, dtype=np.int64), np.full((n_rows, k), np.nan))

    def fill(self, start: int, block: np.ndarray) -> None:
        """Reduce the influence rows ``start:start+len(block)`` into this result (`top_columns`)."""
        stop = start + block.shape[0]
        self.index[start:stop], self.value[start:stop] = top_columns(block, self.index.shape[1])


def top_columns(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest finite entries of each row and their columns, largest first.

    Ties go to the lowest column, as a repeated ``argmax`` would pick them: k passes over the block, each an
    ``argmax`` with the columns already taken masked, which costs O(k * n * M) with k small (3 in the report)
    and never sorts a row.

    Args:
        block: Influences [n, M] (float32 or float64; NaN and -inf entries are never picked).
        k: Entries to keep per row, >= 1.

    Returns:
        ``(index, value)``: int64 [n, k] columns (-1 where a row has no further finite entry) and float64
        [n, k] values (NaN there).

    Raises:
        ValueError: If `block` is not 2-D or ``k < 1``.
    """
    if block.ndim != 2:
        raise ValueError(f"block must be 2-D [rows, targets], got shape {block.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, m = block.shape
    work = np.where(np.isfinite(block), block, -np.inf)
    index = np.full((n, k), -1, dtype=np.int64)
    value = np.full((n, k), np.nan)
    rows = np.arange(n)
    for j in range(min(k, m)):
        best = work.argmax(axis=1)
        found = np.isfinite(work[rows, best])
        index[found, j] = best[found]
        value[found, j] = work[rows[found], best[found]]
        work[rows, best] = -np.inf
    return index, value


def top_targets(matrix: Any, k: int, chunk_rows: int | None = None) -> TopTargets:
    """`top_columns` of a whole influence matrix (array or memmap), read in row blocks.

    Args:
        matrix: Influences [N, M].
        k: Targets to keep per candidate.
        chunk_rows: Rows per block; None picks about 64 MB of float32 per block.

    Returns:
        The `k` largest influences of each row and their target columns.

    Raises:
        ValueError: If `matrix` is not a non-empty 2-D array, ``k < 1`` or ``chunk_rows < 1``.
    """
    matrix = rows_of(matrix, "influence matrix")
    n, m = matrix.shape
    rows = default_chunk_rows(0, m) if chunk_rows is None else chunk_rows
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {rows}")
    out = TopTargets.empty(n, k)
    for start in range(0, n, rows):
        out.fill(start, np.asarray(matrix[start : start + rows]))
    return out
