"""Settings and data shared by the bench tests: fast training and selection, demo data, a small bench config."""

from __future__ import annotations

import json
from pathlib import Path

from gradsift.data.demo import write_demo_data

FAST_TRAIN = {"max_steps": 2, "max_length": 64, "batch_size": 2, "save_steps": 1, "lr": 1e-3}
FAST_SELECT = {"max_length": 64, "batch_tokens": 512}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def demo_data(tmp_path: Path) -> tuple[Path, Path]:
    """A 24-example demo pool and 8 demo targets."""
    pool, targets = write_demo_data(tmp_path / "demo", n_pool=24, n_targets=8, seed=1)
    return pool, targets


def bench_dict(tmp_path, demo, model_dir, **kw):
    pool, targets = demo
    cfg = {
        "name": "tiny",
        "out": str(tmp_path / "work"),
        "results": str(tmp_path / "results"),
        "model": str(model_dir),
        "device": "cpu",
        "methods": ["random", "length"],
        "budgets": [6],
        "seeds": [0],
        "data": {
            "pool": {"sources": [{"path": str(pool)}]},
            "targets": {"sources": [{"path": str(targets), "task": "arith"}], "holdout": 4},
        },
        "train": dict(FAST_TRAIN),
        "select": dict(FAST_SELECT),
        "benchmarks": [
            {"name": "tl", "task": "target-loss", "data": "heldout", "max_length": 64},
            {"name": "gen", "task": "bbh", "data": "heldout", "max_new_tokens": 2, "limit": 2},
        ],
    }
    cfg.update(kw)
    return cfg
