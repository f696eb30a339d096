"""What every method shares: the method names and the result type, one score per candidate."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Method(StrEnum):
    """Selection methods. Each maps to one scorer."""

    RANDOM = "random"
    LENGTH = "length"
    LOSS = "loss"
    PERPLEXITY = "perplexity"
    IFD = "ifd"
    EMBED = "embed"
    LESS = "less"
    PRISM = "prism"
    BIDS = "bids"
    TIF = "tif"
    LOSSDIFF = "lossdiff"
    IRM = "irm"
    FUSION = "fusion"

    @classmethod
    def parse_list(cls, text: str | list[str]) -> list[Method]:
        """Parse ``"less,prism"`` or a list into methods, with a clear error for unknown names."""
        names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
        if not names:
            raise ValueError("no method given; choose from " + ", ".join(m.value for m in cls))
        out = []
        for n in names:
            try:
                out.append(cls(n.lower()))
            except ValueError:
                raise ValueError(f"unknown method '{n}'; choose from " + ", ".join(m.value for m in cls)) from None
        return out


@dataclass
class Scores:
    """One method's result.

    Attributes:
        score: [N] float64, higher means keep first. NaN marks a candidate that must not be selected.
        columns: Extra per-candidate columns [N] for ``scores.parquet`` (e.g. raw loss, per-task influence).
        info: JSON-serialisable facts for ``config.json`` (timings, counts, excluded ids).
        selected: Optional explicit selection (row indices, in selection order) for methods whose
            selection is not a top-k of `score` (BIDS, band rules).
    """

    score: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    selected: list[int] | None = None
