import json
import math
import random

import pytest
import torch
from _lora_setup import ALL, QV, encodings, lora_model, lora_params, pad_id
from safetensors.torch import load_file, save_file

from gradsift.data.tokenize import collate
from gradsift.gradients.grads import LoraGradients
from gradsift.gradients.precondition import AdamState, PreconditionedProjector, load_checkpoint_optimizer
from gradsift.gradients.projection import DenseProjector, SparseProjector
from gradsift.model.task import SFTTask
from gradsift.training.warmup import save_optimizer_state


def _state(p=7, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return AdamState(torch.randn(p, generator=g), torch.rand(p, generator=g) * 1e-3, **kw)


@pytest.mark.parametrize("eps_mode", ["outside", "inside"])
def test_precondition_matches_the_formula_by_hand(eps_mode):
    st = _state(6, beta1=0.8, beta2=0.95, eps=1e-3, eps_mode=eps_mode)
    grads = torch.randn(3, 4, dtype=torch.float64)
    got = st.precondition(grads, offset=2)
    for b in range(3):
        for j in range(4):
            g, m, v = grads[b, j].item(), st.exp_avg[2 + j].item(), st.exp_avg_sq[2 + j].item()
            m2 = 0.8 * m + 0.2 * g
            v2 = 0.95 * v + 0.05 * g * g
            want = m2 / (math.sqrt(v2) + 1e-3) if eps_mode == "outside" else m2 / math.sqrt(v2 + 1e-3)
            assert got[b, j].item() == pytest.approx(want, rel=1e-6)


def test_precondition_uses_the_moments_adamw_itself_would_store():
    """m' and v' are exactly torch's AdamW moments after one more step with gradient g."""
    w = torch.nn.Parameter(torch.randn(5, 3))
    opt = torch.optim.AdamW([w], betas=(0.85, 0.99), eps=1e-6)
    for _ in range(3):
        w.grad = torch.randn(5, 3)
        opt.step()
    before = AdamState(
        opt.state[w]["exp_avg"].flatten().clone(),
        opt.state[w]["exp_avg_sq"].flatten().clone(),
        0.85,
        0.99,
        1e-6,
        eps_mode="outside",  # Adam's own form, to compare with the step AdamW takes
    )
    g = torch.randn(5, 3)
    w.grad = g.clone()
    opt.step()
    m2, v2 = opt.state[w]["exp_avg"].flatten(), opt.state[w]["exp_avg_sq"].flatten()
    torch.testing.assert_close(before.precondition(g.flatten()[None])[0], m2 / (v2.sqrt() + 1e-6))


def _train_two_steps(model, tok, params, **adam):
    opt = torch.optim.AdamW(params, **adam)
    batch = collate(encodings(tok, 3), pad_id(tok))
    for _ in range(2):
        opt.zero_grad()
        SFTTask().losses(model, batch).sum().backward()
        opt.step()
    return opt


def _expected(opt, model):
    by_param = {id(p): opt.state[p] for p in opt.state}
    ps = lora_params(model)
    return (
        torch.cat([by_param[id(p)]["exp_avg"].flatten() for p in ps]),
        torch.cat([by_param[id(p)]["exp_avg_sq"].flatten() for p in ps]),
    )


@pytest.mark.parametrize("layout", ["positional", "named-shuffled", "hf-trainer-groups"])
def test_loader_maps_a_real_adamw_state_to_lora_order(tmp_path, layout):
    """Whatever order the optimizer holds its parameters in, a warm-up checkpoint's moments come back in the
    order of the model's LoRA weights, the layout of its flat gradients."""
    tok, model = lora_model(ALL, dtype=torch.float32)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adam = {"betas": (0.8, 0.97), "eps": 1e-7, "lr": 1e-2}
    if layout == "named-shuffled":
        random.Random(0).shuffle(named)
        opt = _train_two_steps(model, tok, named, **adam)
    elif layout == "hf-trainer-groups":
        groups = [{"params": [p for _, p in named], "weight_decay": 0.1}, {"params": [], "weight_decay": 0.0}]
        opt = _train_two_steps(model, tok, groups, **adam)
    else:
        opt = _train_two_steps(model, tok, [p for _, p in named], **adam)
    save_optimizer_state(model, opt, tmp_path)
    lg = LoraGradients(model)
    m, v, (beta1, beta2), eps = load_checkpoint_optimizer(tmp_path)
    st = AdamState(m, v, beta1, beta2, eps)
    m, v = _expected(opt, model)
    torch.testing.assert_close(st.exp_avg, m, rtol=0, atol=0)
    torch.testing.assert_close(st.exp_avg_sq, v, rtol=0, atol=0)
    assert (st.beta1, st.beta2, st.eps) == (0.8, 0.97, 1e-7)
    assert st.num_params == lg.num_params and (st.exp_avg != 0).all()
    saved = json.loads((tmp_path / "optimizer.json").read_text())["params"]
    assert [(p["name"], tuple(p["shape"])) for p in saved] == [(x.param_name, x.shape) for x in lg.layers]


def test_loader_refuses_incomplete_or_unsafe_checkpoints(tmp_path):
    tok, model = lora_model(QV, dtype=torch.float32)
    opt = _train_two_steps(model, tok, lora_params(model))
    save_optimizer_state(model, opt, tmp_path)

    meta = json.loads((tmp_path / "optimizer.json").read_text())
    (tmp_path / "optimizer.json").write_text(json.dumps({**meta, "n_params": 5}))
    with pytest.raises(ValueError, match="n_params=5"):
        load_checkpoint_optimizer(tmp_path)

    (tmp_path / "optimizer.json").write_text(json.dumps(meta))
    moments = load_file(str(tmp_path / "optimizer.safetensors"))
    save_file({"exp_avg": moments["exp_avg"]}, str(tmp_path / "optimizer.safetensors"))
    with pytest.raises(ValueError, match="lacks exp_avg_sq"):
        load_checkpoint_optimizer(tmp_path)

    # A pickled optimizer state (HF Trainer's optimizer.pt, LESS's optimizer.bin) is never read.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(opt.state_dict(), pickled / "optimizer.pt")
    with pytest.raises(FileNotFoundError, match="optimizer.safetensors"):
        load_checkpoint_optimizer(pickled)
    with pytest.raises(FileNotFoundError):
        load_checkpoint_optimizer(tmp_path / "missing")


def test_preconditioned_projector_streams_the_materialised_pipeline():
    tok, model = lora_model(QV)
    lg = LoraGradients(model)
    batch = collate(encodings(tok, 4), pad_id(tok), "left")
    flat = lg.compute(batch, SFTTask()).features
    g = torch.Generator().manual_seed(0)
    st = AdamState(
        torch.randn(lg.num_params, generator=g) * 1e-3, torch.rand(lg.num_params, generator=g) * 1e-6, eps=1e-8
    )
    dense = DenseProjector(lg.num_params, k=256, seed=2)
    pre = PreconditionedProjector(st, dense)
    streamed = lg.compute(batch, SFTTask(), sink=pre).features
    torch.testing.assert_close(streamed, dense.project_flat(st.precondition(flat)))
    plain = lg.compute(batch, SFTTask(), sink=dense).features
    assert (streamed - plain).abs().max() > 1e-3 * plain.abs().max()  # preconditioning really changed them
    meta = pre.describe()
    assert meta["preconditioner"] == "adam" and meta["dim"] == 256 and pre.seed == 2
    with pytest.raises(ValueError, match="covers"):
        PreconditionedProjector(st, DenseProjector(lg.num_params + 1, k=8))


def test_adam_state_defaults_to_less_code_form():
    # LESS's released code (the one behind its numbers) divides by sqrt(v' + eps), not sqrt(v') + eps.
    m, v = torch.tensor([1e-3, -2e-3]), torch.tensor([1e-14, 4e-12])
    st = AdamState(m, v)
    assert st.eps_mode == "inside"
    g = torch.tensor([[1e-4, 3e-4]])
    m_new, v_new = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g.square()
    torch.testing.assert_close(st.precondition(g), m_new / torch.sqrt(v_new + 1e-8))
    outside = AdamState(m, v, eps_mode="outside").precondition(g)
    assert (outside - st.precondition(g)).abs().max() > 0.1 * outside.abs().max()  # the forms really differ


def test_sparse_preconditioned_projector_streams_the_materialised_pipeline():
    tok, model = lora_model(QV)
    lg = LoraGradients(model)
    batch = collate(encodings(tok, 4), pad_id(tok), "left")
    flat = lg.compute(batch, SFTTask()).features
    g = torch.Generator().manual_seed(1)
    st = AdamState(torch.randn(lg.num_params, generator=g) * 1e-3, torch.rand(lg.num_params, generator=g) * 1e-6)
    sparse = SparseProjector(lg.num_params, k=256, seed=2)
    streamed = lg.compute(batch, SFTTask(), sink=PreconditionedProjector(st, sparse)).features
    torch.testing.assert_close(streamed, st.precondition(flat) @ sparse.matrix(0, lg.num_params, dtype=flat.dtype))


def test_adam_state_validation():
    with pytest.raises(ValueError, match="flat vectors"):
        AdamState(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="negative"):
        AdamState(torch.zeros(3), -torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        AdamState(torch.tensor([0.0, float("nan")]), torch.zeros(2))
    with pytest.raises(ValueError, match="betas"):
        AdamState(torch.zeros(3), torch.zeros(3), beta1=1.0)
    with pytest.raises(ValueError, match="eps must"):
        AdamState(torch.zeros(3), torch.zeros(3), eps=0.0)
    with pytest.raises(ValueError, match="eps_mode"):
        AdamState(torch.zeros(3), torch.zeros(3), eps_mode="middle")  # type: ignore[arg-type]
    st = _state(5)
    with pytest.raises(ValueError, match="outside"):
        st.precondition(torch.zeros(2, 4), offset=2)
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        st.precondition(torch.zeros(5))
