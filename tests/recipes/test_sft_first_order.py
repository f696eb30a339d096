"""First-order checks of the SFT influence scores that ``gradsift select`` computes (methods.md sections 1, 2).

One small gradient step ``theta <- theta - eta * grad l(z)`` on candidate ``z`` changes a target objective by
``-eta <grad l(z), grad objective>`` to first order. The prediction below comes from what the pipeline
stored or scored; the actual change comes from a plain float64 reference: the same LoRA weights, one
example at a time, no padding, autograd for the step. The projections are the identity (``k_in`` and
``k_out`` larger than every side), so the stored features are the exact gradients and the comparison has
no sketching error. ``eta`` makes the largest predicted change 1e-5 nats, where the second-order term is
below 1% of the first-order one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from transformers import AutoModelForCausalLM

from gradsift.data.demo import make_targets, write_demo_data
from gradsift.data.load import load_examples
from gradsift.data.records import Kind
from gradsift.data.tokenize import IGNORE, Encoded, encode_examples
from gradsift.model.lora import LoraSettings, attach_lora, load_adapter
from gradsift.pipeline import SelectConfig, run_select
from gradsift.store.features import FeatureStore

torch.set_num_threads(1)

MAX_LENGTH = 96
SEED = 0  # the run's seed, which seeds the LoRA the pipeline attaches; the reference attaches the same one
LORA = LoraSettings(rank=4, alpha=8, target_modules=["q_proj", "v_proj"])
# Factorized projection with sides larger than any LoRA matrix's: the identity, so features are exact gradients.
EXACT = {
    "warmup": "none",
    "k_in": 10**6,
    "k_out": 10**6,
    "store_dtype": "float32",
    "lora_rank": LORA.rank,
    "lora_alpha": LORA.alpha,
    "lora_targets": ",".join(LORA.target_modules),
}
LARGEST_CHANGE = 1e-5
# |actual - predicted| allowed, relative to the largest predicted change (second order: under 0.5% here).
TOLERANCE = 0.02


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    return write_demo_data(tmp_path / "data", n_pool=16, n_targets=4, seed=3)[0]


def _select(tmp_path: Path, model_dir: Path, pool: Path, targets: Path, method: str, **options) -> tuple:
    cache = tmp_path / "cache"
    res = run_select(
        SelectConfig(
            pool=str(pool),
            targets=str(targets),
            out=str(tmp_path / f"out-{method}"),
            cache_dir=str(cache),
            methods=[method],
            budget="4",
            model=str(model_dir),
            device="cpu",
            max_length=MAX_LENGTH,
            batch_tokens=1024,
            seed=SEED,
            options={**EXACT, **options},
        )
    )
    return res, cache


def _store(cache: Path, pattern: str) -> FeatureStore:
    """The only store of the run whose name matches `pattern`, checked to hold exact gradients."""
    paths = sorted(cache.glob(f"features/*/{pattern}"))
    assert len(paths) == 1, paths
    store = FeatureStore.load(paths[0])
    settings = store.settings
    assert settings["projector"]["dim"] == settings["lora_params"], "the projection is not the identity"
    return store


class Reference:
    """The pipeline's checkpoint rebuilt in float64, with per-example losses computed one example at a time."""

    def __init__(self, model_dir: Path, adapter: Path | None, seed: int) -> None:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = load_adapter(base, adapter) if adapter else attach_lora(base, LORA, seed=seed)
        self.model = model.double().eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        assert self.params and all(p.dtype == torch.float64 for p in self.params)

    def nll(self, enc: Encoded) -> tuple[torch.Tensor, int]:
        """Summed negative log-likelihood of the response tokens and their count."""
        ids = torch.tensor([enc.input_ids])
        labels = torch.tensor(enc.labels[1:])
        logits = self.model(input_ids=ids).logits[0, :-1]
        mask = labels != IGNORE
        assert mask.any(), "an example without response tokens"
        logp = torch.log_softmax(logits, dim=-1)[mask].gather(-1, labels[mask][:, None])
        return -logp.sum(), int(mask.sum())

    def mean_loss(self, enc: Encoded) -> torch.Tensor:
        total, n = self.nll(enc)
        return total / n

    def step_changes(self, candidates: list[Encoded], objective, eta: float, summed: bool) -> np.ndarray:
        """objective(after) - objective(before) for one step of size eta on each candidate's loss, weights restored."""
        with torch.no_grad():
            before = float(objective())
        saved = [p.detach().clone() for p in self.params]
        out = []
        for enc in candidates:
            loss = self.nll(enc)[0] if summed else self.mean_loss(enc)
            grads = torch.autograd.grad(loss, self.params)
            with torch.no_grad():
                for p, g in zip(self.params, grads, strict=True):
                    p.sub_(eta * g)
                out.append(float(objective()) - before)
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)
        return np.array(out)


