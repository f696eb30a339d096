"""LoRA DPO with TRL: the reference is the adapter-disabled base, truncated and dropped pairs are counted."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from testkit import make_tiny_tokenizer
from trainkit import FAST, make_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig

from gradsift.data.records import Pair
from gradsift.model.lora import LoraSettings, attach_lora
from gradsift.model.task import DPOTask, sequence_logps
from gradsift.training.common import make_config, read_log
from gradsift.training.dpo import (
    build_dpo_trainer,
    dpo_dataset,
    make_dpo_trainer,
    pair_row,
    train_dpo,
    trl_pair_lengths,
)


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def gradsift_batch(batch):
    """TRL's DPO batch (chosen rows, then rejected rows) as a gradsift batch with labels on the completions."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def pair(pid, prompt, chosen="1 ok", rejected="no 7"):
    return Pair(id=pid, prompt=[{"role": "user", "content": prompt}], chosen=chosen, rejected=rejected)


# With the ChatML byte tokenizer a prompt has 19 + len(text) tokens and a response len(text) + 2.
CONSTRUCTED = [
    pair("fits", "say 1"),  # 24 + 6
    pair("fits48", "say 1", chosen="c" * 22),  # 24 + 24 = 48: fits exactly
    pair("drop", "x" * 29),  # prompt 48 >= max_length: TRL drops it
    pair("drop_long", "x" * 60),
    pair("long_c", "say 2", chosen="c" * 30),  # 24 + 32 > 48
    pair("long_r", "say 3", rejected="r" * 30),
    pair("edge", "x" * 28, chosen="a"),  # prompt 47 kept, 47 + 3 > 48
]


def test_lengths_and_fate_match_trls_own_preparation(tiny_model, tiny_tokenizer, tmp_path):
    rows = [pair_row(tiny_tokenizer, p) for p in CONSTRUCTED]
    lengths = [trl_pair_lengths(tiny_tokenizer, r) for r in rows]
    assert (lengths[0].prompt, lengths[0].chosen, lengths[0].rejected) == (24, 6, 6)
    _, counts = dpo_dataset(tiny_tokenizer, CONSTRUCTED, 48)
    assert counts.dropped_ids == ["drop", "drop_long"]
    assert counts.truncated_ids == ["long_c", "long_r", "edge"]
    assert (counts.n, counts.n_used, counts.n_truncated, counts.n_dropped) == (7, 5, 3, 2)

    # Reference: TRL's own preparation of all the pairs, dropped ones included.
    cfg = make_config(DPOConfig, {**FAST, "max_length": 48}, tmp_path)
    trainer = make_dpo_trainer(tiny_model, tiny_tokenizer, cfg, Dataset.from_list(rows), LoraSettings(), None)
    kept = [n for n in lengths if n.prompt < 48]
    assert len(trainer.train_dataset) == len(CONSTRUCTED) - counts.n_dropped
    for row, n in zip(trainer.train_dataset, kept, strict=True):
        assert (len(row["prompt_ids"]), len(row["chosen_ids"]), len(row["rejected_ids"])) == (
            n.prompt,
            n.chosen,
            n.rejected,
        )
    # And TRL's collator cuts exactly the pairs counted as truncated.
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    b = len(trainer.train_dataset)
    full = [n.prompt + max(n.chosen, n.rejected) for n in kept]
    cut = [max(int(batch["attention_mask"][i].sum()), int(batch["attention_mask"][b + i].sum())) for i in range(b)]
    assert [f > c for f, c in zip(full, cut, strict=True)] == [False, False, True, True, True]


