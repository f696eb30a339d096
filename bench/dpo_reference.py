"""LoRA DPO step time with the reference forward at every step vs read from the shared cache, side by side.

Why: with LoRA, TRL's DPO reference is the base model with the adapter off, so every step runs a no-grad
forward of the batch beside the policy's forward and backward. The bench's DPO cells all have the same base
model, so `gradsift.training.dpo.attach_reference` computes each pair's reference once and every cell reads it.
This measures what a step saves, and what the one-off reference pass costs per pair, on the built-in model at
the preference bench's CPU size (batch 4 pairs, max_length 256, the bench's HH-RLHF pairs of <= 700 characters).

Each run loads a fresh model and trains `--steps` steps on the same pairs with the same seed (so both arms see
the same batches); the arms alternate, `--repeats` runs each, so drift in the machine's load hits both alike.
Time per step is the median interval between logged steps from step 2 on. The cache is filled before the timed
runs; the fill is timed as the difference of building the trainer with and without it.

Run: ``.venv/bin/python bench/dpo_reference.py --data ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mdreport import opening, write


def _config(steps: int) -> dict[str, Any]:
    return {
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "max_length": 256,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_steps": 10_000,
        "seed": 0,
    }


def step_times(out: Path) -> list[float]:
    """Intervals between logged steps from step 2 on (the first step is warm-up)."""
    times = [json.loads(line)["time"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [b - a for a, b in zip(times[1:], times[2:], strict=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="HH-RLHF pairs (the preference bench's file)")
    p.add_argument("--pairs", type=int, default=48, help="first pairs of <= --max-chars characters")
    p.add_argument("--max-chars", type=int, default=700)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench/results/dpo-reference-cpu.md")
    args = p.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(f"--data {args.data}: no such file")
    if args.steps < 3:
        raise SystemExit("--steps must be at least 3 (the first step is not timed)")

    from gradsift.benchmark.sets import text_length
    from gradsift.data.load import load_pairs
    from gradsift.model.load import ModelSettings, load_model
    from gradsift.training.dpo import build_dpo_trainer, train_dpo

    pairs = [r for r in load_pairs(args.data) if text_length(r) <= args.max_chars][: args.pairs]
    settings = ModelSettings(device="cpu", dtype="float32")
    tmp = Path(tempfile.mkdtemp(prefix="gradsift-dpo-ref-"))
    cache = tmp / "cache"

    builds = {}
    for name, ref in (("plain", None), ("fill", cache)):
        lm = load_model(settings)
        t0 = time.perf_counter()
        build_dpo_trainer(lm.model, lm.tokenizer, pairs, tmp / f"build-{name}", config=_config(1), reference_cache=ref)
        builds[name] = time.perf_counter() - t0
    fill_per_pair = (builds["fill"] - builds["plain"]) / len(pairs)
    print(f"reference pass: {fill_per_pair:.2f} s a pair ({len(pairs)} pairs)", flush=True)

    runs: dict[str, list[float]] = {"per-step reference": [], "cached reference": []}
    for r in range(args.repeats):
        for name, ref in (("per-step reference", None), ("cached reference", cache)):
            lm = load_model(settings)
            out = tmp / f"{r}-{name.split()[0]}"
            train_dpo(lm.model, lm.tokenizer, pairs, out, config=_config(args.steps), beta=0.1, reference_cache=ref)
            runs[name].append(statistics.median(step_times(out)))
            print(f"[{r}] {name}: {runs[name][-1]:.2f} s/step", flush=True)

    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["per-step reference"] / med["cached reference"]
    rows = [f"| {k} | {med[k]:.2f} | " + ", ".join(f"{x:.2f}" for x in v) + " |" for k, v in runs.items()]
    write(
        args.out,
        [
            *opening("LoRA DPO step time: reference forward at every step vs the shared reference cache"),
            f"- Each run: `train_dpo` of the built-in model (LoRA q_proj, v_proj, rank 8, float32 on CPU), "
            f"batch 4 pairs, max_length 256, {args.steps} steps on the first {len(pairs)} pairs of <= "
            f"{args.max_chars} characters of `{Path(args.data).name}`, seed 0 (same batches in both arms); the "
            f"arms alternate, {args.repeats} runs each. Time per step: median interval between logged steps "
            "from step 2 on.",
            "",
            "| reference | s/step (median) | each run's s/step |",
            "| --- | ---: | --- |",
            *rows,
            "",
            f"Speed-up of a step with the cached reference: **{ratio:.2f}x**. The one-off reference pass that "
            f"fills the cache: {fill_per_pair:.2f} s a pair (trainer build with the fill minus without), paid "
            "once per pair for a whole grid.",
            "",
        ],
    )


if __name__ == "__main__":
    main()
