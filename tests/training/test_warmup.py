"""LESS warm-up: per-epoch adapters, Adam state and learning rates; manifest reuse."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel
from trainkit import FAST, make_examples
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, get_scheduler

from gradsift.gradients.precondition import load_checkpoint_optimizer
from gradsift.training.warmup import (
    WarmupSettings,
    load_warmup,
    run_warmup,
    sample_pool,
    save_optimizer_state,
)

# The warm-up saves per epoch itself; the shared fast config turns saving off.
CFG = {k: v for k, v in FAST.items() if k != "save_strategy"} | {"warmup_steps": 2, "lr_scheduler_type": "linear"}
SETTINGS = WarmupSettings(fraction=0.25, epochs=3, seed=1)


class CaptureOptimizer(TrainerCallback):
    """Copies the trainer's own Adam moments and LoRA weights at the end of every epoch."""

    def __init__(self):
        self.seen = {}

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.seen[round(state.epoch)] = {
            "names": [n for n, _ in params],
            "exp_avg": [optimizer.state[p]["exp_avg"].clone() for _, p in params],
            "exp_avg_sq": [optimizer.state[p]["exp_avg_sq"].clone() for _, p in params],
            "weights": {n: p.detach().clone() for n, p in params},
            "betas": optimizer.param_groups[0]["betas"],
            "eps": optimizer.param_groups[0]["eps"],
        }


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize(
    "kwargs",
    [{"fraction": 0.0}, {"fraction": 1.5}, {"epochs": 0}, {"min_examples": 0}, {"truncation": "middle"}],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        WarmupSettings(**kwargs)


def test_sample_is_seeded_sized_and_in_pool_order():
    pool = make_examples(40)
    a = sample_pool(pool, WarmupSettings(fraction=0.1, seed=3))
    assert len(a) == 4
    assert [e.id for e in a] == [e.id for e in sample_pool(pool, WarmupSettings(fraction=0.1, seed=3))]
    assert [e.id for e in a] != [e.id for e in sample_pool(pool, WarmupSettings(fraction=0.1, seed=4))]
    idx = [pool.index(e) for e in a]
    assert idx == sorted(idx)
    assert len(sample_pool(make_examples(10), WarmupSettings(fraction=0.05, min_examples=3))) == 3
    with pytest.raises(ValueError, match="empty"):
        sample_pool([], WarmupSettings())


def test_warmup_writes_each_epoch(tiny_model_dir, tmp_path):
    tmp_path = tmp_path / "warmup"
    model, tok = load(tiny_model_dir)
    pool = make_examples(40)
    capture = CaptureOptimizer()
    res = run_warmup(model, tok, pool, tmp_path, SETTINGS, config=CFG, callbacks=[capture])

    # 10 sampled examples at batch size 4: 3 steps per epoch, 9 in all.
    assert res.example_ids == [e.id for e in sample_pool(pool, SETTINGS)]
    assert [c.epoch for c in res.checkpoints] == [1, 2, 3]
    assert [c.step for c in res.checkpoints] == [3, 6, 9]
    assert not list(tmp_path.glob("checkpoint-*"))

    # Each epoch's lr is the mean of the scheduler's rates over that epoch's steps, rebuilt independently.
    total, per_epoch = 9, 3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=CFG["learning_rate"])
    sched = get_scheduler("linear", opt, num_warmup_steps=2, num_training_steps=total)
    rates = []
    for _ in range(total):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    expected = [sum(rates[k * per_epoch : (k + 1) * per_epoch]) / per_epoch for k in range(3)]
    assert res.lrs == pytest.approx(expected, rel=1e-9)
    assert len(set(res.lrs)) == 3

    for c in res.checkpoints:
        seen = capture.seen[c.epoch]
        m, v, betas, eps = load_checkpoint_optimizer(c.path)
        assert m.dtype == v.dtype == torch.float32
        torch.testing.assert_close(m, torch.cat([t.reshape(-1) for t in seen["exp_avg"]]), rtol=0, atol=0)
        torch.testing.assert_close(v, torch.cat([t.reshape(-1) for t in seen["exp_avg_sq"]]), rtol=0, atol=0)
        assert betas == tuple(seen["betas"]) and eps == seen["eps"]
        meta = json.loads((c.path / "optimizer.json").read_text())
        assert [p["name"] for p in meta["params"]] == seen["names"]
        assert meta["step"] == c.step
        assert all("lora_" in n for n in seen["names"])
        # The adapter saved for the epoch is the model at the end of that epoch.
        base, _ = load(tiny_model_dir)
        loaded = PeftModel.from_pretrained(base, str(c.path))
        for n, p in loaded.named_parameters():
            if "lora_" in n:
                torch.testing.assert_close(p, seen["weights"][n], rtol=0, atol=0)

    manifest = json.loads((tmp_path / "warmup.json").read_text())
    assert manifest["lrs"] == res.lrs
    assert manifest["example_ids"] == res.example_ids
    assert manifest["settings"] == SETTINGS.as_dict()
    assert [c["path"] for c in manifest["checkpoints"]] == ["epoch-1", "epoch-2", "epoch-3"]
    assert load_warmup(tmp_path).lrs == res.lrs


