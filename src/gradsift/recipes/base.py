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
from gradsift.selection.budget import Budget
from gradsift.settings import settings_hash

DEFAULT_BUDGET = Budget(fraction=0.05)
"""What a method that keeps its top scores (or BIDS) selects when no budget is given; band methods keep their
whole band instead (TIF, LossDiff, IRM and fusion, methods.md section 3)."""


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
        budget: Number of candidates to select, when the user gave a budget; None: each method's own default,
            `top_k_budget` for the methods that keep their top scores, the whole band for band methods.
        shared: Intermediate results shared by the methods of one run (checkpoints, timings).
    """

    pool: list[Example]
    targets: list[Example]
    workdir: Path
    seed: int = 0
    max_length: int = 256
    batch_tokens: int = 1536
    load_model: Callable[[], LoadedModel] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None
    pairs: list[Pair] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)
    _model: LoadedModel | None = None
    _encoded: tuple[list[Encoded], EncodeStats] | None = field(default=None, init=False, repr=False)

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
    def pool_encode_stats(self) -> EncodeStats | None:
        """Truncation counts of the pool's tokenisation, or None when no method tokenised the pool."""
        return self._encoded[1] if self._encoded is not None else None

    @property
    def n(self) -> int:
        return len(self.pairs) if self.pairs else len(self.pool)

    @property
    def top_k_budget(self) -> int:
        """Candidates a top-k method keeps: the budget given, else `DEFAULT_BUDGET` of the candidates."""
        return self.budget if self.budget is not None else DEFAULT_BUDGET.resolve(self.n)


def adapter_digest(adapter_dir: str | Path) -> str:
    """Content hash of a saved adapter's weights (what a cache built on that adapter depends on).

    Raises:
        FileNotFoundError: The directory holds no ``adapter_model.*`` file.
    """
    # Imported here: the pipeline imports this module, and the gradient stack is not needed to start it.
    from gradsift.gradients.extract import file_digest

    files = sorted(Path(adapter_dir).glob("adapter_model.*"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model.* file")
    return settings_hash([file_digest(f) for f in files], 12)


class Recipe(Protocol):
    """Scores every candidate of a context."""

    def score(self, ctx: ScoreContext) -> Scores: ...
