"""LoRA SFT with TRL on gradsift's tokenisation: loss mask, loss value, run directory, reuse, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainkit import FAST, make_examples
from transformers import AutoModelForCausalLM, AutoTokenizer

from gradsift.data.records import Example
from gradsift.data.tokenize import IGNORE, encode_examples
from gradsift.model.lora import LoraSettings, attach_lora
from gradsift.model.task import sequence_logps
from gradsift.training.common import read_log
from gradsift.training.sft import build_sft_trainer, sft_dataset, train_sft

REPO = Path(__file__).resolve().parents[2]


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def test_dataset_is_gradsift_tokenisation(tiny_tokenizer):
    examples = make_examples(5)
    ds, counts = sft_dataset(tiny_tokenizer, examples, 64)
    ref, _ = encode_examples(tiny_tokenizer, examples, 64)
    assert ds["input_ids"] == [e.input_ids for e in ref]
    assert ds["labels"] == [e.labels for e in ref]
    assert (counts.n, counts.n_used, counts.n_truncated) == (5, 5, 0)


def test_dataset_counts_truncated_examples(tiny_tokenizer):
    long = Example(id="long", messages=[{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}])
    ds, counts = sft_dataset(tiny_tokenizer, make_examples(3) + [long], 48)
    assert counts.n_truncated == 1 and counts.truncated_ids == ["long"]
    assert max(len(r) for r in ds["input_ids"]) == 48
    # The long prompt is cut, not the response: the example keeps its loss tokens.
    assert sum(t != IGNORE for t in ds["labels"][-1]) > 0


def test_no_examples_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="no examples"):
        sft_dataset(tiny_tokenizer, [], 64)


def test_collated_batch_masks_prompts_and_loss_matches_gradsift(tiny_model, tiny_tokenizer, tmp_path):
    examples = make_examples(4)
    trainer, _ = build_sft_trainer(tiny_model, tiny_tokenizer, examples, tmp_path, config=FAST)
    batch = next(iter(trainer.get_train_dataloader()))
    ref = {tuple(e.input_ids): e.labels for e in encode_examples(tiny_tokenizer, examples, 64)[0]}
    assert batch["input_ids"].shape[0] == 4
    for ids, att, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        n = int(att.sum())
        assert labels[:n].tolist() == ref[tuple(ids[:n].tolist())]
        assert (labels[n:] == IGNORE).all()
        # Only response tokens carry a loss: the user turn's text never appears among the labels.
        text = tiny_tokenizer.decode([t for t in labels.tolist() if t != IGNORE])
        assert text.startswith("it is") and "what is" not in text
    # TRL's training loss on this batch is gradsift's token-mean NLL over the same tokens.
    model = trainer.model
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()})
        sum_logp, n_tok = sequence_logps(model, batch)
    torch.testing.assert_close(trl_loss, -sum_logp.sum() / n_tok.sum(), rtol=1e-5, atol=1e-6)


def test_loss_decreases_on_a_memorisable_example(tiny_model, tiny_tokenizer, tmp_path):
    # The random tiny model's tied embeddings are so small that its logits can barely move; scale them up so
    # a LoRA adapter can memorise one response.
    with torch.no_grad():
        tiny_model.model.embed_tokens.weight.mul_(10)
    one = [Example(id="m", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "abcabc"}])]
    cfg = {**FAST, "max_steps": 20, "learning_rate": 1e-2, "lr_scheduler_type": "constant"}
    train_sft(tiny_model, tiny_tokenizer, one, tmp_path, LoraSettings(target_modules=["all-linear"]), cfg)
    losses = [r["loss"] for r in read_log(tmp_path)]
    assert len(losses) == 20
    assert losses[-1] < 0.3 * losses[0]


def test_run_directory_and_reuse(tiny_model_dir, tmp_path):
    model, tok = load(tiny_model_dir)
    cfg = {**FAST, "max_steps": 3}
    res = train_sft(model, tok, make_examples(8), tmp_path / "run", config=cfg)
    out = tmp_path / "run"
    assert res.global_step == 3 and not res.reused and res.resumed_from is None
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "tokenizer_config.json").exists()
    assert not list(out.glob("checkpoint-*"))
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all({"step", "loss", "lr", "epoch", "time"} <= set(r) for r in log)
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "sft" and config["lora"] == LoraSettings().as_dict()
    assert config["trainer"]["max_steps"] == 3 and config["data"]["n"] == 8
    result = json.loads((out / "result.json").read_text())
    assert result["global_step"] == 3
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # trained away from B = 0

    # Same settings: reused, not retrained, with the saved adapter loaded.
    model2, tok2 = load(tiny_model_dir)
    again = train_sft(model2, tok2, make_examples(8), out, config=cfg)
    assert again.reused and again.global_step == 3
    assert read_log(out) == log
    state = {k: v for k, v in again.model.state_dict().items() if "lora_" in k}
    for k, v in saved.items():
        torch.testing.assert_close(state[k.replace(".weight", ".default.weight")], v)

    # Other settings: refused, then replaced with overwrite.
    model3, tok3 = load(tiny_model_dir)
    with pytest.raises(ValueError, match="different settings"):
        train_sft(model3, tok3, make_examples(8), out, config={**cfg, "learning_rate": 1e-4})
    redo = train_sft(model3, tok3, make_examples(8), out, config={**cfg, "learning_rate": 1e-4}, overwrite=True)
    assert not redo.reused and json.loads((out / "config.json").read_text())["trainer"]["learning_rate"] == 1e-4


def test_trains_an_existing_adapter(tiny_model, tiny_tokenizer, tmp_path):
    peft_model = attach_lora(tiny_model, LoraSettings(), init="gaussian")
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        train_sft(peft_model, tiny_tokenizer, make_examples(4), tmp_path, LoraSettings(), FAST)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    res = train_sft(peft_model, tiny_tokenizer, make_examples(4), tmp_path, None, {**FAST, "max_steps": 2})
    assert res.model is peft_model
    after = dict(peft_model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)
    assert json.loads((tmp_path / "config.json").read_text())["lora"] is None


KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    sys.path.insert(0, {tests!r})
    from trainkit import make_examples
    from gradsift.training.sft import train_sft

    torch.set_num_threads(1)

    class Hang(TrainerCallback):
        # After checkpoint-2 is saved and step 3 is logged, signal the test and wait to be killed.
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                open({marker!r}, "w").close()
                time.sleep(600)

    model = AutoModelForCausalLM.from_pretrained({model_dir!r})
    tok = AutoTokenizer.from_pretrained({model_dir!r})
    train_sft(model, tok, make_examples(8), {out!r}, config={config!r}, callbacks=[Hang()])
    """
)


