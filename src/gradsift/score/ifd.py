"""IFD, instruction-following difficulty (Li et al. 2024, "From Quantity to Quality", Cherry LLM).

``IFD(x, y) = lbar(y | x) / lbar(y)``: the token-mean response loss with the instruction divided by
the loss of the response alone. High IFD: the instruction helps little, so the example teaches the
model something. Examples with IFD >= 1 (the instruction does not help at all, often misaligned
pairs) are dropped by default, as in the source (option ``ifd_max``, default 1.0).
"""

from __future__ import annotations

import numpy as np

from gradsift.data.tokenize import encode_messages
from gradsift.recipes.base import ScoreContext
from gradsift.score.base import Scores
from gradsift.score.loss import per_example_losses


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
        with np.errstate(divide="ignore", invalid="ignore"):
            ifd = cond / direct
        limit = float(ctx.options.get("ifd_max", 1.0))
        score = np.where(ifd < limit, ifd, np.nan)
        return Scores(
            score=score,
            columns={"ifd": ifd, "loss_with_instruction": cond, "loss_alone": direct},
            info={"ifd_max": limit, "n_dropped_ifd_max": int(np.sum(~(ifd < limit)))},
        )
