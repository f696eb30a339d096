"""Length baseline: prefer longer responses (longer answers carry more supervision)."""

from __future__ import annotations

import numpy as np

from gradsift.recipes.base import ScoreContext
from gradsift.score.base import Scores


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
        sign = -1.0 if ctx.options.get("length_order", "long") == "short" else 1.0
        return Scores(score=sign * tokens, columns={"response_length": tokens}, info={"unit": unit})
