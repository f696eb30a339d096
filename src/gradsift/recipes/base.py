"""The recipe interface: one verb, `score`, from a shared context (data, model, caches) to one value per candidate.

A recipe prepares a method's inputs (model forwards, warm-up, feature passes, DPO runs, generations), calls the
method's math in `gradsift.score` and, where the method selects by its own rule, `gradsift.selection`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gradsift.data.records import Example, Pair
from gradsift.data.tokenize import Encoded, EncodeStats, encode_examples
from gradsift.model.load import LoadedModel
from gradsift.score.base import Scores


@dataclass
class ScoreContext:
    """Everything a scorer may need, computed lazily and shared across methods of one run.

    Attributes:
        pool: Candidate examples (SFT) — empty for preference runs.
        targets: Target examples.
        pairs: Candidate preference pairs — empty for SFT runs.
        workdir: Directory for caches (feature stores, generations) reused by later runs.
        seed: Seed for every random choice.
        max_length: Token limit per sequence.
        batch_tokens: Padded tokens per batch (length-bucketed batching).
        load_model: Loads a new copy of the base model on each call.
        options: Method options (``SelectConfig`` fields) by name.
        budget: Number of candidates to select (for methods that select iteratively).
        shared: Intermediate results shared by the methods of one run (checkpoints, timings).
    """

    pool: list[Example]
    targets: list[Example]
    workdir: Path
    seed: int = 0
    max_length: int = 256
    batch_tokens: int = 4096
    load_model: Callable[[], LoadedModel] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    budget: int = 0
    pairs: list[Pair] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)
    _model: LoadedModel | None = None
    _encoded: tuple[list[Encoded], EncodeStats] | None = None

    @property
    def model(self) -> LoadedModel:
        """The shared model, loaded on first use. Never attach adapters to it: use :meth:`fresh_model`."""
        if self._model is None:
            self._model = self.fresh_model()
        return self._model

    def fresh_model(self) -> LoadedModel:
        """A new copy of the base model, for methods that attach LoRA adapters or train."""
        if self.load_model is None:
            raise ValueError("this method needs a model, but none was configured")
        return self.load_model()

    def encoded_pool(self) -> tuple[list[Encoded], EncodeStats]:
        """The pool tokenised with the model's tokenizer (cached)."""
        if self._encoded is None:
            self._encoded = encode_examples(self.model.tokenizer, self.pool, self.max_length)
        return self._encoded

    @property
    def n(self) -> int:
        return len(self.pairs) if self.pairs else len(self.pool)


class Recipe(Protocol):
    """Scores every candidate of a context."""

    def score(self, ctx: ScoreContext) -> Scores: ...
