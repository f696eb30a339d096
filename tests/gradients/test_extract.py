"""The feature extraction driver: order, exactness, pairs, resume after a kill, settings checks,
torch.distributed, Adam preconditioning, bad rows and the `gradsift features` command.

Every batched store row is checked against the slow path: the same example alone, a batch of one
through :meth:`LoraGradients.compute`, with a projector built here from the config's numbers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gradsift.gradients.extract as extract
from gradsift.cli.main import main
from gradsift.data.demo import write_demo_data
from gradsift.data.tokenize import collate, encode_messages
from gradsift.gradients.extract import FeatureConfig, extract_features
from gradsift.gradients.grads import FlatGradients, LoraGradients, pair_groups
from gradsift.gradients.precondition import AdamState
from gradsift.gradients.projection import DenseProjector, FactorizedProjector, SparseProjector
from gradsift.model.load import ModelSettings, load_model
from gradsift.model.lora import LoraSettings, attach_lora, load_adapter
from gradsift.model.task import DPOTask, SFTTask
from gradsift.store.features import FeatureStore

torch.set_num_threads(1)

# Subprocesses pinned to one thread: results are then bit-identical to this process's.
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
BASE = {"device": "cpu", "max_length": 96, "batch_tokens": 384, "store_dtype": "float32"}


# ----------------------------------------------------------------------------------------------- data


def _text(i: int, n: int, word: str) -> str:
    return " ".join(f"{word}{(i * 7 + j) % 13}" for j in range(n))


def sft_records(n: int) -> list[dict]:
    """Chats of clearly different lengths, each with a `rejected` response (PRISM's y-)."""
    return [
        {
            "id": f"ex{i}",
            "messages": [
                {"role": "user", "content": _text(i, 1 + (i * 5) % 7, "q")},
                {"role": "assistant", "content": _text(i, 1 + (i * 3) % 5, "a")},
            ],
            "rejected": _text(i, 2 + (i * 2) % 3, "no"),
        }
        for i in range(n)
    ]


def pair_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        good, bad = _text(i, 1 + (i * 3) % 4, "yes"), _text(i, 1 + (i * 2) % 5, "no")
        # Swapped on odd rows, so that the implicit reward margins come with both signs.
        chosen, rejected = (bad, good) if i % 2 else (good, bad)
        out.append({"id": f"p{i}", "prompt": _text(i, 1 + (i * 5) % 6, "q"), "chosen": chosen, "rejected": rejected})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def config(data: Path, out: Path, model: Path, **kw) -> FeatureConfig:
    return FeatureConfig(data=str(data), out=str(out), model=str(model), **{**BASE, **kw})


def make_adapter(model_dir: Path, out: Path, rank: int = 4, std: float = 0.2) -> Path:
    """A saved LoRA adapter with random non-zero A and B: the policy differs from the reference."""
    lm = load_model(ModelSettings(model=str(model_dir), device="cpu", dtype="float32"))
    model = attach_lora(lm.model, LoraSettings(rank=rank, alpha=2 * rank))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------ slow reference


class Reference:
    """Features of one example (or pair) alone, built from the primitives, not from extract.py."""

    def __init__(self, cfg: FeatureConfig) -> None:
        lm = load_model(ModelSettings(model=cfg.model, device="cpu", dtype="float32"))
        if cfg.adapter:
            self.model = load_adapter(lm.model, cfg.adapter, trainable=True)
        else:
            lora = LoraSettings(rank=cfg.lora_rank, alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets))
            self.model = attach_lora(lm.model, lora, seed=cfg.lora_seed)
        self.tok, self.cfg = lm.tokenizer, cfg
        self.grads = LoraGradients(self.model)
        if cfg.projector_name == "factorized":
            shapes = [layer.shape for layer in self.grads.layers]
            self.projector = FactorizedProjector(
                shapes, k_in=cfg.k_in, k_out=cfg.k_out, kind=cfg.projection, seed=cfg.projection_seed
            )
        else:
            self.projector = DenseProjector(
                self.grads.num_params, k=cfg.dim, kind=cfg.projection, seed=cfg.projection_seed
            )

    def encode(self, prompt: str, response: str):
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return encode_messages(self.tok, msgs, self.cfg.max_length)

    def example(self, prompt: str, response: str, sink=None):
        """(features [dim], loss, n_loss_tokens) of one example alone."""
        batch = collate([self.encode(prompt, response)], self.tok.pad_token_id)
        out = self.grads.compute(batch, SFTTask(self.cfg.reduction), sink=sink or self.projector)
        return out.features[0], out.losses[0], int((batch["labels"][:, 1:] != -100).sum())

    def pair(self, prompt: str, chosen: str, rejected: str):
        """(features [dim], loss, beta * margin, n_loss_tokens) of one pair alone."""
        batch = collate([self.encode(prompt, chosen), self.encode(prompt, rejected)], self.tok.pad_token_id)
        task = DPOTask(beta=self.cfg.beta)
        out = self.grads.compute(batch, task, sink=self.projector, groups=pair_groups(1))
        with torch.no_grad():
            margin = task.margins(self.model, batch)[0]
        return out.features[0], out.losses[0], self.cfg.beta * margin, int((batch["labels"][:, 1:] != -100).sum())


