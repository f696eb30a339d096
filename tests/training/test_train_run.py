"""`gradsift train`'s API: settings and their checks, the TRL config they stand for, SFT and DPO runs from data
files, reuse of a finished run, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from trainkit import make_examples, make_pairs
from trl import DPOConfig, SFTConfig

from gradsift.data.errors import DataError
from gradsift.data.load import write_jsonl
from gradsift.model.load import ModelSettings, load_model
from gradsift.model.lora import load_adapter
from gradsift.training.common import make_config, read_log
from gradsift.training.run import SETTINGS_FILE, TrainConfig, run_train

torch.set_num_threads(1)

QUICK = {"max_steps": 2, "batch_size": 2, "max_length": 64, "lr": 5e-3, "device": "cpu", "progress": False}


def sft_file(tmp_path, n=6):
    rows = [{"id": e.id, "messages": e.messages} for e in make_examples(n)]
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, rows)
    return path


def pair_file(tmp_path, n=6):
    rows = [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in make_pairs(n)]
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "dpo"}, "kind must be"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"max_steps": 0}, "max_steps must be -1"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"batch_size": 0}, "batch_size and grad_accum"),
        ({"max_length": 4}, "max_length must be at least 8"),
        ({"warmup": -0.1}, "warmup must be >= 0"),
        ({"beta": 0}, "beta must be positive"),
        ({"lora_rank": 0}, "LoRA rank"),
        ({"lora_targets": []}, "target_modules"),
        ({"limit": -1}, "limit must be >= 0"),
        ({"on_invalid": "ignore"}, "on_invalid"),
        ({"dtype": "int8"}, "dtype must be"),
        ({"options": ["x"]}, "options must be a mapping"),
    ],
)
def test_bad_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d.jsonl", out="o", **change)


def test_settings_become_the_trl_config(tmp_path):
    cfg = TrainConfig(
        data="d",
        out=str(tmp_path),
        epochs=2.5,
        lr=3e-4,
        batch_size=3,
        grad_accum=2,
        max_length=128,
        warmup=0.1,
        seed=7,
        device="cpu",
        lora_targets="q_proj, k_proj",
        options={"lr_scheduler_type": "constant", "max_length": 96},
    )
    assert cfg.lora_targets == ["q_proj", "k_proj"] and cfg.lora_settings().target_modules == ["q_proj", "k_proj"]
    sft = make_config(SFTConfig, cfg.trainer_config(), tmp_path)
    assert (sft.num_train_epochs, sft.learning_rate, sft.per_device_train_batch_size) == (2.5, 3e-4, 3)
    assert (sft.gradient_accumulation_steps, sft.seed, sft.use_cpu) == (2, 7, True)
    assert sft.lr_scheduler_type == "constant" and sft.max_length == 96  # options win
    assert sft.warmup_steps == 0.1 and sft.bf16 is False
    assert (
        make_config(SFTConfig, TrainConfig(data="d", out="o", warmup=5).trainer_config(), tmp_path).warmup_steps == 5
    )
    dpo = make_config(DPOConfig, cfg.trainer_config(), tmp_path)
    assert dpo.learning_rate == 3e-4


def test_sft_from_a_file_writes_a_loadable_adapter_and_is_reused(tmp_path, tiny_model_dir):
    cfg = TrainConfig(data=str(sft_file(tmp_path)), out=str(tmp_path / "run"), model=str(tiny_model_dir), **QUICK)
    result = run_train(cfg)
    assert result.global_step == 2 and not result.reused and result.counts.n_used == 6
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "result.json").exists()
    assert [r["step"] for r in read_log(run)] == [1, 2]
    settings = json.loads((run / SETTINGS_FILE).read_text())
    assert settings["settings"]["lr"] == 5e-3 and settings["n_records"] == 6 and settings["model"]["fingerprint"]
    assert not list(run.glob("checkpoint-*"))
    # the saved adapter reproduces the trained model's outputs
    base = load_model(ModelSettings(model=str(tiny_model_dir), device="cpu"))
    reloaded = load_adapter(base.model, run / "adapter", trainable=False)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits, atol=1e-5)
    again = run_train(cfg)
    assert again.reused and again.global_step == 2
    with pytest.raises(ValueError, match="different settings"):
        run_train(TrainConfig(**{**cfg.__dict__, "lr": 1e-3}))


def test_dpo_from_a_pair_file(tmp_path, tiny_model_dir):
    cfg = TrainConfig(
        data=str(pair_file(tmp_path)),
        out=str(tmp_path / "dpo"),
        kind="pair",
        model=str(tiny_model_dir),
        beta=0.2,
        **QUICK,
    )
    result = run_train(cfg)
    assert result.global_step == 2
    run_cfg = json.loads((tmp_path / "dpo" / "config.json").read_text())
    assert run_cfg["kind"] == "dpo" and run_cfg["trainer"]["beta"] == 0.2
    assert "rewards/margins" in read_log(tmp_path / "dpo")[-1]


def test_limit_and_records_of_the_wrong_kind(tmp_path, tiny_model_dir):
    cfg = TrainConfig(
        data=str(sft_file(tmp_path, 8)), out=str(tmp_path / "r"), model=str(tiny_model_dir), limit=3, **QUICK
    )
    assert run_train(cfg).counts.n == 3
    with pytest.raises(ValueError, match="preference pairs"):
        run_train(TrainConfig(data="x", out=str(tmp_path / "p"), kind="pair", **QUICK), records=make_examples(2))
    with pytest.raises(ValueError, match="are preference pairs"):
        run_train(TrainConfig(data="x", out=str(tmp_path / "s"), **QUICK), records=make_pairs(2))


def test_bad_data_names_the_file_and_line(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": ""}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2"):
        run_train(TrainConfig(data=str(bad), out=str(tmp_path / "o"), model=str(tiny_model_dir), **QUICK))
    with pytest.raises(DataError, match="no such file"):
        run_train(TrainConfig(data=str(tmp_path / "none.jsonl"), out=str(tmp_path / "o"), **QUICK))
    # a pair file read as SFT trains on the chosen responses; an SFT file read as pairs is refused
    with pytest.raises(DataError, match="rejected"):
        run_train(TrainConfig(data=str(sft_file(tmp_path)), out=str(tmp_path / "o2"), kind="pair", **QUICK))


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    """The settings `run_train` derives are the same on a rerun, so the run directory's checkpoint is resumed."""
    import gradsift.training.common as common

    cfg = TrainConfig(
        data=str(sft_file(tmp_path, 8)),
        out=str(tmp_path / "run"),
        model=str(tiny_model_dir),
        **{**QUICK, "max_steps": 4},
        save_steps=2,
    )

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after training, before the run is marked done

    real_finish = common.finish_run
    monkeypatch.setattr(common, "finish_run", killed)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    monkeypatch.setattr(common, "finish_run", real_finish)
    result = run_train(cfg)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-4")
    assert result.global_step == 4 and not list((tmp_path / "run").glob("checkpoint-*"))
