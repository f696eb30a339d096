"""The cheap baselines' recipes (recipes/baselines.py): batched per-example losses against one forward per
example, and the inputs each baseline hands its math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gradsift.data.demo import write_demo_data
from gradsift.data.load import load_examples
from gradsift.data.records import Example, Kind
from gradsift.data.tokenize import IGNORE, Encoded, encode_examples, encode_messages
from gradsift.model.load import ModelSettings, load_model
from gradsift.recipes.base import ScoreContext
from gradsift.recipes.baselines import (
    EmbedScorer,
    IFDScorer,
    LengthScorer,
    LossScorer,
    RandomScorer,
    per_example_losses,
)

torch.set_num_threads(1)

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[list[Example], list[Example]]:
    pool, targets = write_demo_data(tmp_path_factory.mktemp("data"), n_pool=12, n_targets=3, seed=1)
    return load_examples(str(pool), kind=Kind.SFT), load_examples(str(targets), kind=Kind.TARGET)


def _ctx(tmp_path: Path, data, model_dir: Path | None, targets: bool = False, **options) -> ScoreContext:
    return ScoreContext(
        pool=data[0],
        targets=data[1] if targets else [],
        workdir=tmp_path,
        seed=3,
        max_length=MAX_LENGTH,
        batch_tokens=160,
        load_model=(lambda: load_model(ModelSettings(model=str(model_dir), device="cpu"))) if model_dir else None,
        options=options,
    )


def _reference_loss(model, enc: Encoded) -> float:
    """Token-mean response loss of one unpadded example."""
    ids = torch.tensor([enc.input_ids])
    labels = torch.tensor(enc.labels[1:])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    mask = labels != IGNORE
    return float(-logp[mask].gather(-1, labels[mask][:, None]).mean())


def test_batched_losses_equal_one_forward_per_example(tiny_model, tiny_tokenizer, data):
    encoded, _ = encode_examples(tiny_tokenizer, data[0], MAX_LENGTH)
    # no response token: its loss is undefined, NaN, and must not disturb its batch
    prompt_only = encode_messages(tiny_tokenizer, [{"role": "user", "content": "hello"}], MAX_LENGTH)
    assert prompt_only.n_loss_tokens == 0
    encoded.insert(3, prompt_only)
    # a small token budget: several batches of mixed lengths, so padding is exercised
    loss = per_example_losses(tiny_model, encoded, tiny_tokenizer.pad_token_id, batch_tokens=150)
    assert np.isnan(loss[3]) and np.isfinite(np.delete(loss, 3)).all()
    expected = [_reference_loss(tiny_model, e) for i, e in enumerate(encoded) if i != 3]
    np.testing.assert_allclose(np.delete(loss, 3), expected, rtol=1e-4)
    summed = per_example_losses(tiny_model, encoded, tiny_tokenizer.pad_token_id, 150, reduction="sum")
    tokens = np.array([e.n_loss_tokens for e in encoded], dtype=np.float64)
    np.testing.assert_allclose(np.delete(summed, 3), np.delete(loss * tokens, 3), rtol=1e-4)


def test_loss_and_perplexity_scores(tmp_path, tiny_model_dir, data):
    ctx = _ctx(tmp_path, data, tiny_model_dir)
    loss = LossScorer().score(ctx)
    ppl = LossScorer(perplexity=True).score(ctx)
    low = LossScorer().score(_ctx(tmp_path, data, tiny_model_dir, loss_order="low"))
    np.testing.assert_array_equal(loss.score, loss.columns["loss"])
    np.testing.assert_allclose(ppl.score, np.exp(loss.columns["loss"]))
    np.testing.assert_array_equal(low.score, -loss.columns["loss"])
    assert loss.info == {"truncated": ctx.pool_encode_stats.n_truncated, "no_loss_tokens": 0}


def test_ifd_divides_the_conditioned_loss_by_the_loss_alone(tmp_path, tiny_model_dir, data):
    ctx = _ctx(tmp_path, data, tiny_model_dir)
    res = IFDScorer().score(ctx)
    # the conditioned loss is the loss baseline's
    np.testing.assert_array_equal(res.columns["loss_with_instruction"], LossScorer().score(ctx).columns["loss"])
    ifd = res.columns["loss_with_instruction"] / res.columns["loss_alone"]
    np.testing.assert_array_equal(res.columns["ifd"], ifd)
    np.testing.assert_array_equal(res.score, np.where(ifd < 1.0, ifd, np.nan))
    assert res.info == {"ifd_max": 1.0, "n_dropped_ifd_max": int((ifd >= 1.0).sum())}
    # a limit above every IFD keeps them all
    wide = IFDScorer().score(_ctx(tmp_path, data, tiny_model_dir, ifd_max=float(ifd.max()) + 1))
    np.testing.assert_array_equal(wide.score, ifd)


def test_length_counts_loss_tokens_with_a_model_and_characters_without(tmp_path, tiny_model_dir, data):
    ctx = _ctx(tmp_path, data, tiny_model_dir)
    tokens = LengthScorer().score(ctx)
    encoded, _ = ctx.encoded_pool()
    np.testing.assert_array_equal(tokens.score, [e.n_loss_tokens for e in encoded])
    assert tokens.info == {"unit": "tokens"}
    chars = LengthScorer().score(_ctx(tmp_path, data, None, length_order="short"))
    np.testing.assert_array_equal(chars.score, [-len(ex.response) for ex in ctx.pool])
    assert chars.info == {"unit": "characters"}


def test_random_needs_no_model_and_follows_the_seed(tmp_path, data):
    ctx = _ctx(tmp_path, data, None)
    res = RandomScorer().score(ctx)
    np.testing.assert_array_equal(res.score, np.random.default_rng(3).random(12))
    assert res.info == {"seed": 3}


def test_embed_needs_targets(tmp_path, data):
    with pytest.raises(ValueError, match="the embed method needs --targets"):
        EmbedScorer().score(_ctx(tmp_path, data, None))


def test_embed_scores_each_candidate_by_its_nearest_target(tmp_path, data):
    res = EmbedScorer().score(_ctx(tmp_path, data, None, targets=True))
    np.testing.assert_array_equal(res.score, res.columns["max_sim"].astype(np.float64))
    assert (res.columns["max_sim"] >= res.columns["mean_sim"]).all()
    assert res.info["reduce"] == "max"
