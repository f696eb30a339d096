import pytest
import torch
from _lora_setup import ALL, QV, assert_close_rows, encodings, lora_model, lora_params, pad_id, reference_grad, single
from peft import LoraConfig, get_peft_model
from testkit import make_tiny_model, make_tiny_tokenizer

from gradsift.data.tokenize import collate, encode_messages
from gradsift.gradients.grads import DirectionSink, FlatGradients, LoraGradients, pair_groups
from gradsift.model.task import DPOTask, SFTTask


@pytest.mark.parametrize("targets", [QV, ALL], ids=["qv", "all-linear"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batched_gradients_match_one_backward_per_example(targets, side, reduction):
    tok, model = lora_model(targets)
    encs = encodings(tok, 5)
    assert len({len(e) for e in encs}) == 5
    task = SFTTask(reduction)
    res = LoraGradients(model).compute(collate(encs, pad_id(tok), side), task)
    # Reference: each example alone, unpadded, one ordinary backward.
    want = torch.stack([reference_grad(model, single(tok, e), task) for e in encs])
    assert_close_rows(res.features, want, cos_min=1 - 1e-10, rel_max=1e-10)
    loss_ref = torch.cat([task.losses(model, single(tok, e)).detach() for e in encs])
    torch.testing.assert_close(res.losses, loss_ref)
    assert not res.bad.any()


def test_float32_meets_the_acceptance_thresholds():
    tok, model = lora_model(ALL, dtype=torch.float32)
    encs = encodings(tok, 4, seed=3)
    res = LoraGradients(model).compute(collate(encs, pad_id(tok), "left"), SFTTask())
    assert res.features.dtype == torch.float32
    want = torch.stack([reference_grad(model, single(tok, e), SFTTask()) for e in encs])
    assert_close_rows(res.features, want)


def test_padding_content_does_not_leak():
    tok, model = lora_model(ALL)
    encs = encodings(tok, 4)
    lg = LoraGradients(model)
    for side in ("left", "right"):
        batch = collate(encs, pad_id(tok), side)
        garbage = dict(batch)
        pad = batch["attention_mask"] == 0
        garbage["input_ids"] = torch.where(pad, torch.randint(3, 200, pad.shape), batch["input_ids"])
        assert (garbage["input_ids"] != batch["input_ids"]).any()
        a, b = lg.compute(batch, SFTTask()).features, lg.compute(garbage, SFTTask()).features
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _pairs(tok, n=3):
    chosen, rejected = [], []
    for i in range(n):
        prompt = [{"role": "user", "content": "question " + "x" * (2 + 5 * i)}]
        chosen.append(encode_messages(tok, prompt + [{"role": "assistant", "content": "good " * (1 + i)}], 256))
        rejected.append(encode_messages(tok, prompt + [{"role": "assistant", "content": "bad answer" * (3 - i)}], 256))
    return chosen, rejected


@pytest.mark.parametrize("side", ["right", "left"])
def test_dpo_pair_gradients_match_autograd_per_pair(side):
    tok, model = lora_model(QV)
    chosen, rejected = _pairs(tok)
    task = DPOTask(beta=0.5)
    batch = collate(chosen + rejected, pad_id(tok), side)
    res = LoraGradients(model).compute(batch, task, groups=pair_groups(len(chosen)))
    assert res.features.shape[0] == len(chosen)
    want, loss_ref = [], []
    for c, r in zip(chosen, rejected, strict=True):
        one = collate([c, r], pad_id(tok), side)
        want.append(reference_grad(model, one, task))
        loss_ref.append(task.losses(model, one).detach())
    assert_close_rows(res.features, torch.stack(want), cos_min=1 - 1e-10, rel_max=1e-10)
    torch.testing.assert_close(res.losses, torch.cat(loss_ref))


def test_groups_sum_rows_for_arbitrary_groupings():
    tok, model = lora_model(QV)
    encs = encodings(tok, 5)
    lg = LoraGradients(model)
    batch = collate(encs, pad_id(tok))
    rows = lg.compute(batch, SFTTask("sum")).features

    class GroupedSum:
        """Three losses: rows {0, 3}, {1}, {2, 4} summed."""

        def losses(self, model, batch):
            per_row = SFTTask("sum").losses(model, batch)
            return torch.stack([per_row[0] + per_row[3], per_row[1], per_row[2] + per_row[4]])

    grouped = lg.compute(batch, GroupedSum(), groups=torch.tensor([0, 1, 2, 0, 2])).features
    torch.testing.assert_close(grouped, torch.stack([rows[0] + rows[3], rows[1], rows[2] + rows[4]]))


def test_bad_groups_are_refused():
    tok, model = lora_model(QV)
    chosen, rejected = _pairs(tok, 2)
    lg = LoraGradients(model)
    batch = collate(chosen + rejected, pad_id(tok))
    task = DPOTask()
    with pytest.raises(ValueError, match="pair_groups"):
        lg.compute(batch, task)
    with pytest.raises(ValueError, match="shape"):
        lg.compute(batch, task, groups=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="lie in"):
        lg.compute(batch, task, groups=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="no rows"):
        lg.compute(batch, task, groups=torch.tensor([0, 0, 0, 0]))
    with pytest.raises(ValueError, match="integer"):
        lg.compute(batch, task, groups=torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="num_pairs"):
        pair_groups(0)


class _Poisoned:
    """SFT losses with row 1 multiplied by NaN and row 2 by infinity."""

    def losses(self, model, batch):
        scale = torch.ones(batch["input_ids"].shape[0], dtype=torch.float64)
        scale[1], scale[2] = float("nan"), float("inf")
        return SFTTask().losses(model, batch) * scale


def test_non_finite_rows_are_flagged_not_hidden():
    tok, model = lora_model(QV)
    encs = encodings(tok, 4)
    res = LoraGradients(model).compute(collate(encs, pad_id(tok)), _Poisoned())
    assert res.bad.tolist() == [False, True, True, False]
    assert not torch.isfinite(res.features[1]).all() and not torch.isfinite(res.features[2]).all()
    want = torch.stack([reference_grad(model, single(tok, encs[i]), SFTTask()) for i in (0, 3)])
    assert_close_rows(res.features[[0, 3]], want, cos_min=1 - 1e-10, rel_max=1e-10)


def test_dropout_is_off_and_model_state_is_restored():
    tok, model = lora_model(QV, dropout=0.5)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(False)
    model.train()
    encs = encodings(tok, 3)
    batch = collate(encs, pad_id(tok))
    lg = LoraGradients(model)
    a = lg.compute(batch, SFTTask()).features
    b = lg.compute(batch, SFTTask()).features
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.training and all(m.training for m in model.modules())
    assert not any(p.requires_grad for p in lora_params(model))
    assert all(p.grad is None for p in lora_params(model))
    model.eval()
    want = torch.stack([reference_grad(model, single(tok, e), SFTTask()) for e in encs])
    assert_close_rows(a, want, cos_min=1 - 1e-10, rel_max=1e-10)


def test_layers_follow_named_parameters_and_flat_layout():
    tok, model = lora_model(ALL)
    lg = LoraGradients(model)
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert [layer.param_name for layer in lg.layers] == names
    assert [layer.role for layer in lg.layers] == ["A", "B"] * (len(names) // 2)
    offset = 0
    for layer, p in zip(lg.layers, lora_params(model), strict=True):
        assert layer.offset == offset and layer.shape == tuple(p.shape)
        offset += p.numel()
    assert lg.num_params == offset == sum(p.numel() for p in lora_params(model))


def test_unsupported_models_are_refused():
    tok, model = lora_model(QV)
    with pytest.raises(ValueError, match="no active LoRA"):
        LoraGradients(make_tiny_model(len(tok)))
    norm = next(p for n, p in model.named_parameters() if "norm" in n)
    norm.requires_grad_(True)
    with pytest.raises(ValueError, match="outside the LoRA"):
        LoraGradients(model)
    with pytest.raises(ValueError, match="variant"):
        LoraGradients(_dora_model())
    _, merged = lora_model(QV)
    merged.merge_adapter()
    with pytest.raises(ValueError, match="merged"):
        LoraGradients(merged)


def _dora_model():
    base = make_tiny_model(len(make_tiny_tokenizer()))
    return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM"))


def test_tasks_that_skip_or_repeat_the_adapter_are_refused():
    tok, model = lora_model(QV)
    batch = collate(encodings(tok, 2), pad_id(tok))
    lg = LoraGradients(model)

    class Twice:
        def losses(self, model, batch):
            return SFTTask().losses(model, batch) + SFTTask().losses(model, batch)

    class NoAdapter:
        def losses(self, model, batch):
            with model.disable_adapter():
                return SFTTask().losses(model, batch)

    for task in (Twice(), NoAdapter()):
        with pytest.raises(ValueError, match="exactly once"):
            lg.compute(batch, task)


def test_malformed_batches_are_refused():
    tok, model = lora_model(QV)
    lg = LoraGradients(model)
    batch = collate(encodings(tok, 2), pad_id(tok))
    with pytest.raises(ValueError, match="input_ids"):
        lg.compute({**batch, "input_ids": batch["input_ids"][0]}, SFTTask())
    with pytest.raises(ValueError, match="attention_mask"):
        lg.compute({**batch, "attention_mask": batch["attention_mask"][:, 1:]}, SFTTask())

    class Scalar:
        def losses(self, model, batch):
            return SFTTask().losses(model, batch).sum()

    with pytest.raises(ValueError, match="one loss per example"):
        lg.compute(batch, Scalar())
    with pytest.raises(ValueError, match="positive"):
        FlatGradients(0)


def test_direction_sink_refuses_a_direction_of_the_wrong_size(tiny_model):
    from gradsift.model.lora import LoraSettings, attach_lora

    grads = LoraGradients(attach_lora(tiny_model, LoraSettings()))
    DirectionSink(torch.zeros(grads.num_params), grads.layers)
    for bad in (torch.zeros(grads.num_params + 1), torch.zeros(2, grads.num_params // 2)):
        with pytest.raises(ValueError, match="direction must be"):
            DirectionSink(bad, grads.layers)


def test_direction_sink_is_the_inner_product_of_flat_gradients_with_the_direction():
    tok, model = lora_model(QV)
    chosen, rejected = _pairs(tok)
    batch = collate(chosen + rejected, pad_id(tok), "left")
    grads, task, groups = LoraGradients(model), DPOTask(beta=0.5), pair_groups(len(chosen))
    flat = grads.compute(batch, task, groups=groups).features
    direction = torch.randn(grads.num_params, generator=torch.Generator().manual_seed(0), dtype=flat.dtype)
    got = grads.compute(batch, task, sink=DirectionSink(direction, grads.layers), groups=groups).features
    assert got.shape == (len(chosen), 1)
    torch.testing.assert_close(got[:, 0], flat @ direction, rtol=1e-10, atol=1e-12)
