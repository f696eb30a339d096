"""Scoring at scale: LESS and BIDS on 1,000,000 x 8,192 float16 candidate features against 1,000 targets
(gradsift issue 13).

The candidate features are a float16 memmap written by this script under ``--dir`` (16 GiB at the default
size; not kept in git, reused by a rerun, resumed where a killed write stopped). Targets are float32 in
memory, in 10 tasks of 100. Each stage runs in this one process, timed, with the process's anonymous
resident memory (heap: what the scorer allocates) and file-backed resident memory (pages of the memmaps,
which the kernel can drop at any time) sampled every 10 ms.

Stages:

1. ``read``: one pass over the feature file in row blocks (``np.asarray`` of each block), the yardstick;
2. ``less``: :func:`gradsift.score.less.less_scores` (task-max), streamed over row blocks;
3. ``influence``: :func:`gradsift.score.influence.influence_matrix` into a float32 memmap A [N, M];
4. ``bids``: :func:`gradsift.selection.bids.bids_select` on A: column statistics, each column's B largest
   entries in one streamed pass per column group, then B picks at O(M) each.

Run: ``.venv/bin/python bench/score_scale.py [--n 1000000] [--k 8192] [--m 1000] [--budget 5%]``
(``--quick``: 20,000 rows, for a smoke run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradsift.machine import machine_info
from gradsift.score.influence import influence_matrix
from gradsift.score.less import less_scores
from gradsift.selection.bids import bids_select
from gradsift.selection.budget import Budget

ROOT = Path(__file__).resolve().parent
BLOCK = 8192  # rows written per step


def resident() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process, from /proc/self/status."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, value, _ = line.split()
                found[name] = int(value) * 1024
    return found.get("RssAnon:", 0), found.get("RssFile:", 0)


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    anon_start: int = 0
    anon_peak: int = 0
    file_peak: int = 0
    notes: list[str] = field(default_factory=list)


@contextmanager
def measured(stage: Stage) -> Iterator[None]:
    stop = threading.Event()
    stage.anon_start, _ = resident()
    peaks = [stage.anon_start, 0]

    def sample() -> None:
        while not stop.wait(0.01):
            anon, file = resident()
            peaks[0], peaks[1] = max(peaks[0], anon), max(peaks[1], file)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        yield
    finally:
        stage.seconds = time.perf_counter() - t0
        stage.cpu_seconds = time.process_time() - cpu0
        stop.set()
        thread.join()
        stage.anon_peak, stage.file_peak = peaks
        print(f"[score_scale] {stage.name}: {stage.seconds:.1f} s", file=sys.stderr, flush=True)


def features(path: Path, n: int, k: int, seed: int) -> np.memmap:
    """The candidate memmap [n, k] float16, written block by block (each block from its own seed) and
    resumed from the last finished block recorded in ``path.done``."""
    done_file = path.with_suffix(".done")
    expected = f"{n} {k} {seed}"
    if path.exists() and done_file.exists() and done_file.read_text().split("\n")[0] == expected:
        finished = int(done_file.read_text().split("\n")[1])
        mm = np.lib.format.open_memmap(path, mode="r+")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, k))
        finished = 0
    for start in range(finished, n, BLOCK):
        stop = min(n, start + BLOCK)
        rng = np.random.default_rng([seed, start])
        # A shared direction per block gives the cosines some spread, as real gradients have.
        base = rng.standard_normal(k, dtype=np.float32)
        mm[start:stop] = (rng.standard_normal((stop - start, k), dtype=np.float32) + 0.3 * base).astype(np.float16)
        if (stop // BLOCK) % 16 == 0 or stop == n:
            mm.flush()
            done_file.write_text(f"{expected}\n{stop}\n")
    return np.lib.format.open_memmap(path, mode="r")


def drop_page_cache() -> str:
    """Ask the kernel to drop clean cached pages (root only) so the read pass starts from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped before the read pass (it starts cold; later stages find what the page cache kept)"
    except OSError as e:
        return f"not dropped ({e.strerror}): the read pass may start warm"


def gib(b: int) -> str:
    return f"{b / 2**30:.2f}"


