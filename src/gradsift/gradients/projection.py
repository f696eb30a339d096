"""Seeded random projections of per-example LoRA gradients (the ``P g`` of methods.md).

Three projectors share one interface (:class:`Projector`): each consumes the per-layer gradient factors
streamed by :class:`~gradsift.gradients.grads.LoraGradients` and adds each layer's contribution into a
[G, dim] feature buffer.

- :class:`DenseProjector`: one k x P Rademacher (LESS, methods.md section 1) or Gaussian matrix over the
  whole flattened gradient, scaled by ``1/sqrt(k)``. It is never held whole: it is generated in chunks of
  columns, and a chunk is kept only while a memory budget allows.
- :class:`SparseProjector`: the sparse Johnson-Lindenstrauss transform (Kane and Nelson's block
  construction, as in dattri and recent TRAK): each gradient coordinate goes to ``s`` output coordinates,
  one in each of ``s`` blocks of ``k / s``, with random signs, scaled by ``1/sqrt(s)``. Applied as a
  scatter-add, it costs ``s`` multiply-adds per coordinate instead of ``k``.
- :class:`FactorizedProjector`: per LoRA matrix ``W`` [out, in], ``vec(P_out G P_in^T)`` computed as
  ``sum_t (P_out delta_t)(P_in x_t)^T``, which never builds ``G``. A side no larger than its target size
  (the LoRA rank, typically) is left unprojected.

Both are unbiased: ``E[<P g, P g'>] = <g, g'>``. Every random matrix comes from a CPU ``torch.Generator``
seeded by a hash of ``(seed, what, where)``, so every process and device builds the same matrix
whatever the block size, the device, or the number of parameters (a chunk depends only on its index).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol, get_args

import torch

from gradsift.gradients.grads import LayerFactors

Distribution = Literal["rademacher", "gaussian"]
CHUNK = 512
"""Columns of the dense matrix drawn from one seeded generator (fixed: it defines the matrix)."""
_SCHEME = "torch-cpu-generator/blake2b-seed/v1"


class Projector(Protocol):
    """A seeded map from per-example LoRA gradients to ``dim`` features.

    ``project(out, factors)`` adds one LoRA matrix's contribution into ``out`` [G, dim] (it is the
    :class:`~gradsift.gradients.grads.Sink` of :meth:`LoraGradients.compute`); ``describe()`` is the
    metadata a feature store records so that features from different projections are never mixed.
    """

    @property
    def dim(self) -> int: ...

    @property
    def seed(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

    def project(self, out: torch.Tensor, factors: LayerFactors) -> None: ...


def _check_common(k: int, kind: str, seed: int) -> None:
    if k < 1:
        raise ValueError(f"projection size must be >= 1, got {k}")
    if kind not in get_args(Distribution):
        raise ValueError(f"projection kind must be one of {get_args(Distribution)}, got {kind!r}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"projection seed must be in [0, 2**63), got {seed}")


def _generator(seed: int, *labels: object) -> torch.Generator:
    """A CPU generator for one named piece of one projection; distinct labels give independent streams."""
    digest = hashlib.blake2b(repr((seed, *labels)).encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little"))


def _draw(gen: torch.Generator, rows: int, k: int, kind: Distribution) -> torch.Tensor:
    """Compact random rows: Rademacher signs packed 8 per byte [rows, 8 * ceil(k / 64)] uint8 (64 random
    bits per draw, 8x less memory to cache and move), or Gaussian [rows, k] float32."""
    if kind == "gaussian":
        return torch.randn(rows, k, generator=gen)
    words = torch.randint(-(2**63), 2**63 - 1, (rows, -(-k // 64)), dtype=torch.int64, generator=gen)
    return words.view(torch.uint8)


def _expand(compact: torch.Tensor, k: int, kind: Distribution, dtype: torch.dtype) -> torch.Tensor:
    """Compact rows (from :func:`_draw`, on any device) -> [rows, k] unscaled entries (+-1 or N(0, 1))."""
    if kind == "gaussian":
        return compact.to(dtype)
    # One gather from the 256 sign patterns of a byte (bit i -> entry i) rather than shift, mask, convert
    # and scale passes over the [rows, k] result: the expansion, not the matmul, bounds the dense projection.
    shifts = torch.arange(8, device=compact.device)
    patterns = ((torch.arange(256, device=compact.device).unsqueeze(-1) >> shifts) & 1).to(dtype) * 2 - 1
    return torch.nn.functional.embedding(compact.int(), patterns).flatten(1)[:, :k]


class _FlatProjector:
    """What the dense and sparse projectors of the flat gradient share: checks, the per-chunk cache, and the
    walk over blocks of chunks. A subclass draws one chunk (`_draw_chunk`) and adds one block's projection
    (`_add_block`); `_scale` divides the sum."""

    _scale: float

    def __init__(self, num_params: int, k: int, seed: int, block_size: int, cache_bytes: int) -> None:
        if num_params < 1:
            raise ValueError(f"num_params must be positive, got {num_params}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.num_params, self.k, self._seed = num_params, k, seed
        self.block_chunks = -(-block_size // CHUNK)
        self.cache_bytes = cache_bytes
        self._cache: dict[tuple[int, torch.device], Any] = {}
        self._cached = 0

    @property
    def dim(self) -> int:
        return self.k

    @property
    def seed(self) -> int:
        return self._seed

    def _draw_chunk(self, index: int) -> Any:
        raise NotImplementedError

    def _add_block(self, out: torch.Tensor, grads: torch.Tensor, start: int, stop: int, lo: int, hi: int) -> None:
        """Add the projection of `grads` [B, hi - lo], the columns ``lo..hi-1`` of chunks ``start..stop-1``
        (counted from the first column of chunk `start`), into `out` [B, k]."""
        raise NotImplementedError

    def _chunk(self, index: int, device: torch.device) -> Any:
        """Chunk `index` on `device`, kept while the cache budget allows."""
        hit = self._cache.get((index, device))
        if hit is not None:
            return hit
        drawn = self._draw_chunk(index)
        chunk = tuple(t.to(device) for t in drawn) if isinstance(drawn, tuple) else drawn.to(device)
        size = sum(t.nbytes for t in chunk) if isinstance(chunk, tuple) else chunk.nbytes
        if self._cached + size <= self.cache_bytes:
            self._cache[(index, device)] = chunk
            self._cached += size
        return chunk

    def _check_range(self, offset: int, n: int) -> None:
        if offset < 0 or n < 1 or offset + n > self.num_params:
            raise ValueError(
                f"gradient entries [{offset}, {offset + n}) lie outside the projector's {self.num_params} parameters"
            )

    def project_flat(self, grads: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Project a slice of flattened gradients.

        Args:
            grads: [B, n] entries ``offset .. offset + n - 1`` of the flattened gradient.
            offset: Where the slice starts in the flat vector (0 with the full gradient).

        Returns:
            [B, k] its projection (float32, or float64 for float64 input). Projections of consecutive
            slices add up to the projection of the whole vector.
        """
        if grads.dim() != 2:
            raise ValueError(f"grads must be [B, n], got shape {tuple(grads.shape)}")
        rows, n = grads.shape
        self._check_range(offset, n)
        dtype = torch.promote_types(grads.dtype, torch.float32)
        grads = grads.to(dtype)
        out = torch.zeros(rows, self.k, dtype=dtype, device=grads.device)
        first, end = offset // CHUNK, -(-(offset + n) // CHUNK)
        for start in range(first, end, self.block_chunks):
            stop = min(start + self.block_chunks, end)
            lo, hi = max(offset, start * CHUNK), min(offset + n, stop * CHUNK)
            self._add_block(
                out, grads[:, lo - offset : hi - offset], start, stop, lo - start * CHUNK, hi - start * CHUNK
            )
        return out / self._scale

    def project(self, out: torch.Tensor, factors: LayerFactors) -> None:
        """Add the projection of one LoRA matrix's per-example gradients [G, out * in] into ``out`` [G, k]."""
        out += self.project_flat(factors.gradient().flatten(1), factors.layer.offset)


