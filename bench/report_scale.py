"""The selection report at scale: time and size of ``report.html`` for a 3-method selection (LESS, PRISM, BIDS) of
50,000 candidates (gradsift issue 14; the page must render in under 10 s and stay under 5 MB).

The run directory is synthetic but laid out as ``gradsift select`` lays it out: the demo's generator writes a
multi-skill pool and two-skill targets, candidate and target gradient features are random with a skill
component (so the methods prefer the target skills), and the scores, selections and "helps most" columns
come from gradsift's own scoring functions on them. Timed: the page built from records in memory (what
``gradsift select`` does), and ``gradsift.rebuild_report`` rebuilding it from the files (reading the pool again).

Run: ``.venv/bin/python bench/report_scale.py [--n 50000] [--out runs/bench/report-scale]`` (``--quick``:
5,000 candidates). `synthetic_run` is also the fixture of tests/report/test_selection_report.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
SKILLS = ("arithmetic", "capitals")
K, BUDGET_FRACTION = 32, 0.05


def _features(tasks: list[str | None], rng: np.random.Generator) -> np.ndarray:
    """Random [len(tasks), K] features with a component along each target skill's direction."""
    x = rng.normal(size=(len(tasks), K))
    for j, skill in enumerate(SKILLS):
        x[[t == skill for t in tasks], j] += 2.0
    return x


