"""CPU training speed under glibc malloc vs jemalloc (LD_PRELOAD), side by side in one run.

Why: on the 2-core bench machine a training process spent about a third of its CPU time in the kernel. `perf
stat` counted about 97,000 page faults a second: every step allocates the [batch, length, vocab] logits and
their gradients (4 x 256 x 49,152 float32 = 200 MB each), above glibc's largest mmap threshold (32 MiB), so each
is a fresh mmap whose pages the kernel zeroes on first touch and unmaps on free. jemalloc keeps freed pages for
reuse. This measures what that is worth on a real `gradsift train` run (the bench's cell: LoRA SFT of the
built-in model, batch 4 x 256 tokens), alternating the two allocators so that drift in the machine's load hits
both alike.

Each run is a fresh `gradsift train` subprocess; its time per step is the median interval between the steps
logged in its ``train_log.jsonl`` from step 2 on (model loading and the first step excluded), and the sys/user
split is the child's rusage (loading included). Result: a Markdown table (``--out``), with the machine and date.

Run: ``.venv/bin/python bench/cpu_allocator.py --data ../shared/data/alpagasus/data/random/random_9k.json.gz``
(``--steps 12 --repeats 2``; needs ``libjemalloc.so.2``, e.g. Debian's ``libjemalloc2``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mdreport import opening, write

JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")


def run_once(args: argparse.Namespace, preload: str | None, out: Path) -> dict[str, float]:
    """One `gradsift train` run; returns its median seconds per step, wall seconds and the child's user/sys CPU."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    cmd = [
        str(Path(sys.executable).with_name("gradsift")),
        "train",
        "--data", args.data, "--limit", str(args.limit), "--on-invalid", "skip",
        "--out", str(out), "--max-steps", str(args.steps), "--batch-size", "4", "--max-length", "256",
        "--save-steps", "1000", "--no-progress", "--no-resume",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = out / "train_log.jsonl"
    if not log.exists():
        raise SystemExit(f"{log}: no training log; check the gradsift train run there")
    times = [float(json.loads(line)["time"]) for line in log.read_text().splitlines() if '"time"' in line]
    steps = [b - a for a, b in zip(times[1:], times[2:], strict=False)]  # from step 2: the first is warm-up
    if not steps:
        raise SystemExit(f"{log}: fewer than 3 logged steps; raise --steps")
    return {
        "step_s": statistics.median(steps),
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="SFT examples (the bench uses Alpaca)")
    p.add_argument("--limit", type=int, default=80)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--jemalloc", default=next((x for x in JEMALLOC_PATHS if Path(x).exists()), None))
    p.add_argument("--out", default="bench/results/cpu-allocator.md")
    args = p.parse_args()
    if not args.jemalloc or not Path(args.jemalloc).exists():
        raise SystemExit(
            "libjemalloc.so.2 not found: install it (Debian: apt-get install libjemalloc2) or pass --jemalloc"
        )
    if not Path(args.data).exists():
        raise SystemExit(f"--data {args.data}: no such file")
    runs: dict[str, list[dict[str, float]]] = {"glibc": [], "jemalloc": []}
    tmp = Path(tempfile.mkdtemp(prefix="gradsift-alloc-"))
    try:
        for r in range(args.repeats):
            for name, preload in (("glibc", None), ("jemalloc", args.jemalloc)):
                res = run_once(args, preload, tmp / f"{name}-{r}")
                runs[name].append(res)
                print(
                    f"[{r}] {name}: {res['step_s']:.2f} s/step, user {res['user_s']:.0f} s, sys {res['sys_s']:.0f} s"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in runs.items()}
    speedup = med["glibc"]["step_s"] / med["jemalloc"]["step_s"]
    rows = [
        f"| {k} | {m['step_s']:.2f} | {m['user_s']:.0f} | {m['sys_s']:.0f} | "
        f"{100 * m['sys_s'] / (m['user_s'] + m['sys_s']):.0f}% | "
        + ", ".join(f"{x['step_s']:.2f}" for x in runs[k])
        + " |"
        for k, m in med.items()
    ]

    write(
        args.out,
        [
            *opening("CPU training speed: glibc malloc vs jemalloc"),
            "- Each run: `gradsift train` of the built-in model, LoRA (q_proj, v_proj, rank 8), batch 4 x 256 "
            f"tokens, "
            f"{args.steps} steps on the first {args.limit} examples of `{Path(args.data).name}`; the allocators "
            f"alternate, {args.repeats} runs each. Time per step is the median interval between logged steps from "
            "step 2 on (model loading and the first step excluded); user and sys are the whole process's CPU "
            "seconds (loading included).",
            "",
            "| allocator | s/step (median) | user CPU s | sys CPU s | sys share | each run's s/step |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
            *rows,
            "",
            f"jemalloc / glibc speed ratio: **{speedup:.2f}x** (median step time of glibc over jemalloc).",
            "",
        ],
    )


if __name__ == "__main__":
    main()