def _check_first_order(actual: np.ndarray, predicted: np.ndarray, score: np.ndarray, sign: int) -> None:
    """`sign` is +1 when a high score should raise the objective (PRISM), -1 when it should lower it (LESS loss)."""
    assert np.all(np.isfinite(score))
    rho = spearmanr(predicted, actual).statistic
    assert rho >= 0.8, (rho, predicted, actual)
    assert np.abs(actual - predicted).max() <= TOLERANCE * np.abs(predicted).max(), (predicted, actual)
    top, bottom = int(np.argmax(score)), int(np.argmin(score))
    assert sign * actual[top] > 0, (top, score[top], actual[top])
    if score[bottom] < 0:
        assert sign * actual[bottom] < 0, (bottom, score[bottom], actual[bottom])


@pytest.mark.parametrize("init", ["default", "gaussian"])
def test_less_step_on_candidate_changes_target_loss_by_lr_times_inner_product(
    tmp_path, tiny_model_dir, tiny_tokenizer, pool_file, init
):
    # default: peft's B = 0 start, as the pipeline attaches it (only B has gradients);
    # gaussian: A and B both random, saved and passed as the user `adapter`, so both have gradients.
    adapter = None
    options = {}
    if init == "gaussian":
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        adapter = tmp_path / "adapter"
        attach_lora(base, LORA, seed=7, init="gaussian").save_pretrained(adapter)
        options["adapter"] = str(adapter)
    targets_file = pool_file.parent / "targets.jsonl"
    res, cache = _select(tmp_path, tiny_model_dir, pool_file, targets_file, "less", **options)
    cands = _store(cache, "pool-*").read()
    tgts = _store(cache, "targets-*").read()
    assert cands.valid.all() and tgts.valid.all()
    # with B = 0 the gradients w.r.t. A vanish, so some feature columns are all zero; with both random none is
    assert (np.abs(cands.features).max(axis=0) > 0).all() == (init == "gaussian")

    pool = load_examples(str(pool_file), kind=Kind.SFT)
    targets = load_examples(str(targets_file), kind=Kind.TARGET)
    enc_pool, _ = encode_examples(tiny_tokenizer, pool, MAX_LENGTH)
    enc_targets, _ = encode_examples(tiny_tokenizer, targets, MAX_LENGTH)
    ref = Reference(tiny_model_dir, adapter, seed=SEED)

    # d/d eta of mean_j lbar(v_j) along -g(z) is -<g(z), mean_j g(v_j)>
    dots = cands.features.astype(np.float64) @ tgts.features.astype(np.float64).mean(axis=0)
    eta = LARGEST_CHANGE / np.abs(dots).max()
    actual = ref.step_changes(
        enc_pool, lambda: torch.stack([ref.mean_loss(e) for e in enc_targets]).mean(), eta, summed=False
    )
    _check_first_order(actual, -eta * dots, res.scores["less"].score, sign=-1)


def test_prism_step_on_candidate_changes_preference_margin_by_lr_times_score(
    tmp_path, tiny_model_dir, tiny_tokenizer, pool_file
):
    # targets with explicit y-: another target's answer, a plausible wrong response to this prompt
    records = make_targets(4, seed=3)
    for i, r in enumerate(records):
        r["rejected"] = records[(i + 1) % len(records)]["output"]
    targets_file = tmp_path / "targets-with-rejected.jsonl"
    targets_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    res, _ = _select(tmp_path, tiny_model_dir, pool_file, targets_file, "prism")
    score = res.scores["prism"].score
    assert res.scores["prism"].info["n_generated_rejected"] == 0

    pool = load_examples(str(pool_file), kind=Kind.SFT)
    targets = load_examples(str(targets_file), kind=Kind.TARGET)
    enc_pool, _ = encode_examples(tiny_tokenizer, pool, MAX_LENGTH)
    enc_plus, _ = encode_examples(tiny_tokenizer, targets, MAX_LENGTH)
    enc_minus, _ = encode_examples(tiny_tokenizer, targets, MAX_LENGTH, response="rejected")
    ref = Reference(tiny_model_dir, None, seed=SEED)

    with torch.no_grad():
        lp = torch.stack([ref.mean_loss(e) for e in enc_plus])
        lm = torch.stack([ref.mean_loss(e) for e in enc_minus])
    # pi_q = pbar(y+) / (pbar(y+) + pbar(y-)) at the pre-step weights, then held fixed
    pi = torch.sigmoid(lm - lp)
    np.testing.assert_allclose(res.scores["prism"].info["preference_weights"]["base"], pi.numpy(), atol=1e-4)

    def margin() -> torch.Tensor:
        # mean_q pi_q (log pbar(y+|q) - log pbar(y-|q)) = mean_q pi_q (lbar(q, y-) - lbar(q, y+))
        plus = torch.stack([ref.mean_loss(e) for e in enc_plus])
        minus = torch.stack([ref.mean_loss(e) for e in enc_minus])
        return (pi * (minus - plus)).mean()

    eta = LARGEST_CHANGE / np.abs(score).max()
    actual = ref.step_changes(enc_pool, margin, eta, summed=True)
    _check_first_order(actual, eta * score, score, sign=1)
