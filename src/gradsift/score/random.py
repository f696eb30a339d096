"""Random selection: a seeded uniform score, the baseline every comparison includes."""

from __future__ import annotations

import numpy as np

from gradsift.recipes.base import ScoreContext
from gradsift.score.base import Scores


class RandomScorer:
    """Uniform random scores from ``numpy.random.default_rng(seed)``; a different seed gives another draw."""

    def score(self, ctx: ScoreContext) -> Scores:
        rng = np.random.default_rng(ctx.seed)
        return Scores(score=rng.random(ctx.n), info={"seed": ctx.seed})
