"""Run directories, TRL config defaults, fingerprints and data counts."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from trl import DPOConfig, SFTConfig

from gradsift.model.lora import LoraSettings, attach_lora
from gradsift.training.common import (
    CONFIG_FILE,
    LOG_FILE,
    DataCounts,
    RunState,
    comparable_config,
    complete_checkpoint,
    make_config,
    model_fingerprint,
    prepare_run_dir,
    read_log,
    tokenizer_fingerprint,
)

OWNED = (CONFIG_FILE, LOG_FILE, "result.json", "adapter")


def plain(cls, **kwargs):
    """A TRL config object that builds on a CPU-only machine (TRL's bf16 default fails there). The checkpointing
    field is named as this transformers version names it (``activation_checkpointing`` only from 5.2x)."""
    names = {f.name for f in dataclasses.fields(cls)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return cls(report_to="none", bf16=False, **{ckpt: False}, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")
def test_cpu_defaults_turn_off_bf16_and_checkpointing(tmp_path):
    # TRL alone turns both on (bf16 even fails on a CPU-only machine).
    cfg = make_config(SFTConfig, None, tmp_path)
    assert cfg.bf16 is False
    assert cfg.gradient_checkpointing is False
    assert cfg.report_to in ([], "none", ["none"])
    assert cfg.output_dir == str(tmp_path)


def test_dict_overrides_win_over_defaults(tmp_path):
    cfg = make_config(SFTConfig, {"learning_rate": 0.5, "activation_checkpointing": True}, tmp_path, {"seed": 3})
    assert cfg.learning_rate == 0.5
    assert cfg.gradient_checkpointing is True
    assert cfg.seed == 3


def test_required_values_are_set_and_contradictions_refused(tmp_path):
    cfg = make_config(SFTConfig, {}, tmp_path, required={"num_train_epochs": 2})
    assert cfg.num_train_epochs == 2
    with pytest.raises(ValueError, match="num_train_epochs"):
        make_config(SFTConfig, {"num_train_epochs": 3}, tmp_path, required={"num_train_epochs": 2})
    obj = plain(SFTConfig, output_dir=str(tmp_path), num_train_epochs=3)
    with pytest.raises(ValueError, match="num_train_epochs"):
        make_config(SFTConfig, obj, tmp_path, required={"num_train_epochs": 2})


def test_config_object_is_used_with_the_run_directory(tmp_path):
    obj = plain(DPOConfig, output_dir="elsewhere", beta=0.3)
    cfg = make_config(DPOConfig, obj, tmp_path / "run")
    assert cfg.output_dir == str(tmp_path / "run")
    assert cfg.beta == 0.3


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"no_such_field": 1}, ValueError),
        ({"output_dir": "/somewhere/else"}, ValueError),
        (["learning_rate", 1.0], TypeError),
        (plain(DPOConfig, output_dir="x"), TypeError),
    ],
)
def test_bad_config_is_refused(tmp_path, config, error):
    with pytest.raises(error):
        make_config(SFTConfig, config, tmp_path)


def test_comparable_config_ignores_bookkeeping(tmp_path):
    a = make_config(SFTConfig, {"logging_steps": 1, "save_steps": 5}, tmp_path / "a")
    b = make_config(SFTConfig, {"logging_steps": 7, "save_steps": 9}, tmp_path / "b")
    c = make_config(SFTConfig, {"learning_rate": 1e-3}, tmp_path / "c")
    assert comparable_config(a) == comparable_config(b)
    assert comparable_config(a) != comparable_config(c)
    json.dumps(comparable_config(a))


def test_model_fingerprint_tracks_weights_not_adapters(tiny_model):
    fp = model_fingerprint(tiny_model)
    other = copy.deepcopy(tiny_model)
    assert model_fingerprint(other) == fp
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1.0
    assert model_fingerprint(other) != fp
    # Injecting a LoRA adapter in place (as training does) leaves the base fingerprint unchanged.
    attach_lora(tiny_model, LoraSettings(), init="gaussian")
    assert any("lora_" in n for n, _ in tiny_model.named_parameters())
    assert model_fingerprint(tiny_model) == fp


def test_tokenizer_fingerprint_sees_the_template(tiny_tokenizer):
    fp = tokenizer_fingerprint(tiny_tokenizer)
    tiny_tokenizer.chat_template = tiny_tokenizer.chat_template + " "
    assert tokenizer_fingerprint(tiny_tokenizer) != fp


def test_data_counts():
    c = DataCounts()
    c.add("a", truncated=False, dropped=False)
    c.add("b", truncated=True, dropped=False)
    c.add("c", truncated=True, dropped=True)
    assert (c.n, c.n_used, c.n_truncated, c.n_dropped) == (3, 2, 1, 1)
    assert c.truncated_ids == ["b"] and c.dropped_ids == ["c"]
    for i in range(60):
        c.add(f"t{i}", truncated=True, dropped=False)
    assert c.n_truncated == 61 and len(c.truncated_ids) == 50


def _fake_checkpoint(out, step, complete=True):
    d = out / f"checkpoint-{step}"
    d.mkdir()
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_run_dir_fresh_resume_done(tmp_path):
    out = tmp_path / "run"
    rc = {"kind": "sft", "lr": 1.0}
    assert prepare_run_dir(out, rc, "result.json", OWNED, True, False) == (RunState.FRESH, None)
    assert json.loads((out / CONFIG_FILE).read_text()) == rc
    # An unfinished run: a complete checkpoint at step 2, a half-written one at 4, log lines past step 2.
    ckpt = _fake_checkpoint(out, 2)
    _fake_checkpoint(out, 4, complete=False)
    (out / LOG_FILE).write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"st')
    assert complete_checkpoint(out) == ckpt
    assert prepare_run_dir(out, rc, "result.json", OWNED, True, False) == (RunState.RESUME, ckpt)
    assert [r["step"] for r in read_log(out)] == [1, 2]
    # Without resume the unfinished run starts over.
    assert prepare_run_dir(out, rc, "result.json", OWNED, False, False) == (RunState.FRESH, None)
    assert not list(out.glob("checkpoint-*")) and not (out / LOG_FILE).exists()
    (out / "result.json").write_text("{}")
    assert prepare_run_dir(out, rc, "result.json", OWNED, True, False) == (RunState.DONE, None)
    assert prepare_run_dir(out, rc, "result.json", OWNED, True, True) == (RunState.FRESH, None)
    assert not (out / "result.json").exists()


def test_run_dir_refuses_other_settings_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out, {"lr": 1.0, "lora": {"rank": 8}}, "result.json", OWNED, True, False)
    (out / "result.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"lora\.rank"):
        prepare_run_dir(out, {"lr": 1.0, "lora": {"rank": 4}}, "result.json", OWNED, True, False)
    state, _ = prepare_run_dir(out, {"lr": 1.0, "lora": {"rank": 4}}, "result.json", OWNED, True, True)
    assert state is RunState.FRESH
    assert not (out / "result.json").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are removed


def test_run_dir_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not empty"):
            prepare_run_dir(tmp_path, {"a": 1}, "result.json", OWNED, True, overwrite)
    assert (tmp_path / "data.csv").exists()
