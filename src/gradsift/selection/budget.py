"""Selection budgets: a count of examples or a fraction of the pool.

Grammar of `Budget.parse`: an integer (``"50"``) is a count; a decimal (``"0.05"``, ``"1.0"``, ``"5e-2"``) is a
fraction of the pool in (0, 1]; a number followed by ``%`` (``"5%"``, ``"12.5%"``) is a percentage in (0, 100].
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from fractions import Fraction

_INTEGER = re.compile(r"\d+")
_DECIMAL = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Budget:
    """How many candidates to select. Exactly one field is set.

    Attributes:
        count: Number of examples, >= 1 (more than the pool selects the whole pool).
        fraction: Fraction of the pool, in (0, 1].
    """

    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("a budget is either a count or a fraction: set exactly one of them")
        if self.count is not None:
            if isinstance(self.count, bool) or not isinstance(self.count, numbers.Integral):
                raise ValueError(f"budget count must be an integer, got {self.count!r}")
            object.__setattr__(self, "count", int(self.count))
            if self.count < 1:
                raise ValueError(f"budget count must be >= 1, got {self.count}")
        if self.fraction is not None:
            if isinstance(self.fraction, bool) or not isinstance(self.fraction, numbers.Real):
                raise ValueError(f"budget fraction must be a number, got {self.fraction!r}")
            object.__setattr__(self, "fraction", float(self.fraction))
            if not 0 < self.fraction <= 1:
                raise ValueError(
                    f"budget fraction must be in (0, 1], got {self.fraction}; write an integer such as 50 for a "
                    "count, or a percentage such as 5%"
                )

    @classmethod
    def parse(cls, value: str | int | float | Budget) -> Budget:
        """Read a budget from the command line or a config file.

        Args:
            value: ``"50"`` or ``50`` (count), ``"0.05"`` or ``0.05`` (fraction), ``"5%"`` (percentage), or a
                `Budget` (returned as is).

        Returns:
            The budget.

        Raises:
            ValueError: If the text is not one of the forms above, or the number is out of range.
        """
        if isinstance(value, Budget):
            return value
        if isinstance(value, bool):
            raise ValueError(f"budget must be a count, fraction or percentage, got {value!r}")
        if isinstance(value, numbers.Integral):
            return cls(count=int(value))
        if isinstance(value, numbers.Real):
            return cls(fraction=float(value))
        if not isinstance(value, str):
            raise ValueError(f"budget must be a string or number, got {type(value).__name__}")
        text = value.strip()
        hint = "use a count (50), a fraction (0.05) or a percentage (5%)"
        if text.endswith("%"):
            number = text[:-1].strip()
            if not _DECIMAL.fullmatch(number):
                raise ValueError(f"cannot read budget {value!r} as a percentage; {hint}")
            percent = Fraction(number)
            if not 0 < percent <= 100:
                raise ValueError(f"budget percentage must be in (0, 100], got {value!r}")
            return cls(fraction=float(percent / 100))
        if _INTEGER.fullmatch(text):
            return cls(count=int(text))
        if _DECIMAL.fullmatch(text):
            return cls(fraction=float(Fraction(text)))
        if text.startswith("-"):
            raise ValueError(f"budget must be positive, got {value!r}")
        raise ValueError(f"cannot read budget {value!r}; {hint}")

    def resolve(self, n_total: int) -> int:
        """Number of examples to select from a pool of `n_total`.

        A count above the pool size selects the whole pool. A fraction is rounded to the nearest count, halves
        rounding up, using the decimal the fraction was written as (``0.15 * 10`` gives 2, not 1 from the
        binary value just below 0.15), and is at least 1.

        Args:
            n_total: Pool size N, >= 1.

        Returns:
            An integer in [1, N].

        Raises:
            ValueError: If the pool is empty.
        """
        if isinstance(n_total, bool) or not isinstance(n_total, numbers.Integral) or n_total < 1:
            raise ValueError(f"cannot select from a pool of {n_total!r} examples")
        if self.count is not None:
            return min(self.count, int(n_total))
        assert self.fraction is not None  # __post_init__ guarantees one field; this narrows the type
        exact = Fraction(repr(float(self.fraction))) * n_total
        return max(1, min(n_total, math.floor(exact + Fraction(1, 2))))

    def __str__(self) -> str:
        """The budget in `parse`'s grammar: ``parse(str(b)) == b``."""
        return str(self.count) if self.count is not None else repr(float(self.fraction))  # type: ignore[arg-type]
