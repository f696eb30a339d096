"""A bench run's durable record (``keep``): the small files that hold its finished work, copied out of the
working directory so that a run whose working directory is lost (a scratch disk, a fresh clone, a new machine)
resumes from what it had finished instead of from nothing.

Kept: the run's identity (``bench.json``), its sittings and learning-rate search, each finished selection (its
``bench-selection.json`` with the cost, and ``scores.parquet``: every pool row's score and rank), each finished
cell (``cell.json`` with its training record, and ``eval/*.json``: every evaluation example's result) and each
prepare step's ``step.json``. Not kept: models, adapters, caches and data sets, which are large and rebuilt
when needed: a restored cell is read back as it is, and retrained only when one of its benchmarks must be
scored again (another evaluation set); a prepare step runs again, and its checks are compared with the kept
ones (`compare_prepare`).

`restore` copies into the working directory what it lacks; `save` copies into ``keep`` what changed. A record
made with other settings is refused like a working directory (`check`); with ``overwrite`` the files it
kept are removed (only those: a file gradsift did not write there stays).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradsift.atomic import write_bytes_atomic

KEPT = (
    "bench.json",
    "lr_search.json",
    "sittings.json",
    "select/*/bench-selection.json",
    "select/*/scores.parquet",
    "cells/*/cell.json",
    "cells/*/eval/*.json",
    "prepare/*/step.json",
)
"""Glob patterns, relative to the run's ``out``, of the files a record keeps."""

_NOT_RESTORED = "prepare/*/step.json"
"""A prepare step's record without its model would claim a model that is not there: compared, not restored."""


def kept_files(root: Path) -> list[Path]:
    """The files under `root` that a record keeps, relative to `root`, sorted."""
    return sorted({p.relative_to(root) for pattern in KEPT for p in root.glob(pattern) if p.is_file()})


def _identity(path: Path) -> Any:
    try:
        return json.loads(path.read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check(keep: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Refuse a record of another run in `keep` (or, with `overwrite`, remove the files it kept).

    Raises:
        ValueError: `keep` holds a record made with other settings, and `overwrite` is off.
    """
    marker = keep / "bench.json"
    if not marker.exists():
        return
    old = _identity(marker)
    if old == identity:
        return
    if not overwrite:
        from gradsift.settings import check_same_settings

        check_same_settings(str(keep), old, identity, what="a kept bench record", elsewhere="choose another keep")
    for rel in kept_files(keep):
        (keep / rel).unlink()
    for d in sorted((p for p in keep.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def restore(out: Path, keep: Path) -> list[Path]:
    """Copy the kept files `out` lacks into it (not the prepare steps'); returns them, relative."""
    if not (keep / "bench.json").exists():
        return []
    restored = []
    for rel in kept_files(keep):
        if (out / rel).exists() or rel.match(_NOT_RESTORED):
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / rel, (keep / rel).read_bytes())
        restored.append(rel)
    return restored


def kept_prepare(keep: Path) -> dict[str, dict[str, Any]]:
    """The kept ``step.json`` of each prepare step, by step name."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(keep.glob("prepare/*/step.json"))}


def save(out: Path, keep: Path) -> int:
    """Copy into `keep` every kept file of `out` that it lacks or that differs; returns how many."""
    n = 0
    for rel in kept_files(out):
        data = (out / rel).read_bytes()
        target = keep / rel
        if target.exists() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)
        n += 1
    return n


def compare_prepare(kept: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> list[str]:
    """Notes for each prepare step redone here whose checks differ from the kept record's: the restored cells
    were trained on the model the kept record describes."""
    notes = []
    for name, old in kept.items():
        new = now.get(name)
        if new is None or old.get("checks") == new.get("checks"):
            continue
        notes.append(
            f"prepare {name} was redone (its model is not kept) and its checks differ from the kept record's "
            f"({old.get('checks')} then, {new.get('checks')} now): cells restored from the record were trained "
            "on the earlier model"
        )
    return notes
