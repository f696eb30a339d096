"""Embedding similarity to the targets.

Candidates and targets are unit-normalised sentence embeddings (made in `gradsift.recipes.baselines`); a
candidate's score is its cosine similarity to the nearest target (``reduce="max"``, default) or the mean
over targets (``"mean"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class TargetSimilarity:
    """Cosine similarities of each candidate to the targets.

    Attributes:
        best: [N] similarity to the nearest target.
        mean: [N] mean similarity over the targets.
    """

    best: np.ndarray
    mean: np.ndarray

    def score(self, reduce: Literal["max", "mean"] = "max") -> np.ndarray:
        """float64 [N]: `best` for ``"max"``, `mean` for ``"mean"``.

        Raises:
            ValueError: On another `reduce`.
        """
        if reduce not in ("max", "mean"):
            raise ValueError(f"embed_reduce must be 'max' or 'mean', got {reduce!r}")
        return (self.best if reduce == "max" else self.mean).astype(np.float64)


def target_similarity(candidates: np.ndarray, targets: np.ndarray) -> TargetSimilarity:
    """Nearest-target and mean cosine similarity of every candidate.

    Args:
        candidates: Unit-norm embeddings [N, d].
        targets: Unit-norm embeddings [M, d], M >= 1.

    Returns:
        The similarities, in the embeddings' dtype.

    Raises:
        ValueError: If there is no target or the embedding sizes differ.
    """
    if targets.ndim != 2 or len(targets) == 0:
        raise ValueError("embedding similarity needs at least one target embedding")
    if candidates.ndim != 2 or candidates.shape[1] != targets.shape[1]:
        raise ValueError(f"candidate embeddings {candidates.shape} and targets {targets.shape} must share d")
    sims = candidates @ targets.T
    return TargetSimilarity(best=sims.max(axis=1), mean=sims.mean(axis=1))