def synthetic_run(out: str | Path, n: int, n_targets: int = 20, seed: int = 0) -> Path:
    """Write a finished 3-method (less, prism, bids) selection run of `n` candidates into `out`.

    Returns:
        The run directory, with ``pool.jsonl``, ``targets.jsonl``, ``scores.parquet`` and ``config.json`` (no
        ``report.html``: make it with ``gradsift.rebuild_report``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradsift.atomic import write_json_atomic, write_text_atomic
    from gradsift.data.demo import make_pool, make_targets
    from gradsift.data.load import load_examples
    from gradsift.data.records import Kind, fingerprint
    from gradsift.score.influence import influence_matrix, top_targets
    from gradsift.score.less import less_scores
    from gradsift.score.prism import prism_scores
    from gradsift.selection.bids import bids_select, zscore_columns
    from gradsift.selection.topk import top_k

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool_path, targets_path = out / "pool.jsonl", out / "targets.jsonl"
    rows = make_pool(n, seed)
    write_text_atomic(pool_path, "".join(json.dumps(r) + "\n" for r in rows))
    half = n_targets // 2
    target_rows = make_targets(half, seed) + make_targets(n_targets - half, seed, skill="capitals")
    write_text_atomic(targets_path, "".join(json.dumps(r) + "\n" for r in target_rows))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    pool = load_examples(str(pool_path), kind=Kind.SFT)
    targets = load_examples(str(targets_path), kind=Kind.TARGET)
    timings["read"] = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    cands = _features([r.task for r in pool], rng).astype(np.float16)
    plus = _features([t.task for t in targets], rng)
    minus = rng.normal(size=plus.shape)
    budget = max(1, round(BUDGET_FRACTION * n))

    t = time.perf_counter()
    less = less_scores([cands], [plus], [t.task for t in targets], helps=3)
    less_selected = top_k(less.scores, budget).indices
    timings["score_less"] = time.perf_counter() - t
    t = time.perf_counter()
    prism = prism_scores([cands], [plus], [minus], rng.uniform(1, 2, n_targets), rng.uniform(1, 2, n_targets), helps=3)
    prism_selected = top_k(prism.scores, budget).indices
    timings["score_prism"] = time.perf_counter() - t
    t = time.perf_counter()
    a = influence_matrix([cands], [plus], None, normalize=True)
    bids = bids_select(a, budget)
    z = zscore_columns(a)
    bids_top = top_targets(z, 3)
    timings["score_bids"] = time.perf_counter() - t
    ids = np.array([t.id for t in targets] + [None], dtype=object)
    cols: dict[str, object] = {
        "row": np.arange(n),
        "id": [r.id for r in pool],
        "task": [r.task for r in pool],
        "source": [r.source for r in pool],
        "line": [r.line for r in pool],
    }
    methods = {
        "less": (less.scores, less_selected, less.helps),
        "prism": (prism.scores, prism_selected, prism.helps),
        "bids": (z.max(axis=1).astype(np.float64), bids.indices, bids_top),
    }
    for m, (score, selected, helps) in methods.items():
        rank = np.full(n, -1)
        rank[selected] = np.arange(len(selected))
        cols[f"score_{m}"], cols[f"rank_{m}"], cols[f"selected_{m}"] = score, rank, rank >= 0
        assert helps is not None
        for j in range(3):
            cols[f"{m}_help_{j + 1}_id"] = ids[helps.index[:, j]]
            cols[f"{m}_help_{j + 1}_value"] = helps.value[:, j]
    t = time.perf_counter()
    pq.write_table(pa.table(cols), out / "scores.parquet")
    timings["write"] = time.perf_counter() - t
    timings["total"] = sum(timings.values())
    settings = {"pool": str(pool_path), "targets": str(targets_path), "methods": list(methods), "kind": "sft"}
    write_json_atomic(
        out / "config.json",
        {
            "settings": {**settings, "budget": str(budget), "model": "synthetic features", "seed": seed},
            "gradsift_version": "bench",
            "model": None,
            "data": {
                "pool": {"path": str(pool_path), "n": n, "fingerprint": fingerprint(pool)},
                "targets": {"path": str(targets_path), "n": len(targets), "fingerprint": fingerprint(targets)},
            },
            "budget": budget,
            "n_selected": {m: budget for m in methods},
            "methods": {m: {"synthetic": True} for m in methods},
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        },
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="candidates (default 50,000)")
    p.add_argument("--out", default=str(ROOT.parent / "runs" / "bench" / "report-scale"), help="run directory")
    p.add_argument("--quick", action="store_true", help="5,000 candidates")
    p.add_argument("--results", default=str(ROOT / "results" / "report-scale-cpu.md"), help="results file")
    args = p.parse_args(argv)
    n = 5000 if args.quick else args.n

    import gradsift
    from gradsift.data.load import load_examples
    from gradsift.data.records import Kind
    from gradsift.machine import machine_info
    from gradsift.select_report import write_report

    t = time.perf_counter()
    run = synthetic_run(args.out, n)
    made = time.perf_counter() - t
    config = json.loads((run / "config.json").read_text())
    pool = load_examples(str(run / "pool.jsonl"), kind=Kind.SFT)
    targets = load_examples(str(run / "targets.jsonl"), kind=Kind.TARGET)
    t, c = time.perf_counter(), time.process_time()
    page = write_report(run, config, pool, targets)
    in_memory = (time.perf_counter() - t, time.process_time() - c)
    t, c = time.perf_counter(), time.process_time()
    gradsift.rebuild_report(run)
    rebuilt = (time.perf_counter() - t, time.process_time() - c)
    load = os.getloadavg()[0]
    size = page.stat().st_size
    info = machine_info()
    lines = [
        f"# Selection report at scale ({n:,} candidates, less + prism + bids)",
        "",
        f"Command: `{shlex.join([sys.executable.split('/')[-1], *sys.argv])}`  ",
        f"Date: {datetime.date.today()}; machine: {info.get('processor', '?')}, {info.get('cpus', '?')} CPUs, "
        f"load average {load:.1f} at the end (wall time grows with the load; CPU time is this process's)",
        "",
        "| step | wall s | CPU s |",
        "| --- | --- | --- |",
        f"| synthetic run written (scores from gradsift's scoring functions) | {made:.2f} | |",
        f"| report from records in memory (what `gradsift select` does; the first page of the process, so it "
        f"pays matplotlib's import) | {in_memory[0]:.2f} | {in_memory[1]:.2f} |",
        f"| `gradsift.rebuild_report(run_dir)`: reads the pool again, then the same | {rebuilt[0]:.2f} | "
        f"{rebuilt[1]:.2f} |",
        "",
        f"report.html: {size / 1e6:.2f} MB ({size:,} bytes); limits: 10 s, 5 MB.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        Path(args.results).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
