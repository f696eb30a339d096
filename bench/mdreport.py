"""The frame of a side-by-side timing script's Markdown result: title, command, machine and date, then the
file written (its folder made) and printed. Imported by the scripts beside it (run as ``python bench/x.py``,
so this folder is on ``sys.path``)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path


def opening(title: str) -> list[str]:
    """The first lines: ``# title``, the command that ran and the machine with the date."""
    from gradsift.machine import machine_info

    m = machine_info()
    return [
        f"# {title}",
        "",
        f"- Command: `{' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}`",
        f"- Machine: {m['processor']}, {m['cpus']} CPUs, {m.get('memory', '?')}; torch {m['torch']}; "
        f"date {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}.",
    ]


def write(out: str | Path, lines: list[str]) -> None:
    """Write `lines` to `out` as one Markdown file and print it."""
    text = "\n".join(lines)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