def test_resumes_after_sigkill(tiny_model_dir, tmp_path):
    cfg = {**FAST, "max_steps": 6, "save_strategy": "steps", "save_steps": 2, "lr_scheduler_type": "linear"}
    out, marker = tmp_path / "run", tmp_path / "ready"
    script = tmp_path / "run_sft.py"
    tests = str(Path(__file__).parent)
    script.write_text(
        KILLED_RUN.format(tests=tests, marker=str(marker), model_dir=str(tiny_model_dir), out=str(out), config=cfg)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"training subprocess exited early:\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training subprocess never reached step 3")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert not (out / "result.json").exists()
    assert [r["step"] for r in read_log(out)] == [1, 2, 3]
    killed_at = time.time()

    model, tok = load(tiny_model_dir)
    res = train_sft(model, tok, make_examples(8), out, config=cfg)
    assert res.resumed_from == str(out / "checkpoint-2")
    assert res.global_step == 6
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # step 3 of the killed run was dropped and redone
    assert all(r["time"] > killed_at for r in log[2:]) and all(r["time"] < killed_at for r in log[:2])

    # The resumed run ends where an uninterrupted one does.
    model, tok = load(tiny_model_dir)
    straight = train_sft(model, tok, make_examples(8), tmp_path / "straight", config=cfg)
    a = load_file(res.adapter_dir / "adapter_model.safetensors")
    b = load_file(straight.adapter_dir / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in read_log(tmp_path / "straight")], rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_defaults_train(tiny_model, tiny_tokenizer, tmp_path):
    cfg = {"per_device_train_batch_size": 4, "max_steps": 2, "logging_steps": 1, "disable_tqdm": True}
    res = train_sft(tiny_model, tiny_tokenizer, make_examples(8), tmp_path, config=cfg)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["trainer"]["bf16"] == torch.cuda.is_bf16_supported()
    assert config["trainer"]["gradient_checkpointing"] is True
    assert res.global_step == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in read_log(tmp_path))
    assert next(res.model.parameters()).device.type == "cuda"