def test_plain_format_without_chat_template(tiny_model, tmp_path):
    tok = make_tiny_tokenizer(chat_template=False)
    row = pair_row(tok, make_pairs(1)[0])
    assert row["prompt"].endswith("### Assistant:\n") and "say 0" in row["prompt"]
    assert row["chosen"] == "0 ok" + tok.eos_token and row["rejected"] == "no 0" + tok.eos_token
    ds, counts = dpo_dataset(tok, make_pairs(4), 64)
    cfg = make_config(DPOConfig, {**FAST, "max_length": 64}, tmp_path)
    trainer = make_dpo_trainer(tiny_model, tok, cfg, ds, LoraSettings(), None)
    for r, prepared in zip(ds, trainer.train_dataset, strict=True):
        n = trl_pair_lengths(tok, r)
        assert (n.prompt, n.chosen, n.rejected) == tuple(
            len(prepared[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")
        )
    assert counts.n_used == 4


def test_reference_is_the_adapter_disabled_base(tiny_model_dir, tmp_path):
    model, tok = load(tiny_model_dir)
    cfg = {**FAST, "max_steps": 3, "learning_rate": 5e-2}
    trainer, _ = build_dpo_trainer(model, tok, make_pairs(8), tmp_path / "run", config=cfg, beta=0.2)
    assert trainer.ref_model is None
    assert isinstance(trainer.model, PeftModel) and list(trainer.model.peft_config) == ["default"]
    trainer.train()
    trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    g = gradsift_batch(batch)
    b = batch["input_ids"].shape[0] // 2
    with torch.no_grad():
        ref_c, ref_r = trainer.compute_ref_log_probs(trainer.model, batch)
        base, _ = load(tiny_model_dir)
        base_logps = sequence_logps(base, g)[0]
        policy = sequence_logps(trainer.model, g)[0]
        trl_loss = trainer.compute_loss(trainer.model, dict(batch))
        task = DPOTask(beta=0.2)
        margins = task.margins(trainer.model, g)
        losses = task.losses(trainer.model, g)
    # TRL's reference log-probabilities are the untouched base model's ...
    torch.testing.assert_close(torch.cat([ref_c, ref_r]), base_logps, rtol=1e-5, atol=1e-4)
    # ... not the trained policy's,
    assert (policy - base_logps).abs().max() > 1e-2
    # and gradsift's DPO task (TIF's scores) sees the same margins and loss as the trainer.
    ref = torch.cat([ref_c, ref_r])
    torch.testing.assert_close(margins, (policy[:b] - ref[:b]) - (policy[b:] - ref[b:]), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(trl_loss, losses.mean(), rtol=1e-5, atol=1e-5)


def test_train_dpo_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    model, tok = load(tiny_model_dir)
    pairs = make_pairs(8) + [pair("drop", "x" * 60)]
    res = train_dpo(model, tok, pairs, out, config={**FAST, "max_length": 48, "learning_rate": 5e-2}, beta=0.3)
    # One epoch by default: 8 kept pairs at batch size 4.
    assert res.global_step == 2 and not res.reused
    assert (res.counts.n_dropped, res.counts.dropped_ids, res.counts.n_used) == (1, ["drop"], 8)
    config = json.loads((out / "config.json").read_text())
    assert config["trainer"]["beta"] == 0.3 and config["trainer"]["num_train_epochs"] == 1
    assert config["data"]["dropped_ids"] == ["drop"]
    assert json.loads((out / "result.json").read_text())["counts"]["n_dropped"] == 1
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2]
    # Before the first update the policy is the reference: zero implicit reward margin, loss log 2.
    assert log[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert log[1]["rewards/margins"] > 0
    assert (out / "adapter" / "adapter_model.safetensors").exists()

    model, tok = load(tiny_model_dir)
    again = train_dpo(model, tok, pairs, out, config={**FAST, "max_length": 48, "learning_rate": 5e-2}, beta=0.3)
    assert again.reused and again.counts == res.counts


def test_bad_inputs_are_refused(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="no preference pairs"):
        train_dpo(tiny_model, tiny_tokenizer, [], tmp_path, config=FAST)
    with pytest.raises(ValueError, match="every one"):
        train_dpo(tiny_model, tiny_tokenizer, make_pairs(2), tmp_path, config={**FAST, "max_length": 10})
    with pytest.raises(ValueError, match="beta"):
        train_dpo(tiny_model, tiny_tokenizer, make_pairs(2), tmp_path, config={**FAST, "beta": 0.5}, beta=0.1)
    peft_model = attach_lora(tiny_model, LoraSettings())
    with pytest.raises(ValueError, match="base model"):
        train_dpo(peft_model, tiny_tokenizer, make_pairs(2), tmp_path, config=FAST)


def _adapter(out):
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_cached_reference_trains_as_the_per_step_reference(tiny_model_dir, tmp_path, monkeypatch):
    from trl import DPOTrainer

    cfg = {**FAST, "max_steps": 2, "learning_rate": 5e-2, "seed": 3}
    pairs = make_pairs(10)
    cache = tmp_path / "cache"
    runs = {}
    for name, ref in (("plain", None), ("fill", cache), ("read", cache)):
        if name == "read":
            # every pair is in the cache now: the reference is never run again
            monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", lambda *a: pytest.fail("reference recomputed"))
        model, tok = load(tiny_model_dir)
        train_dpo(model, tok, pairs, tmp_path / name, config=cfg, beta=0.2, reference_cache=ref)
        runs[name] = ([r["loss"] for r in read_log(tmp_path / name)], _adapter(tmp_path / name))
    (file,) = cache.glob("reference-*.json")
    logps = json.loads(file.read_text())["logps"]
    assert len(logps) == 10
    for name in ("fill", "read"):
        assert runs[name][0] == pytest.approx(runs["plain"][0], abs=1e-5)
        for k, v in runs["plain"][1].items():
            torch.testing.assert_close(runs[name][1][k], v, rtol=1e-4, atol=1e-6)

    # the cached values are the ones trained with: a reference shifted by +1 on every chosen answer gives
    # the first step (policy = base) the margin -beta and the loss softplus(beta)
    file.write_text(json.dumps({"settings": {}, "logps": {k: [c + 1.0, r] for k, (c, r) in logps.items()}}))
    model, tok = load(tiny_model_dir)
    train_dpo(model, tok, pairs, tmp_path / "shifted", config={**cfg, "max_steps": 1}, beta=0.2, reference_cache=cache)
    first = read_log(tmp_path / "shifted")[0]
    assert first["loss"] == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(0.2))), abs=1e-4)
