import json
import math

import pytest
import torch
from _lora_setup import ALL, QV, encodings, lora_model, pad_id

from gradsift.data.tokenize import collate
from gradsift.gradients.grads import LayerFactors, LoraGradients, LoraLinear
from gradsift.gradients.projection import CHUNK, DenseProjector, FactorizedProjector, SparseProjector
from gradsift.model.task import SFTTask


def jl_epsilon(k: int, pairs: int, delta: float) -> float:
    """Smallest eps with ``pairs * 4 exp(-k (eps^2/2 - eps^3/3) / 2) <= delta``.

    Per unit vector, ``P(| |Px|^2 - 1 | > eps) <= 2 exp(-k (eps^2/2 - eps^3/3) / 2)`` for Gaussian and
    Rademacher entries (Dasgupta-Gupta; Achlioptas). Polarisation on ``u + v`` and ``u - v`` bounds the
    error of ``<Pu, Pv>`` by eps with twice that probability; a union bound covers every pair.
    """
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if pairs * 4 * math.exp(-k * (mid**2 / 2 - mid**3 / 3) / 2) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def assert_within_jl(vectors: torch.Tensor, projected: torch.Tensor, k: int, delta: float = 1e-3) -> float:
    """All inner products (norms included) of the unit-normalised vectors within the JL bound."""
    norms = vectors.norm(dim=1, keepdim=True)
    exact = (vectors / norms) @ (vectors / norms).T
    approx = (projected / norms) @ (projected / norms).T
    n = vectors.shape[0]
    eps = jl_epsilon(k, n * (n + 1) // 2, delta)
    err = (approx - exact).abs().max().item()
    assert err <= eps, f"JL violated: max error {err} > {eps} (k={k}, failure probability {delta})"
    return err


def correlated_vectors(n: int, p: int, seed: int) -> torch.Tensor:
    """Vectors sharing a common direction, so inner products are far from 0 and scale errors show."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(p, generator=g, dtype=torch.float64)
    return common + torch.randn(n, p, generator=g, dtype=torch.float64) * torch.linspace(0.3, 2.0, n)[:, None]


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_dense_inner_products_within_jl_bound_on_random_vectors(kind):
    vecs = correlated_vectors(12, 3000, seed=1)
    proj = DenseProjector(3000, k=1024, kind=kind, seed=7, block_size=700)
    err = assert_within_jl(vecs, proj.project_flat(vecs), 1024)
    assert err > 0  # a projection to fewer dimensions cannot be exact


def test_dense_inner_products_within_jl_bound_on_real_gradients():
    tok, model = lora_model(ALL)
    lg = LoraGradients(model)
    grads = lg.compute(collate(encodings(tok, 8), pad_id(tok)), SFTTask()).features
    proj = DenseProjector(lg.num_params, k=2048, seed=3)
    assert lg.num_params > 2048
    assert_within_jl(grads, proj.project_flat(grads), 2048)


def test_dense_matrix_depends_only_on_seed_kind_and_k():
    p = 3 * CHUNK + 77
    x = torch.randn(4, p, dtype=torch.float64)
    ref = DenseProjector(p, k=96, seed=5).project_flat(x)
    for block_size, cache in ((1, 0), (CHUNK, 10**9), (10**6, 0)):
        again = DenseProjector(p, k=96, seed=5, block_size=block_size, cache_bytes=cache)
        torch.testing.assert_close(again.project_flat(x), ref)
        torch.testing.assert_close(again.project_flat(x), ref)  # second pass: from the cache where kept
    longer = DenseProjector(p + 1000, k=96, seed=5)
    torch.testing.assert_close(longer.project_flat(x), ref)  # a chunk depends only on its index
    other = DenseProjector(p, k=96, seed=6).project_flat(x)
    assert (other - ref).abs().max() > 1e-3
    gauss = DenseProjector(p, k=96, seed=5, kind="gaussian").project_flat(x)
    assert (gauss - ref).abs().max() > 1e-3


def test_dense_slices_add_up_and_match_the_explicit_matrix():
    p = 2 * CHUNK + 300
    proj = DenseProjector(p, k=64, seed=2, block_size=CHUNK)
    x = torch.randn(3, p, dtype=torch.float64)
    full = proj.project_flat(x)
    torch.testing.assert_close(full, x @ proj.matrix(0, p, dtype=torch.float64))
    cuts = [0, 100, CHUNK + 5, CHUNK + 6, p]
    parts = sum(proj.project_flat(x[:, a:b], a) for a, b in zip(cuts, cuts[1:], strict=False))
    torch.testing.assert_close(parts, full)
    m = proj.matrix(0, p) * math.sqrt(64)
    assert set(m.unique().tolist()) == {-1.0, 1.0}


def test_rademacher_signs_are_balanced_and_gaussian_has_unit_variance():
    p, k = 4096, 256
    signs = DenseProjector(p, k=k, seed=0).matrix(0, p) * math.sqrt(k)
    assert abs(signs.mean().item()) < 5 / math.sqrt(p * k)
    col_means = signs.mean(dim=0)  # each output coordinate's signs are balanced too
    assert col_means.abs().max() < 5 / math.sqrt(p)
    gauss = DenseProjector(p, k=k, kind="gaussian", seed=0).matrix(0, p) * math.sqrt(k)
    assert abs(gauss.var().item() - 1) < 0.02 and abs(gauss.mean().item()) < 0.01


def test_dense_sink_equals_projecting_materialised_gradients():
    tok, model = lora_model(QV)
    lg = LoraGradients(model)
    batch = collate(encodings(tok, 4), pad_id(tok), "left")
    flat = lg.compute(batch, SFTTask()).features
    proj = DenseProjector(lg.num_params, k=128, seed=1, block_size=600)
    streamed = lg.compute(batch, SFTTask(), sink=proj)
    assert streamed.features.shape == (4, 128)
    torch.testing.assert_close(streamed.features, proj.project_flat(flat))


def _factors(shape, rows=3, steps=5, seed=0, index=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out_f, in_f = shape
    layer = LoraLinear(index, f"layer{index}", f"layer{index}.weight", "A", out_f, in_f, 0)
    x = torch.randn(rows, steps, in_f, generator=g, dtype=dtype)
    delta = torch.randn(rows, steps, out_f, generator=g, dtype=dtype)
    return LayerFactors(layer, x, delta)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_factorized_equals_dense_kronecker_projection(kind):
    shapes = [(6, 10), (2, 9), (7, 3)]
    proj = FactorizedProjector(shapes, k_in=4, k_out=3, kind=kind, seed=11)
    assert proj.sides == [(3, 4), (None, 4), (3, None)]
    assert proj.layer_dims == [12, 8, 9] and proj.dim == 29
    for index, shape in enumerate(shapes):
        factors = _factors(shape, seed=index, index=index)
        out = torch.zeros(3, proj.dim, dtype=torch.float64)
        proj.project(out, factors)
        p_out, p_in = proj.matrices(index, dtype=torch.float64)
        p_out = torch.eye(shape[0], dtype=torch.float64) if p_out is None else p_out
        p_in = torch.eye(shape[1], dtype=torch.float64) if p_in is None else p_in
        kron = torch.kron(p_out, p_in)  # acts on the row-major vec(G)
        want = factors.gradient().flatten(1) @ kron.T
        start, stop = proj.offsets[index], proj.offsets[index] + proj.layer_dims[index]
        torch.testing.assert_close(out[:, start:stop], want)
        assert (out[:, :start] == 0).all() and (out[:, stop:] == 0).all()  # only its own slice is written
    assert proj.matrices(0)[0].shape == (3, 6) and proj.matrices(0)[1].shape == (4, 10)


def test_factorized_without_projected_sides_is_the_exact_gradient():
    tok, model = lora_model(QV)
    lg = LoraGradients(model)
    batch = collate(encodings(tok, 3), pad_id(tok))
    flat = lg.compute(batch, SFTTask()).features
    exact = FactorizedProjector([layer.shape for layer in lg.layers], k_in=64, k_out=64)
    assert all(s == (None, None) for s in exact.sides)
    torch.testing.assert_close(lg.compute(batch, SFTTask(), sink=exact).features, flat)


def test_factorized_on_real_gradients_matches_kronecker_of_materialised():
    tok, model = lora_model(ALL)
    lg = LoraGradients(model)
    batch = collate(encodings(tok, 4), pad_id(tok), "left")
    flat = lg.compute(batch, SFTTask()).features
    proj = FactorizedProjector([layer.shape for layer in lg.layers], k_in=8, k_out=8, seed=4)
    feats = lg.compute(batch, SFTTask(), sink=proj).features
    assert any(s[0] is not None for s in proj.sides) and any(s[1] is not None for s in proj.sides)
    for layer in lg.layers:
        p_out, p_in = proj.matrices(layer.index, dtype=torch.float64)
        p_out = torch.eye(layer.out_features, dtype=torch.float64) if p_out is None else p_out
        p_in = torch.eye(layer.in_features, dtype=torch.float64) if p_in is None else p_in
        g = flat[:, layer.offset : layer.offset + layer.numel]
        start = proj.offsets[layer.index]
        got = feats[:, start : start + proj.layer_dims[layer.index]]
        torch.testing.assert_close(got, g @ torch.kron(p_out, p_in).T)


def test_factorized_inner_products_are_unbiased():
    shape = (6, 10)
    a, b = _factors(shape, rows=1, seed=1), _factors(shape, rows=1, seed=2)
    b = LayerFactors(b.layer, a.inputs + 0.5 * b.inputs, a.output_grads + 0.5 * b.output_grads)
    exact = (a.gradient() * b.gradient()).sum().item()
    estimates = []
    for seed in range(400):
        proj = FactorizedProjector([shape], k_in=3, k_out=2, seed=seed)
        fa, fb = torch.zeros(1, proj.dim, dtype=torch.float64), torch.zeros(1, proj.dim, dtype=torch.float64)
        proj.project(fa, a)
        proj.project(fb, b)
        estimates.append((fa * fb).sum().item())
    est = torch.tensor(estimates, dtype=torch.float64)
    stderr = est.std().item() / math.sqrt(len(estimates))
    assert abs(est.mean().item() - exact) < 4 * stderr, (est.mean().item(), exact, stderr)
    assert est.std() > 0.05 * abs(exact)  # the sides really are random (else the test proves nothing)


def test_describe_is_json_metadata():
    dense = DenseProjector(1000, k=64, seed=9)
    fac = FactorizedProjector([(8, 32), (32, 8)], k_in=16, k_out=16, seed=9)
    for proj in (dense, fac):
        meta = json.loads(json.dumps(proj.describe()))
        assert meta["seed"] == 9 and meta["dim"] == proj.dim
    assert fac.dim == 8 * 16 + 16 * 8


def test_bad_projector_arguments_are_refused():
    with pytest.raises(ValueError, match="size"):
        DenseProjector(10, k=0)
    with pytest.raises(ValueError, match="kind"):
        DenseProjector(10, kind="sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        DenseProjector(10, seed=-1)
    with pytest.raises(ValueError, match="num_params"):
        DenseProjector(0)
    with pytest.raises(ValueError, match="block_size"):
        DenseProjector(10, block_size=0)
    with pytest.raises(ValueError, match="cache_bytes"):
        DenseProjector(10, cache_bytes=-1)
    proj = DenseProjector(10, k=4)
    with pytest.raises(ValueError, match="outside"):
        proj.project_flat(torch.zeros(2, 8), offset=3)
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        proj.project_flat(torch.zeros(10))
    with pytest.raises(ValueError, match="empty"):
        FactorizedProjector([])
    with pytest.raises(ValueError, match="positive"):
        FactorizedProjector([(0, 3)])
    with pytest.raises(ValueError, match="size"):
        FactorizedProjector([(4, 4)], k_in=0)
    fac = FactorizedProjector([(6, 10)], k_in=3, k_out=2)
    with pytest.raises(ValueError, match="does not match"):
        fac.project(torch.zeros(3, fac.dim, dtype=torch.float64), _factors((5, 10)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_device_builds_the_same_projection():
    tok, model = lora_model(ALL, dtype=torch.float32)
    lg = LoraGradients(model)
    batch = collate(encodings(tok, 4), pad_id(tok), "left")
    dense = DenseProjector(lg.num_params, k=512, seed=1)
    fac = FactorizedProjector([layer.shape for layer in lg.layers], k_in=8, k_out=8, seed=1)
    sparse = SparseProjector(lg.num_params, k=512, seed=1)
    on_cpu = [lg.compute(batch, SFTTask(), sink=s).features for s in (dense, fac, sparse)]
    model.cuda()
    gpu_batch = {k: v.cuda() for k, v in batch.items()}
    on_gpu = [lg.compute(gpu_batch, SFTTask(), sink=s).features.cpu() for s in (dense, fac, sparse)]
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert (a - b).norm() <= 1e-4 * a.norm()


def test_sparse_matches_its_explicit_matrix_and_slices_add_up():
    p = 2 * CHUNK + 300
    proj = SparseProjector(p, k=64, s=4, seed=2, block_size=CHUNK)
    x = torch.randn(3, p, dtype=torch.float64)
    full = proj.project_flat(x)
    m = proj.matrix(0, p, dtype=torch.float64)
    torch.testing.assert_close(full, x @ m)
    cuts = [0, 100, CHUNK + 5, CHUNK + 6, p]
    parts = sum(proj.project_flat(x[:, a:b], a) for a, b in zip(cuts, cuts[1:], strict=False))
    torch.testing.assert_close(parts, full)
    # exactly s non-zeros per column, one per block of k / s rows, each +-1/sqrt(s)
    nz = m != 0
    assert (nz.sum(dim=1) == 4).all()
    assert (nz.view(p, 4, 16).sum(dim=2) == 1).all()
    assert set((m[nz] * 2).unique().tolist()) == {-1.0, 1.0}


def test_sparse_matrix_depends_only_on_seed_k_and_s():
    p = 3 * CHUNK + 77
    x = torch.randn(4, p, dtype=torch.float64)
    ref = SparseProjector(p, k=96, seed=5).project_flat(x)
    for block_size, cache in ((1, 0), (CHUNK, 10**9), (10**6, 0)):
        again = SparseProjector(p, k=96, seed=5, block_size=block_size, cache_bytes=cache)
        torch.testing.assert_close(again.project_flat(x), ref)
        torch.testing.assert_close(again.project_flat(x), ref)
    torch.testing.assert_close(SparseProjector(p + 1000, k=96, seed=5).project_flat(x), ref)
    assert (SparseProjector(p, k=96, seed=6).project_flat(x) - ref).abs().max() > 1e-3
    assert (SparseProjector(p, k=96, s=8, seed=5).project_flat(x) - ref).abs().max() > 1e-3


def test_sparse_inner_products_within_jl_bound_on_random_and_real_gradients():
    vecs = correlated_vectors(12, 3000, seed=1)
    assert_within_jl(vecs, SparseProjector(3000, k=1024, seed=7, block_size=700).project_flat(vecs), 1024)
    tok, model = lora_model(ALL)
    lg = LoraGradients(model)
    grads = lg.compute(collate(encodings(tok, 8), pad_id(tok)), SFTTask()).features
    assert lg.num_params > 2048
    assert_within_jl(grads, SparseProjector(lg.num_params, k=2048, seed=3).project_flat(grads), 2048)


def test_sparse_inner_products_are_unbiased():
    p = 200
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, p, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(1, p, generator=g, dtype=torch.float64)
    exact = (a * b).sum().item()
    est = torch.tensor(
        [
            (lambda q: (q.project_flat(a) * q.project_flat(b)).sum().item())(SparseProjector(p, k=8, s=2, seed=s))
            for s in range(400)
        ],
        dtype=torch.float64,
    )
    stderr = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 4 * stderr
    assert est.std() > 0.01 * abs(exact)


def test_sparse_sink_equals_projecting_materialised_gradients():
    tok, model = lora_model(QV)
    lg = LoraGradients(model)
    batch = collate(encodings(tok, 4), pad_id(tok), "left")
    flat = lg.compute(batch, SFTTask()).features
    proj = SparseProjector(lg.num_params, k=128, seed=1, block_size=600)
    torch.testing.assert_close(lg.compute(batch, SFTTask(), sink=proj).features, proj.project_flat(flat))


def test_bad_sparse_arguments_are_refused():
    with pytest.raises(ValueError, match="dividing k"):
        SparseProjector(10, k=10, s=4)
    with pytest.raises(ValueError, match="dividing k"):
        SparseProjector(10, k=8, s=0)
    with pytest.raises(ValueError, match="num_params"):
        SparseProjector(0)
    with pytest.raises(ValueError, match="outside"):
        SparseProjector(10, k=8).project_flat(torch.zeros(2, 8), offset=3)