def test_warmup_is_reused_and_mismatches_refused(tiny_model_dir, tmp_path):
    tmp_path = tmp_path / "warmup"
    pool = make_examples(16)
    settings = WarmupSettings(fraction=0.25, epochs=2)
    model, tok = load(tiny_model_dir)
    first = run_warmup(model, tok, pool, tmp_path, settings, config=CFG)
    stamp = (tmp_path / "epoch-1" / "optimizer.safetensors").stat().st_mtime_ns

    model, tok = load(tiny_model_dir)
    again = run_warmup(model, tok, pool, tmp_path, settings, config=CFG)
    assert again.reused and again.lrs == first.lrs and again.example_ids == first.example_ids
    assert (tmp_path / "epoch-1" / "optimizer.safetensors").stat().st_mtime_ns == stamp

    other_seed = WarmupSettings(fraction=0.25, epochs=2, seed=5)
    with pytest.raises(ValueError, match="warmup.seed"):
        run_warmup(model, tok, pool, tmp_path, other_seed, config=CFG)
    with pytest.raises(ValueError, match="data_fingerprint"):
        run_warmup(model, tok, make_examples(17), tmp_path, settings, config=CFG)
    redo = run_warmup(model, tok, pool, tmp_path, other_seed, config=CFG, overwrite=True)
    assert not redo.reused and len(redo.checkpoints) == 2
    assert json.loads((tmp_path / "warmup.json").read_text())["settings"]["seed"] == 5


class Interrupted(Exception):
    pass


class InterruptAtEpoch(TrainerCallback):
    """Stands in for a kill: raises when epoch `epoch` begins, after the previous epoch was checkpointed."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        if round(state.epoch) == self.epoch - 1:
            raise Interrupted


def test_interrupted_warmup_resumes_to_the_same_checkpoints(tiny_model_dir, tmp_path):
    pool = make_examples(16)
    settings = WarmupSettings(fraction=0.5, epochs=3)
    model, tok = load(tiny_model_dir)
    with pytest.raises(Interrupted):
        run_warmup(model, tok, pool, tmp_path / "cut", settings, config=CFG, callbacks=[InterruptAtEpoch(3)])
    assert sorted(p.name for p in (tmp_path / "cut").glob("epoch-*")) == ["epoch-1", "epoch-2"]
    assert list((tmp_path / "cut").glob("checkpoint-*")) and not (tmp_path / "cut" / "warmup.json").exists()
    stamp = (tmp_path / "cut" / "epoch-2" / "optimizer.safetensors").stat().st_mtime_ns

    model, tok = load(tiny_model_dir)
    resumed = run_warmup(model, tok, pool, tmp_path / "cut", settings, config=CFG)
    # Resumed after epoch 2, not retrained from the start.
    assert (tmp_path / "cut" / "epoch-2" / "optimizer.safetensors").stat().st_mtime_ns == stamp
    model, tok = load(tiny_model_dir)
    straight = run_warmup(model, tok, pool, tmp_path / "straight", settings, config=CFG)
    assert resumed.lrs == pytest.approx(straight.lrs, rel=1e-12)
    assert [c.step for c in resumed.checkpoints] == [c.step for c in straight.checkpoints]
    for a, b in zip(resumed.checkpoints, straight.checkpoints, strict=True):
        for x, y in zip(load_checkpoint_optimizer(a.path)[:2], load_checkpoint_optimizer(b.path)[:2], strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)


def test_warmup_refuses_settings_it_cannot_honour(tiny_model, tiny_tokenizer, tmp_path):
    pool = make_examples(8)
    with pytest.raises(ValueError, match="num_train_epochs"):
        run_warmup(tiny_model, tiny_tokenizer, pool, tmp_path, SETTINGS, config={**CFG, "num_train_epochs": 1})
    with pytest.raises(ValueError, match="save_strategy"):
        run_warmup(tiny_model, tiny_tokenizer, pool, tmp_path, SETTINGS, config={**CFG, "save_strategy": "steps"})
    with pytest.raises(ValueError, match="AdamW"):
        run_warmup(tiny_model, tiny_tokenizer, pool, tmp_path, SETTINGS, config={**CFG, "optim": "sgd"})


def test_optimizer_state_needs_adam_moments(tiny_model, tmp_path):
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    tiny_model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="AdamW"):
        save_optimizer_state(tiny_model, opt, tmp_path)


def test_optimizer_state_round_trip_and_bad_files(tiny_model, tmp_path):
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, betas=(0.8, 0.95), eps=1e-6)
    tiny_model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    save_optimizer_state(tiny_model, opt, tmp_path)
    m, v, betas, eps = load_checkpoint_optimizer(tmp_path)
    assert m.shape == (sum(p.numel() for p in params),)
    torch.testing.assert_close(v, torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params]))
    assert betas == (0.8, 0.95) and math.isclose(eps, 1e-6)

    meta = json.loads((tmp_path / "optimizer.json").read_text())
    meta["n_params"] += 1
    (tmp_path / "optimizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="n_params"):
        load_checkpoint_optimizer(tmp_path)
    del meta["eps"]
    (tmp_path / "optimizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="eps"):
        load_checkpoint_optimizer(tmp_path)
    (tmp_path / "optimizer.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        load_checkpoint_optimizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_warmup(tmp_path)
