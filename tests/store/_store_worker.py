"""A feature-store writer run as a separate process by the store tests (SIGKILL, concurrent writers).

Usage: python _store_worker.py PATH N DIM DTYPE BATCH DELAY RANK WORLD_SIZE [GO_FILE]

Opens (or creates) the store, then writes its share of the missing rows in batches, printing each
batch's row indices after `write_rows` returns (so a printed row is known to be done), sleeping
DELAY seconds between batches. With GO_FILE it first touches PATH-ready-RANK and waits for GO_FILE,
so that several workers start writing at the same moment.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from gradsift.store.features import FeatureStore

SETTINGS = {"model": "tiny", "projector": {"kind": "rademacher", "seed": 3}, "kind": "sft"}
BAD_ROW = 5  # this row's features are NaN, to check bad rows survive kills and resumes


def features_of(rows: np.ndarray, dim: int) -> np.ndarray:
    """[b, dim] float32 features, a fixed function of each row index."""
    out = np.stack([np.random.default_rng(int(r)).standard_normal(dim).astype(np.float32) for r in rows])
    out[rows == BAD_ROW] = np.nan
    return out


def losses_of(rows: np.ndarray) -> np.ndarray:
    """[b] float32 losses, a fixed function of each row index."""
    return (rows * 0.25 + 1).astype(np.float32)


def main(argv: list[str]) -> None:
    path, n, dim, dtype, batch, delay, rank, world = argv[:8]
    go = Path(argv[8]) if len(argv) > 8 else None
    # Waiting before `open`: with a go file, workers also race to create the store.
    if go is not None:
        Path(f"{path}-ready-{rank}").touch()
        while not go.exists():
            time.sleep(0.005)
    store = FeatureStore.open(path, int(n), int(dim), SETTINGS, dtype=dtype, extras=("loss",))
    todo = store.missing_rows(int(rank), int(world))
    for start in range(0, len(todo), int(batch)):
        rows = todo[start : start + int(batch)]
        store.write_rows(rows, features_of(rows, int(dim)), {"loss": losses_of(rows)})
        print(" ".join(str(r) for r in rows), flush=True)
        time.sleep(float(delay))
    store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
