"""What cached steps cost, so a method that reuses another's step can still report its stand-alone cost.

A step that computes a cache entry (a warm-up run, a log-probability pass, a gradient pass) records its wall and
CPU seconds beside the entry (`cost_path`) with the label of the job that computed it. A later job
that reuses the entry is charged that recorded cost (`charged`): its own spending plus its charges is what it
would have cost alone, whichever method happened to compute the shared step first. An entry reused by the job
that computed it (resumed after a kill) is not charged again; that job's spending already holds it.

A step killed part-way records nothing; the job that finishes it records the last sitting's seconds only.

CPU seconds are ``time.process_time``: every thread of this process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gradsift.atomic import write_json_atomic


@dataclass
class _Charges:
    job: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    entries: list[str] = field(default_factory=list)


_state = _Charges()


def cost_path(entry: Path) -> Path:
    """The cost record of cache entry `entry` (a file or a directory): ``.costs/<entry name>.json`` in its
    folder (apart from the entries, so a listing of them, or a run directory's own check, never sees it)."""
    return entry.parent / ".costs" / f"{entry.name}.json"


@contextmanager
def job(label: str) -> Iterator[None]:
    """Run a job (one method's selection) under `label`: charges start from zero and stop with it."""
    global _state
    _state = _Charges(job=label)
    try:
        yield
    finally:
        _state.job = None


def now() -> tuple[float, float]:
    """(wall, CPU) clock readings to pass to `record`."""
    return time.perf_counter(), time.process_time()


def record(entry: Path, since: tuple[float, float]) -> None:
    """Record that computing cache entry `entry` took from `since` (`now`) until now."""
    cost_path(entry).parent.mkdir(parents=True, exist_ok=True)
    wall, cpu = now()
    cost = {"wall_s": round(wall - since[0], 3), "cpu_s": round(cpu - since[1], 3), "job": _state.job}
    write_json_atomic(cost_path(entry), cost)


@contextmanager
def computing(entry: Path) -> Iterator[None]:
    """Measure the computation of cache entry `entry` and record it when it succeeds."""
    since = now()
    yield
    record(entry, since)


def reuse(entry: Path) -> None:
    """Charge the current job what cache entry `entry` cost when it was computed (nothing when this job
    computed it, or when no cost was recorded, e.g. an entry older than the records)."""
    path = cost_path(entry)
    if not path.exists():
        return
    record = json.loads(path.read_text())
    if record.get("job") is not None and record.get("job") == _state.job:
        return
    if str(entry) in _state.entries:  # read twice in one job: charged once
        return
    _state.entries.append(str(entry))
    _state.wall_s += float(record.get("wall_s", 0.0))
    _state.cpu_s += float(record.get("cpu_s", 0.0))


def charged() -> dict[str, float | list[str]]:
    """What the current job has been charged for reused entries: ``wall_s``, ``cpu_s`` and the ``entries``."""
    return {"wall_s": round(_state.wall_s, 3), "cpu_s": round(_state.cpu_s, 3), "entries": list(_state.entries)}
