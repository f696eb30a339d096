"""Progress of long stages: a bar with an ETA on a terminal, periodic one-line log messages anywhere else.

Feature extraction, forward passes and the other long loops report through `progress`. How they show depends on
the process-wide mode (`set_mode`, ``gradsift --quiet``):

- ``auto`` (default): a tqdm bar when stderr is a terminal, log lines when it is not (a scheduler's log file,
  CI), where a bar's carriage returns would leave one garbled line per refresh.
- ``bar``: always a bar.
- ``log``: one INFO line on the ``gradsift.progress`` logger at most every `LOG_EVERY_S` seconds, and one when
  the stage ends (unless the last one already said it all), e.g.
  ``features pool: 1200/5000 ex (24%), 11.8 ex/s, elapsed 1m42s, ETA 5m22s``. The command line shows these
  lines; a library user sees them once logging is configured at INFO for that logger.
- ``off``: nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

Mode = Literal["auto", "bar", "log", "off"]
MODES: tuple[Mode, ...] = ("auto", "bar", "log", "off")
LOG_EVERY_S = 30.0
"""Seconds between two log lines of one stage in ``log`` mode."""

log = logging.getLogger("gradsift.progress")
_mode: Mode = "auto"


def set_mode(mode: str) -> None:
    """Choose how every later stage shows its progress (module docstring).

    Raises:
        ValueError: `mode` is not one of ``auto``, ``bar``, ``log``, ``off``.
    """
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    _mode = mode  # type: ignore[assignment]


def get_mode() -> Mode:
    """The mode set with `set_mode` (``auto`` unless changed)."""
    return _mode


def bars() -> bool:
    """Whether the current mode draws bars: for libraries with bars of their own (TRL's trainers take
    ``disable_tqdm=not bars()``), so that they stay off the logs too."""
    return _mode == "bar" or (_mode == "auto" and _isatty(sys.stderr))


def duration(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``2h05m``: short enough for a log line.

    Example:
        >>> duration(187.2)
        '3m07s'
    """
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of one stage of `total` steps; use as a context manager or call `close`.

    Args:
        total: Steps in the stage (examples, batches, pairs).
        desc: What the stage is, the start of every line (``features pool``).
        unit: Name of a step.
        enabled: False shows nothing whatever the mode (e.g. ranks other than 0 of a distributed run).
        every: Seconds between log lines (default `LOG_EVERY_S`).
        clock: Time source in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = 0
        self._clock = clock
        self._start = self._last = clock()
        self._every = LOG_EVERY_S if every is None else every
        self._closed = False
        self._logged: int | None = None  # steps done at the last log line
        mode = _mode if enabled else "off"
        if mode == "auto":
            mode = "bar" if bars() else "log"
        self.mode: Mode = mode
        self._bar: Any = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count `n` more steps done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and self._clock() - self._last >= self._every:
            self._emit()

    def line(self) -> str:
        """The stage's state as one line: steps done, share, rate, elapsed time and, while running, the ETA."""
        elapsed = self._clock() - self._start
        done = f"{self.n}/{self.total} {self.unit}"
        if self.total:
            done += f" ({self.n / self.total:.0%})"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        # three significant digits, but never scientific notation in a log line (1190 ex/s, not 1.19e+03)
        shown = f"{rate:.0f}" if rate >= 1000 else f"{rate:.3g}"
        parts = [f"{self.desc}: {done}", f"{shown} {self.unit}/s", f"elapsed {duration(elapsed)}"]
        if not self._closed and 0 < self.n < self.total and rate > 0:
            parts.append(f"ETA {duration((self.total - self.n) / rate)}")
        return ", ".join(parts)

    def _emit(self) -> None:
        self._last = self._clock()
        self._logged = self.n
        log.info(self.line())

    def close(self) -> None:
        """End the stage: a bar disappears, log mode writes its final line. Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self._logged != self.n:
            self._emit()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True) -> Progress:
    """A `Progress` for a stage of `total` steps, shown as the current mode says (module docstring)."""
    return Progress(total, desc, unit, enabled)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