def report(args: argparse.Namespace, argv: Sequence[str], stages: list[Stage], path: Path, budget: int) -> str:
    info = machine_info()
    read = stages[0].seconds
    lines = [
        "# Scoring at scale (cpu)",
        "",
        f"Command: `python bench/score_scale.py {shlex.join(argv)}`",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "## Machine",
        f"- Platform: {info['platform']}, Python {info['python']}",
        f"- CPU: {info['processor']}, {info['cpus']} logical cores, {info.get('memory', 'unknown')} RAM; "
        f"torch threads: {info['torch_threads']}; numpy BLAS threads: {os.environ.get('OMP_NUM_THREADS', 'default')}",
        "",
        "## Setup",
        f"- Candidates: {args.n:,} x {args.k:,} float16 memmap ({gib(path.stat().st_size)} GiB, `{path}`), "
        "Gaussian rows with a shared direction per block of 8,192 rows; written by this script, not kept.",
        f"- Targets: {args.m:,} x {args.k:,} float32 in memory, 10 tasks of {args.m // 10}.",
        f"- BIDS budget {args.budget} = {budget:,} rows; influence matrix A float32 on disk "
        f"({gib(args.n * args.m * 4)} GiB).",
        "- Memory: anonymous resident memory (heap) is what gradsift allocates; file-backed resident memory is "
        "pages of the memmaps the process has touched, which the kernel reclaims under pressure.",
        "",
        "## Results",
        "| stage | seconds | x read pass | CPU s | heap start GiB | heap peak GiB (growth) | file-backed peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in stages:
        lines.append(
            f"| {s.name} | {s.seconds:.1f} | {s.seconds / read:.2f} | {s.cpu_seconds:.1f} | {gib(s.anon_start)} | "
            f"{gib(s.anon_peak)} (+{gib(s.anon_peak - s.anon_start)}) | {gib(s.file_peak)} |"
        )
    lines.append("")
    for s in stages:
        lines += [f"- {s.name}: {note}" for note in s.notes]
    growth = max(s.anon_peak - s.anon_start for s in stages)
    less = next(s for s in stages if s.name == "less")
    lines += [
        "",
        f"- Largest heap growth of any stage: {gib(growth)} GiB "
        f"(goal < 2 GiB: {'met' if growth < 2**31 else 'NOT met'}).",
        f"- LESS scoring took {less.seconds / read:.2f}x one read pass (goal <= 2x: "
        f"{'met' if less.seconds <= 2 * read else 'NOT met'}).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=8192)
    p.add_argument("--m", type=int, default=1000)
    p.add_argument("--budget", default="5%")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=str(ROOT / "cache" / "score-scale"))
    p.add_argument("--out", default=None, help="results file (default bench/results/score-scale-cpu.md)")
    p.add_argument("--quick", action="store_true", help="20,000 rows, results under bench/logs")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 20_000
    if min(args.n, args.k, args.m) < 10 or args.m % 10:
        p.error("--n, --k, --m must be >= 10 and --m a multiple of 10")
    if args.out is None:
        args.out = str(ROOT / ("logs/score-scale-cpu-quick.md" if args.quick else "results/score-scale-cpu.md"))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    work = Path(args.dir)
    path = work / f"candidates-{args.n}x{args.k}.npy"
    cand = features(path, args.n, args.k, args.seed)
    rng = np.random.default_rng([args.seed, 2**32 - 1])
    targets = rng.standard_normal((args.m, args.k), dtype=np.float32)
    tasks = [f"task{j // (args.m // 10)}" for j in range(args.m)]
    budget = Budget.parse(args.budget).resolve(args.n)
    stages = [Stage("read"), Stage("less"), Stage("influence"), Stage("bids")]

    cache = drop_page_cache()
    with measured(stages[0]):
        rows = 1 << 14
        checksum = 0.0
        for start in range(0, args.n, rows):
            checksum += float(np.asarray(cand[start : start + rows], dtype=np.float32).sum())
    stages[0].notes.append(f"page cache {cache}")
    stages[0].notes.append(f"{rows:,}-row blocks read and cast to float32 as the scorers do (checksum {checksum:.1f})")

    with measured(stages[1]):
        less = less_scores([cand], [targets], tasks)
    stages[1].notes.append(
        f"task-max over 10 tasks; {int(less.bad.sum())} bad rows; best score {less.scores.max():.4f}"
    )

    a_path = work / f"influence-{args.n}x{args.m}.npy"
    a = np.lib.format.open_memmap(a_path, mode="w+", dtype=np.float32, shape=(args.n, args.m))
    with measured(stages[2]):
        influence_matrix([cand], [targets], None, normalize=True, out=a)
        a.flush()
    del a
    a = np.lib.format.open_memmap(a_path, mode="r")
    with measured(stages[3]):
        sel = bids_select(a, budget)
    stages[3].notes.append(f"{len(sel.indices):,} rows selected; first five {sel.indices[:5]}")

    text = report(args, argv, stages, path, budget)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