def assert_rows_match(got: np.ndarray, want: np.ndarray) -> None:
    """Row-wise agreement up to float32 rounding of a different batch shape; rows must be non-trivial."""
    assert got.shape == want.shape
    for i in range(len(want)):
        scale = float(np.abs(want[i]).max())
        assert scale > 0, f"row {i}: zero reference features make the check vacuous"
        np.testing.assert_allclose(got[i], want[i], rtol=1e-4, atol=1e-5 * scale, err_msg=f"row {i}")


def spy_batches(monkeypatch) -> list[list[int]]:
    """Record the length buckets the driver forms, as the lengths of their members."""
    seen: list[list[int]] = []

    def spy(lengths, max_tokens, max_batch=64):
        batches = real(lengths, max_tokens, max_batch)
        seen.extend([lengths[i] for i in b] for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert [i for b in batches for i in b] != list(range(len(lengths))), "buckets should reorder rows"
        return batches

    real = extract.bucket_batches
    monkeypatch.setattr(extract, "bucket_batches", spy)
    return seen


def assert_mixed(batches: list[list[int]]) -> None:
    """Some batch held several examples of different lengths (padding inside a batch)."""
    assert any(len(set(b)) > 1 for b in batches), batches


# ------------------------------------------------------------------------------ 1. order, exactness


@pytest.mark.parametrize("projector", ["factorized", "dense"])
@pytest.mark.parametrize("kind", ["sft", "target"])
def test_rows_equal_each_example_alone(tmp_path, tiny_model_dir, monkeypatch, projector, kind):
    records = sft_records(12)
    data = write_jsonl(tmp_path / "data.jsonl", records)
    cfg = config(data, tmp_path / "store", tiny_model_dir, kind=kind, projector=projector, dim=512)
    batches = spy_batches(monkeypatch)
    store = extract_features(cfg, progress=False)

    # Length buckets mixed lengths within a batch and reordered the rows: both paths are exercised.
    assert_mixed(batches)
    block = store.read()
    assert block.valid.all() and store.is_complete()
    assert block.features.shape == (12, store.layout.dim)

    ref = Reference(cfg)
    rows = [ref.example(r["messages"][0]["content"], r["messages"][1]["content"]) for r in records]
    assert_rows_match(block.features, torch.stack([f for f, _, _ in rows]).numpy())
    np.testing.assert_allclose(block.extras["loss"], [float(loss) for _, loss, _ in rows], rtol=1e-5)
    np.testing.assert_array_equal(block.extras["tokens"], [n for _, _, n in rows])
    assert store.settings["kind"] == kind and store.settings["projector"]["projector"] == projector


def test_rejected_response_uses_the_rejected_field(tmp_path, tiny_model_dir):
    records = sft_records(6)
    data = write_jsonl(tmp_path / "data.jsonl", records)
    cfg = config(data, tmp_path / "neg", tiny_model_dir, kind="target", response="rejected")
    block = extract_features(cfg, progress=False).read()
    ref = Reference(cfg)
    want = [ref.example(r["messages"][0]["content"], r["rejected"]) for r in records]
    assert_rows_match(block.features, torch.stack([f for f, _, _ in want]).numpy())
    np.testing.assert_allclose(block.extras["loss"], [float(loss) for _, loss, _ in want], rtol=1e-5)
    # ... and not the chosen response.
    chosen = ref.example(records[0]["messages"][0]["content"], records[0]["messages"][1]["content"])[0]
    assert not np.allclose(block.features[0], chosen.numpy(), rtol=1e-2)


def test_rejected_response_missing_is_refused(tmp_path, tiny_model_dir):
    records = sft_records(3)
    del records[1]["rejected"]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(ValueError, match="example ex1 has no rejected response"):
        extract_features(config(data, tmp_path / "neg", tiny_model_dir, response="rejected"), progress=False)


def test_limit_takes_the_first_records(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", sft_records(10))
    full = extract_features(config(data, tmp_path / "full", tiny_model_dir), progress=False).read().features
    part = extract_features(config(data, tmp_path / "part", tiny_model_dir, limit=4), progress=False)
    assert part.layout.n_rows == 4
    assert_rows_match(part.read().features, full[:4])


# ----------------------------------------------------------------------------------------- 2. pairs


def test_pair_rows_equal_each_pair_alone(tmp_path, tiny_model_dir, monkeypatch):
    records = pair_records(10)
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    cfg = config(data, tmp_path / "store", tiny_model_dir, kind="pair", adapter=str(adapter), beta=0.5)
    batches = spy_batches(monkeypatch)
    store = extract_features(cfg, progress=False)
    assert_mixed(batches)
    block = store.read()
    assert block.valid.all()

    ref = Reference(cfg)
    want = [ref.pair(r["prompt"], r["chosen"], r["rejected"]) for r in records]
    assert_rows_match(block.features, torch.stack([w[0] for w in want]).numpy())
    margins = np.array([float(w[2]) for w in want])
    # The adapter is not the reference: real margins of both signs.
    assert np.abs(margins).min() > 1e-3 and (margins > 0).any() and (margins < 0).any()
    np.testing.assert_allclose(block.extras["loss"], [float(w[1]) for w in want], rtol=1e-5)
    np.testing.assert_allclose(block.extras["margin"], margins, rtol=1e-4)
    np.testing.assert_array_equal(block.extras["tokens"], [w[3] for w in want])
    assert store.settings["beta"] == 0.5


def test_pair_margin_is_exact_where_the_loss_saturates(tmp_path, tiny_model_dir):
    """With a large beta, -log sigmoid(beta m) underflows to 0 in float32 for the clearly preferred pairs;
    the stored margin must still be beta * m, not inf recovered from a zero loss."""
    records = pair_records(6)
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    cfg = config(data, tmp_path / "store", tiny_model_dir, kind="pair", adapter=str(adapter), beta=200.0)
    block = extract_features(cfg, progress=False).read()
    ref = Reference(cfg)
    want = [ref.pair(r["prompt"], r["chosen"], r["rejected"]) for r in records]
    margins = np.array([float(w[2]) for w in want])
    losses = np.array([float(w[1]) for w in want])
    assert (losses == 0).any() and (margins > 0).any() and (margins < 0).any()
    np.testing.assert_allclose(block.extras["margin"], margins, rtol=1e-4)
    np.testing.assert_allclose(block.extras["loss"], losses, rtol=1e-5)


def test_pair_config_refuses_rejected_response():
    with pytest.raises(ValueError, match="not to pairs"):
        FeatureConfig(data="x", out="y", kind="pair", response="rejected")


# --------------------------------------------------------------------------------- 3. kill and resume


def cli_args(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    """`gradsift features` arguments of the subprocess runs: batches of one, so every row is computed
    exactly as in any other run with these arguments."""
    return [
        "features",
        "--data",
        str(data),
        "--out",
        str(out),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--max-batch",
        "1",
        "--max-length",
        "96",
        "--batch-tokens",
        "384",
        "--store-dtype",
        "float32",
        "--projector",
        "dense",
        "--dim",
        "256",
        *extra,
    ]


def cli_config(data: Path, out: Path, model: Path) -> FeatureConfig:
    """The FeatureConfig of `cli_args`, for the uninterrupted in-process run."""
    return config(data, out, model, max_batch=1, projector="dense", dim=256)


def bar_totals(stderr: str) -> list[int]:
    """Rows each feature pass of a run computed, from its last progress line (a subprocess's stderr is no
    terminal, so progress comes as log lines: ``features NAME: 30/30 ex (100%), ...``)."""
    return [int(t) for t in re.findall(r"gradsift\.progress: features [^:\n]+: (\d+)/\1 ex", stderr)]


def assert_same_store(got: FeatureStore, want: FeatureStore) -> None:
    assert got.is_complete() and len(got.bad_rows()) == 0
    a, b = got.read(), want.read()
    np.testing.assert_array_equal(a.features, b.features)
    for name in b.extras:
        np.testing.assert_array_equal(a.extras[name], b.extras[name], err_msg=name)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    n = 40
    pool, _ = write_demo_data(tmp_path / "data", n_pool=n, n_targets=2, seed=3)
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "gradsift", *cli_args(pool, out, tiny_model_dir)]
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=SUB_ENV, stdout=log, stderr=subprocess.STDOUT)
        done_at_kill, deadline = None, time.monotonic() + 300
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if (out / "done.npy").exists() and np.load(out / "done.npy").sum() >= n // 4:
                    proc.send_signal(signal.SIGSTOP)  # frozen: the done mask cannot move before the kill
                    done_at_kill = np.load(out / "done.npy")
                    proc.kill()
                    break
                time.sleep(0.002)
        finally:
            proc.kill()
            proc.wait()
    assert done_at_kill is not None, (
        f"the run ended (rc {proc.returncode}) before a quarter of its rows were seen done"
    )
    k = int(done_at_kill.sum())
    assert proc.returncode == -signal.SIGKILL
    assert 0 < k < n, f"the kill should land mid-run, {k} of {n} rows were done"

    killed = FeatureStore.load(out)
    np.testing.assert_array_equal(np.load(out / "done.npy"), done_at_kill)
    with pytest.raises(RuntimeError, match=f"{n - k} of {n} rows missing.*rerun `gradsift features --data"):
        killed.read()

    again = subprocess.run(cmd, env=SUB_ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert bar_totals(again.stderr) == [n - k], "the rerun must compute exactly the rows not done"

    straight = extract_features(cli_config(pool, tmp_path / "straight", tiny_model_dir), progress=False)
    assert_same_store(FeatureStore.load(out), straight)


# ------------------------------------------------------------------------------ 4. settings mismatch


@pytest.mark.parametrize(
    "change, keys",
    [
        ({"projection_seed": 1}, ["settings.projector.seed"]),
        ({"lora_rank": 4}, ["settings.lora.rank", "settings.lora_params", "dim"]),
        # batching changes features slightly: a resume with another batching would mix them
        ({"max_batch": 2}, ["settings.batching.max_batch"]),
        ({"batch_tokens": 512}, ["settings.batching.batch_tokens"]),
        ("data", ["settings.data"]),
    ],
    ids=["projection-seed", "lora-rank", "max-batch", "batch-tokens", "data"],
)
def test_other_settings_are_refused_until_overwrite(tmp_path, tiny_model_dir, change, keys):
    records = sft_records(5)
    data = write_jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / "store"
    first = extract_features(config(data, out, tiny_model_dir), progress=False).read().features
    if change == "data":
        records[2]["messages"][1]["content"] += " changed"
        other = config(write_jsonl(tmp_path / "other.jsonl", records), out, tiny_model_dir)
    else:
        other = config(data, out, tiny_model_dir, **change)

    with pytest.raises(ValueError, match="made with different settings") as err:
        extract_features(other, progress=False)
    named = re.findall(r"([\w.]+) \(", str(err.value))
    assert sorted(set(keys) - set(named)) == [], str(err.value)
    assert "overwrite" in str(err.value)
    np.testing.assert_array_equal(FeatureStore.load(out).read().features, first)  # untouched

    other.overwrite = True
    replaced = extract_features(other, progress=False)
    other.overwrite, other.out = False, str(tmp_path / "fresh")
    fresh = extract_features(other, progress=False)
    assert replaced.settings == fresh.settings
    assert_same_store(replaced, fresh)


def test_cli_refuses_other_settings_with_a_message_and_overwrite_replaces(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", sft_records(4))
    args = cli_args(data, tmp_path / "store", tiny_model_dir)
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--projection-seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "gradsift features: error:" in err and "projector.seed (0 -> 5)" in err
    assert "--overwrite" in err
    assert main([*args, "--projection-seed", "5", "--overwrite"]) == 0
    assert FeatureStore.load(tmp_path / "store").settings["projector"]["seed"] == 5


# ------------------------------------------------------------------------------- 5. torch.distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_fill_one_store_equal_to_one_process(tmp_path, tiny_model_dir):
    n = 16
    data = write_jsonl(tmp_path / "data.jsonl", sft_records(n))
    out = tmp_path / "store"
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd = [sys.executable, *launcher, "--master_port", str(free_port()), "-m", "gradsift"]
    run = subprocess.run(
        [*cmd, *cli_args(data, out, tiny_model_dir)], env=SUB_ENV, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # Rank 0 alone shows progress: it computed its half of the rows, rank 1 the other half.
    assert bar_totals(run.stderr) == [n // 2]
    assert run.stdout.count("features:") == 1
    single = extract_features(cli_config(data, tmp_path / "single", tiny_model_dir), progress=False)
    assert_same_store(FeatureStore.load(out), single)
    assert FeatureStore.load(out).settings == single.settings


# ---------------------------------------------------------------------------- 6. Adam preconditioning


WARMUP_CONFIG = {
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "per_device_train_batch_size": 4,
    "learning_rate": 5e-3,
    "max_length": 96,
    "disable_tqdm": True,
    "seed": 0,
}


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A tiny model, data, and one-epoch LESS warm-ups with LoRA rank 8 and rank 4."""
    from testkit import make_tiny_model, make_tiny_tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gradsift.data.load import load_examples
    from gradsift.training.warmup import WarmupSettings, run_warmup

    root = tmp_path_factory.mktemp("warm")
    tok = make_tiny_tokenizer()
    make_tiny_model(len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = write_jsonl(root / "data.jsonl", sft_records(8))
    epochs = {}
    for rank in (8, 4):
        model = AutoModelForCausalLM.from_pretrained(root / "model")
        tokenizer = AutoTokenizer.from_pretrained(root / "model")
        res = run_warmup(
            model,
            tokenizer,
            load_examples(data),
            root / f"warmup-r{rank}",
            WarmupSettings(fraction=0.5, epochs=1),
            LoraSettings(rank=rank, alpha=2 * rank),
            config=WARMUP_CONFIG,
        )
        epochs[rank] = res.checkpoints[0].path
    return {"model": root / "model", "data": data, "epochs": epochs}


@pytest.mark.parametrize(("projector", "adam_eps"), [("auto", "inside"), ("dense", "outside")])
def test_adam_features_equal_preconditioned_projection_by_hand(tmp_path, warm, projector, adam_eps):
    from safetensors.torch import load_file

    epoch = warm["epochs"][8]
    cfg = config(
        warm["data"],
        tmp_path / "store",
        warm["model"],
        adapter=str(epoch),
        optimizer=str(epoch),
        dim=384,
        projector=projector,
        adam_eps=adam_eps,
    )
    store = extract_features(cfg, progress=False)
    assert store.settings["projector"]["preconditioner"] == "adam" and store.layout.dim == 384
    # auto: the sparse JL projector wherever the flat gradient is needed
    assert store.settings["projector"]["projector"] == ("sparse" if projector == "auto" else "dense")
    assert store.settings["projector"]["eps_mode"] == adam_eps
    block = store.read()

    ref = Reference(cfg)
    moments = load_file(str(epoch / "optimizer.safetensors"))
    meta = json.loads((epoch / "optimizer.json").read_text())
    assert [p["name"] for p in meta["params"]] == [layer.param_name for layer in ref.grads.layers]
    adam = AdamState(moments["exp_avg"], moments["exp_avg_sq"], *meta["betas"], eps=meta["eps"], eps_mode=adam_eps)
    assert adam.exp_avg.abs().max() > 0  # the warm-up took steps
    records = sft_records(8)
    rows = [0, 3, 7]
    flat = torch.stack(
        [
            ref.example(
                records[i]["messages"][0]["content"],
                records[i]["messages"][1]["content"],
                FlatGradients(adam.num_params),
            )[0]
            for i in rows
        ]
    )
    proj = (
        SparseProjector(adam.num_params, k=384, seed=cfg.projection_seed)
        if projector == "auto"
        else DenseProjector(adam.num_params, k=384, seed=cfg.projection_seed)
    )
    want = proj.project_flat(adam.precondition(flat))
    assert_rows_match(block.features[rows], want.numpy())
    # Preconditioning changed the features: they are not the plain gradient's projection.
    plain = proj.project_flat(flat).numpy()
    assert not np.allclose(block.features[rows], plain, rtol=0.1)


def test_optimizer_of_another_lora_is_refused(tmp_path, warm):
    cfg = config(
        warm["data"],
        tmp_path / "store",
        warm["model"],
        adapter=str(warm["epochs"][8]),
        optimizer=str(warm["epochs"][4]),
        dim=64,
    )
    with pytest.raises(
        ValueError, match=r"Adam state \(\d+ parameters.*does not match the model's LoRA.*same checkpoint"
    ):
        extract_features(cfg, progress=False)
    assert not (tmp_path / "store").exists()


def test_optimizer_needs_a_flat_projection():
    with pytest.raises(ValueError, match="projector 'sparse', 'dense' or 'auto'"):
        FeatureConfig(data="x", out="y", optimizer="ckpt", projector="factorized")
    with pytest.raises(ValueError, match="sparse_s"):
        FeatureConfig(data="x", out="y", projector="sparse", dim=100, sparse_s=3)
    with pytest.raises(ValueError, match="adam_eps"):
        FeatureConfig(data="x", out="y", adam_eps="between")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last:K"):
        FeatureConfig(data="x", out="y", lora_layers="final:3")


# --------------------------------------------------------------------------------------- 7. bad rows


def blank_labels(monkeypatch, name: str, ids: set[str], side: int | None = None) -> None:
    """Wrap extract's encoder `name` so that the records with these ids carry no loss token (for pairs on
    side 0 (chosen), 1 (rejected) or 2 (both))."""
    real = getattr(extract, name)

    def blank(e):
        return type(e)(input_ids=list(e.input_ids), labels=[-100] * len(e), truncated=e.truncated)

    def wrapper(tokenizer, records, *args, **kwargs):
        encoded, stats = real(tokenizer, records, *args, **kwargs)
        for i, record in enumerate(records):
            if record.id in ids:
                enc = encoded[i]
                encoded[i] = (
                    blank(enc) if side is None else tuple(blank(x) if side in (s, 2) else x for s, x in enumerate(enc))
                )
        return encoded, stats

    monkeypatch.setattr(extract, name, wrapper)


def test_examples_without_loss_tokens_are_bad_rows_not_zero_rows(tmp_path, tiny_model_dir, monkeypatch):
    data = write_jsonl(tmp_path / "data.jsonl", sft_records(8))
    good = extract_features(config(data, tmp_path / "good", tiny_model_dir), progress=False).read()
    blank_labels(monkeypatch, "encode_examples", {"ex2", "ex5"})
    store = extract_features(config(data, tmp_path / "store", tiny_model_dir), progress=False)
    np.testing.assert_array_equal(store.bad_rows(), [2, 5])
    raw = np.load(tmp_path / "store" / "features.npy")
    assert np.isnan(raw[[2, 5]]).all()
    block = store.read()
    np.testing.assert_array_equal(block.valid, ~np.isin(np.arange(8), [2, 5]))
    assert np.isnan(block.extras["loss"][[2, 5]]).all() and (block.extras["tokens"][[2, 5]] == 0).all()
    keep = [0, 1, 3, 4, 6, 7]
    assert_rows_match(block.features[keep], good.features[keep])


@pytest.mark.parametrize("side", [0, 1, 2], ids=["chosen", "rejected", "both"])
def test_pairs_without_loss_tokens_are_bad_rows(tmp_path, tiny_model_dir, monkeypatch, side):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(5))
    blank_labels(monkeypatch, "encode_pairs", {"p3"}, side=side)
    store = extract_features(config(data, tmp_path / "store", tiny_model_dir, kind="pair"), progress=False)
    np.testing.assert_array_equal(store.bad_rows(), [3])
    block = store.read()
    assert np.isnan(block.extras["loss"][3]) and np.isnan(block.extras["margin"][3])
    assert block.valid.sum() == 4


# -------------------------------------------------------------------------------------- 8. bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "dpo"}, "kind must be one of"),
        ({"response": "both"}, "response must be one of"),
        ({"projector": "countsketch"}, "projector must be one of"),
        ({"dim": 0}, "dim must be positive"),
        ({"max_length": 512, "batch_tokens": 256}, "batch_tokens"),
        ({"limit": -1}, "limit must be >= 0"),
        ({"lora_rank": 0}, "rank"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureConfig(data="x", out="y", **kwargs)


def test_empty_data_is_refused(tmp_path, tiny_model_dir):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    cfg = config(empty, tmp_path / "store", tiny_model_dir)
    with pytest.raises(ValueError, match="no records"):
        extract_features(cfg, records=[], progress=False)
    with pytest.raises(ValueError, match="empty.jsonl: no records"):
        extract_features(cfg, progress=False)
    assert not (tmp_path / "store").exists()


def test_cli_help_and_missing_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["features", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--out", "--kind", "--adapter", "--optimizer", "--projector", "--overwrite"):
        assert flag in text
    assert main(["features", "--out", str(tmp_path / "store")]) == 2
    assert "gradsift features: error: missing --data" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