class DenseProjector(_FlatProjector):
    """Dense random projection of flattened gradients [B, P] -> [B, k] (LESS's projection).

    Column ``j`` of the k x P matrix is drawn from the generator of chunk ``j // CHUNK``; entries are
    +-1 (Rademacher) or N(0, 1), and the result is scaled by ``1/sqrt(k)`` so inner products are
    unbiased and concentrate as the Johnson-Lindenstrauss lemma says.

    Args:
        num_params: P, the length of the flattened gradient.
        k: Output dimension (LESS: 8192).
        kind: ``"rademacher"`` (LESS) or ``"gaussian"``.
        seed: Projection seed.
        block_size: Columns projected per matmul; bounds the transient memory to ``k x block_size``
            entries (rounded up to whole chunks of 512). Does not change the matrix.
        cache_bytes: Budget for keeping generated chunks on the device between batches (Rademacher chunks
            take ``k / 8`` bytes per column, Gaussian ``4 k``); 0 regenerates every time.
    """

    def __init__(
        self,
        num_params: int,
        k: int = 8192,
        kind: Distribution = "rademacher",
        seed: int = 0,
        block_size: int = 16384,
        cache_bytes: int = 2**30,
    ) -> None:
        _check_common(k, kind, seed)
        super().__init__(num_params, k, seed, block_size, cache_bytes)
        self.kind = kind
        self._scale = math.sqrt(k)

    def describe(self) -> dict[str, Any]:
        return {
            "projector": "dense",
            "kind": self.kind,
            "dim": self.k,
            "num_params": self.num_params,
            "seed": self._seed,
            "chunk": CHUNK,
            "scheme": _SCHEME,
        }

    def _draw_chunk(self, index: int) -> torch.Tensor:
        return _draw(_generator(self._seed, "dense", self.kind, self.k, index), CHUNK, self.k, self.kind)

    def _columns(self, first: int, last: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Unscaled matrix rows for chunks ``first..last-1`` [(last - first) * CHUNK, k]."""
        compact = torch.cat([self._chunk(c, device) for c in range(first, last)])
        return _expand(compact, self.k, self.kind, dtype)

    def matrix(
        self, offset: int, n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The scaled projection matrix for gradient entries ``offset .. offset + n - 1``, transposed [n, k],
        so that ``project_flat(g, offset) == g @ matrix(offset, n)``. For tests and small problems."""
        self._check_range(offset, n)
        first, last = offset // CHUNK, -(-(offset + n) // CHUNK)
        cols = self._columns(first, last, torch.device(device), dtype)
        return cols[offset - first * CHUNK : offset - first * CHUNK + n] / math.sqrt(self.k)

    def _add_block(self, out: torch.Tensor, grads: torch.Tensor, start: int, stop: int, lo: int, hi: int) -> None:
        out += grads @ self._columns(start, stop, grads.device, grads.dtype)[lo:hi]


class SparseProjector(_FlatProjector):
    """Sparse JL projection of flattened gradients [B, P] -> [B, k] (Kane-Nelson block construction).

    Column ``j`` of the k x P matrix has exactly ``s`` non-zeros, one in each block of ``k / s`` rows, at
    positions and with signs drawn from the generator of chunk ``j // CHUNK``; each is ``+-1/sqrt(s)``.
    Inner products are unbiased (``E[<P g, P g'>] = <g, g'>``) and concentrate as for a dense projection
    of the same ``k`` (Kane and Nelson 2014), while projecting costs ``s`` multiply-adds per gradient
    entry instead of ``k``: it is a scatter-add (``index_add_``), on CPU and GPU alike.

    Args:
        num_params: P, the length of the flattened gradient.
        k: Output dimension; a multiple of ``s``.
        s: Non-zeros per column (4 by default, as in dattri's sparse projector).
        seed: Projection seed.
        block_size: Columns scattered per step; bounds the transient memory to ``B x block_size x s``.
        cache_bytes: Budget for keeping drawn chunks (``5 s`` bytes per column) on the device.
    """

    def __init__(
        self,
        num_params: int,
        k: int = 8192,
        s: int = 4,
        seed: int = 0,
        block_size: int = 16384,
        cache_bytes: int = 2**30,
    ) -> None:
        _check_common(k, "rademacher", seed)
        if s < 1 or k % s:
            raise ValueError(f"sparse projection needs s >= 1 dividing k, got s={s}, k={k}")
        super().__init__(num_params, k, seed, block_size, cache_bytes)
        self.s = s
        self._scale = math.sqrt(s)

    def describe(self) -> dict[str, Any]:
        return {
            "projector": "sparse",
            "kind": "sparse-jl",
            "dim": self.k,
            "s": self.s,
            "num_params": self.num_params,
            "seed": self._seed,
            "chunk": CHUNK,
            "scheme": _SCHEME,
        }

    def _draw_chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [CHUNK, s] int64 and signs [CHUNK, s] int8 (+-1) of the columns of chunk ``index``."""
        gen = _generator(self._seed, "sparse", self.k, self.s, index)
        width = self.k // self.s
        rows = torch.randint(0, width, (CHUNK, self.s), generator=gen) + torch.arange(self.s) * width
        signs = (torch.randint(0, 2, (CHUNK, self.s), generator=gen, dtype=torch.int8) * 2 - 1).to(torch.int8)
        return rows, signs

    def _columns(self, first: int, last: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self._chunk(c, device) for c in range(first, last)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def matrix(
        self, offset: int, n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The explicit scaled matrix for entries ``offset .. offset + n - 1``, transposed [n, k]: for tests."""
        self._check_range(offset, n)
        first, last = offset // CHUNK, -(-(offset + n) // CHUNK)
        rows, signs = self._columns(first, last, torch.device(device))
        lo = offset - first * CHUNK
        rows, signs = rows[lo : lo + n], signs[lo : lo + n]
        m = torch.zeros(n, self.k, dtype=dtype, device=device)
        m.scatter_(1, rows, signs.to(dtype) / math.sqrt(self.s))
        return m

    def _add_block(self, out: torch.Tensor, grads: torch.Tensor, start: int, stop: int, lo: int, hi: int) -> None:
        rows, signs = self._columns(start, stop, grads.device)
        values = grads[:, :, None] * signs[lo:hi].to(grads.dtype)  # [B, cols, s]
        out.index_add_(1, rows[lo:hi].flatten(), values.flatten(1))


class FactorizedProjector:
    """Kronecker-structured projection that never materialises a per-example gradient.

    For LoRA matrix ``l`` with weight [out, in] the feature is ``vec(P_out G P_in^T)`` (row-major), i.e.
    ``kron(P_out, P_in) vec(G)``, computed from the factors as ``sum_t (P_out delta_t)(P_in x_t)^T``. A
    side whose size is at most its target (``out <= k_out`` or ``in <= k_in``; the LoRA rank side with
    the defaults) keeps the identity, so it adds no error. Projected sides are +-1 or N(0, 1) scaled by
    ``1/sqrt(k_side)``, which makes ``E[<P g, P g'>] = <g, g'>`` per layer and hence for the concatenation.

    The dimension is ``sum_l k_out(l) * k_in(l)``: with rank r and the defaults, ``16 r`` per LoRA matrix
    (128 for r = 8), e.g. 16,384 for q,v LoRA on a 32-layer model (128 matrices). See :attr:`layer_dims`.

    Args:
        layer_shapes: ``(out, in)`` of every LoRA matrix, in :attr:`LoraGradients.layers` order.
        k_in: Target size of the input side.
        k_out: Target size of the output side.
        kind: ``"rademacher"`` or ``"gaussian"``.
        seed: Projection seed; matrix ``l`` depends only on (seed, kind, l, side, sizes).
    """

    def __init__(
        self,
        layer_shapes: Sequence[tuple[int, int]],
        k_in: int = 16,
        k_out: int = 16,
        kind: Distribution = "rademacher",
        seed: int = 0,
    ) -> None:
        _check_common(min(k_in, k_out), kind, seed)
        if not layer_shapes:
            raise ValueError("layer_shapes is empty: there is nothing to project")
        if any(o < 1 or i < 1 for o, i in layer_shapes):
            raise ValueError(f"layer shapes must be positive, got {list(layer_shapes)}")
        self.shapes = [(int(o), int(i)) for o, i in layer_shapes]
        self.k_in, self.k_out, self.kind, self._seed = k_in, k_out, kind, seed
        # None marks an unprojected (identity) side.
        self.sides: list[tuple[int | None, int | None]] = [
            (k_out if o > k_out else None, k_in if i > k_in else None) for o, i in self.shapes
        ]
        self.layer_dims = [(ko or o) * (ki or i) for (o, i), (ko, ki) in zip(self.shapes, self.sides, strict=True)]
        self.offsets = [sum(self.layer_dims[:j]) for j in range(len(self.layer_dims))]
        self._matrices: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor | None, ...]] = {}

    @property
    def dim(self) -> int:
        return sum(self.layer_dims)

    @property
    def seed(self) -> int:
        return self._seed

    def describe(self) -> dict[str, Any]:
        return {
            "projector": "factorized",
            "kind": self.kind,
            "dim": self.dim,
            "seed": self._seed,
            "k_in": self.k_in,
            "k_out": self.k_out,
            "layer_shapes": [list(s) for s in self.shapes],
            "layer_dims": self.layer_dims,
            "scheme": _SCHEME,
        }

    def matrices(
        self, layer: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The scaled ``P_out`` [k_o, out] and ``P_in`` [k_i, in] of one layer (None for an identity side)."""
        key = (layer, torch.device(device), dtype)
        if key not in self._matrices:
            mats: list[torch.Tensor | None] = []
            for side, size, k in zip(("out", "in"), self.shapes[layer], self.sides[layer], strict=True):
                if k is None:
                    mats.append(None)
                    continue
                gen = _generator(self._seed, "factorized", self.kind, layer, side, size, k)
                m = _expand(_draw(gen, size, k, self.kind), k, self.kind, dtype).T.contiguous()
                mats.append((m / math.sqrt(k)).to(device))
            self._matrices[key] = tuple(mats)
        p_out, p_in = self._matrices[key]
        return p_out, p_in

    def project(self, out: torch.Tensor, factors: LayerFactors) -> None:
        """Add ``vec(P_out G_b P_in^T)`` of one LoRA matrix into its slice of ``out`` [G, dim]."""
        layer = factors.layer
        if layer.index >= len(self.shapes) or self.shapes[layer.index] != layer.shape:
            raise ValueError(
                f"{layer.name}: shape {layer.shape} at position {layer.index} does not match the projector's "
                "layer_shapes; build the projector from the same LoraGradients.layers"
            )
        x, delta = factors.inputs, factors.output_grads
        p_out, p_in = self.matrices(layer.index, x.device, x.dtype)
        if p_in is not None:
            x = x @ p_in.T
        if p_out is not None:
            delta = delta @ p_out.T
        start = self.offsets[layer.index]
        out[:, start : start + self.layer_dims[layer.index]] += torch.bmm(delta.transpose(1, 2), x).flatten(1)
