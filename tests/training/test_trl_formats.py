"""A selection written with ``--write-format messages`` or ``prompt-completion`` is a file TRL reads as it is:
``gradsift select`` writes it, ``datasets`` loads it as JSON, and TRL's own `SFTTrainer` (examples) or
`DPOTrainer` (pairs), with no gradsift code in between, trains one step on it."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import load_dataset
from trainkit import FAST
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from gradsift.data.demo import write_demo_data
from gradsift.data.load import write_jsonl
from gradsift.pipeline import SelectConfig, run_select
from gradsift.training.common import make_config

torch.set_num_threads(1)
# the trainers' own step settings: one step, nothing saved, fp32 and no activation checkpointing on the CPU
# (max_length: the byte tokenizer's prompts are long; a shorter limit would leave no completion token)
STEP = {**FAST, "max_steps": 1, "per_device_train_batch_size": 2, "max_length": 512}


def _select(tmp_path, pool, fmt: str, kind: str = "sft"):
    """``gradsift select`` with the random method (no model needed) writing `fmt`; the selection file's rows."""
    out = tmp_path / f"sel-{kind}-{fmt}"
    run_select(SelectConfig(pool=str(pool), out=str(out), methods=["random"], budget="6", kind=kind, write_format=fmt))
    path = out / "selected.jsonl"
    return path, [json.loads(line) for line in path.read_text().splitlines()]


def _dataset(path, tmp_path):
    return load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))


@pytest.mark.parametrize("fmt", ["messages", "prompt-completion"])
def test_sft_trainer_trains_a_step_on_the_written_selection(tmp_path, fmt, tiny_model_dir):
    pool, _ = write_demo_data(tmp_path / "data", n_pool=24, n_targets=2, seed=1)
    path, rows = _select(tmp_path, pool, fmt)
    assert len(rows) == 6 and {"instruction", "output", "gradsift_score"} <= set(rows[0])
    assert set(rows[0]) >= ({"messages"} if fmt == "messages" else {"prompt", "completion"})
    config = make_config(SFTConfig, STEP, tmp_path / f"sft-{fmt}")
    # the model as a path: TRL loads it, as a user's script would
    trainer = SFTTrainer(model=str(tiny_model_dir), args=config, train_dataset=_dataset(path, tmp_path))
    assert len(trainer.train_dataset) == 6  # every row read and kept
    before = [p.detach().clone() for p in trainer.model.parameters()]
    out = trainer.train()
    assert trainer.state.global_step == 1 and torch.isfinite(torch.tensor(out.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    labels = trainer.train_dataset[0]["labels"]
    # TRL's prompt-completion trains on the completion only; the messages form on the whole chat
    assert (-100 in labels) == (fmt == "prompt-completion")


@pytest.mark.parametrize("fmt", ["messages", "prompt-completion"])
def test_dpo_trainer_trains_a_step_on_the_written_pairs(tmp_path, fmt, tiny_model_dir):
    pool = tmp_path / "pairs.jsonl"
    write_jsonl(
        pool,
        [
            {"prompt": f"Add {i} and 2.", "chosen": f"{i + 2}", "rejected": f"{i + 3}", "score": i, "source_id": i}
            for i in range(12)
        ],
    )
    path, rows = _select(tmp_path, pool, fmt, kind="pair")
    if fmt == "messages":
        # TRL's implicit-prompt preference rows: each side the whole chat
        assert "prompt" not in rows[0] and rows[0]["chosen"][0]["role"] == "user"
    else:
        assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"
    assert {"score", "source_id", "gradsift_id"} <= set(rows[0])
    config = make_config(DPOConfig, STEP, tmp_path / f"dpo-{fmt}")
    trainer = DPOTrainer(model=str(tiny_model_dir), args=config, train_dataset=_dataset(path, tmp_path))
    assert len(trainer.train_dataset) == 6
    before = [p.detach().clone() for p in trainer.model.parameters()]
    out = trainer.train()
    assert trainer.state.global_step == 1 and torch.isfinite(torch.tensor(out.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
