"""Layer depth: what LoRA on the last K decoder layers costs and keeps (gradsift issue 13).

For each K, ``gradsift select`` runs LESS and PRISM on the same pool and targets with ``--option
lora_layers=last:K`` (the warm-up LoRA and the feature LoRA on the last K layers only, so every backward pass
stops at the first of them), in a cache of its own. The all-layer run is the reference. Reported per K:
examples/s of the pool's feature passes (the LESS and PRISM pool stores' seconds from config.json), Spearman
of each method's scores with the all-layer scores, and the overlap (shared rows, Jaccard) of the selections.

Pool and targets: ``bench/sft_selection.py``'s (FLAN-CoT 7 tasks + Alpaca, GSM8K test questions as targets).

Run: ``.venv/bin/python bench/layer_depth.py --shared ../shared/data [--n-pool 1000] [--k 4,8,15]``
(``--quick``: 40 candidates, K in 2, 8, for a smoke run). On a machine without ``../shared`` (a lent GPU),
write the pool and targets first with ``--write-data DIR`` here, then run there with ``--data DIR --device cuda``.
The table is rewritten after every K, so a run cut short still leaves the rows it finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_selection import _write_jsonl, build_pool, gsm8k_targets  # noqa: E402

from gradsift.machine import machine_info  # noqa: E402
from gradsift.model.load import ModelSettings, load_model  # noqa: E402
from gradsift.pipeline import SelectConfig, run_select  # noqa: E402
from gradsift.stats import overlap, spearman  # noqa: E402

METHODS = ("less", "prism")


def run(args: argparse.Namespace, pool: Path, targets: Path, layers: str | None) -> dict[str, Any]:
    """One selection (cached: a finished run directory is read back, not recomputed)."""
    name = "all" if layers is None else layers.replace(":", "")
    out = Path(args.cache) / f"run-{name}"
    options: dict[str, Any] = {"warmup_epochs": args.warmup_epochs, "dim": args.dim}
    if layers is not None:
        options["lora_layers"] = layers
    cfg = SelectConfig(
        pool=str(pool),
        targets=str(targets),
        out=str(out),
        methods=list(METHODS),
        budget=args.budget,
        max_length=args.max_length,
        cache_dir=str(Path(args.cache) / f"cache-{name}"),
        options=options,
        device=args.device,
    )
    if not (out / "config.json").exists():
        run_select(cfg)
    config = json.loads((out / "config.json").read_text())
    table = pq.read_table(out / "scores.parquet").to_pandas()
    pool_seconds = {
        m: sum(
            v
            for k, v in config["methods"][m].get("timings_s", {}).items()
            if k.startswith("features/") and "/pool-" in k
        )
        for m in METHODS
    }
    return {
        "layers": layers or "all",
        "scores": {m: table[f"score_{m}"].to_numpy() for m in METHODS},
        "selected": {m: np.flatnonzero(table[f"selected_{m}"].to_numpy()).tolist() for m in METHODS},
        "pool_seconds": pool_seconds,
        "n": len(table),
        "dtype": config.get("model", {}).get("dtype", "?") if isinstance(config.get("model"), dict) else "?",
    }


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--n-pool", type=int, default=1000)
    p.add_argument("--n-targets", type=int, default=20)
    p.add_argument("--k", default="4,8,15", help="last-K layer counts to compare with all layers")
    p.add_argument("--budget", default="5%")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--dim", type=int, default=8192)
    p.add_argument("--cache", default="bench/cache/layer-depth")
    p.add_argument("--out", default=None, help="results file (default bench/results/layer-depth-<device>.md)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data", default=None, help="a folder with pool.jsonl and targets.jsonl (from --write-data)")
    p.add_argument("--write-data", default=None, help="write pool.jsonl and targets.jsonl to this folder and stop")
    p.add_argument("--quick", action="store_true", help="40 candidates, K in 2 and 8, results under bench/logs")
    args = p.parse_args(argv)
    if args.quick:
        args.n_pool, args.n_targets, args.k, args.dim = 40, 4, "2,8", 512
        args.cache, args.out = args.cache + "-quick", "bench/logs/layer-depth-cpu-quick.md"
    if args.out is None:
        args.out = f"bench/results/layer-depth-{'cuda' if args.device.startswith('cuda') else 'cpu'}.md"
    ks = [int(k) for k in args.k.split(",")]
    if args.data:
        pool, targets = Path(args.data) / "pool.jsonl", Path(args.data) / "targets.jsonl"
        for f in (pool, targets):
            if not f.is_file():
                p.error(f"--data {args.data}: {f.name} is missing (write it with --write-data)")
    else:
        pool, targets = write_data(args, Path(args.write_data or Path(args.cache) / "data"))
        if args.write_data:
            print(f"wrote {pool} and {targets}")
            return
    ref = run(args, pool, targets, None)
    rows = [ref]
    write_table(args, argv, rows)
    for k in ks:
        rows.append(run(args, pool, targets, f"last:{k}"))
        write_table(args, argv, rows)


def write_data(args: argparse.Namespace, data: Path) -> tuple[Path, Path]:
    """The pool (FLAN-CoT + Alpaca) and GSM8K targets from ``--shared``, as JSONL under `data`."""
    shared = Path(args.shared)
    tok = load_model(ModelSettings(model="builtin", device="cpu")).tokenizer
    pool = _write_jsonl(data / "pool.jsonl", build_pool(shared, args.n_pool, args.max_length, tok, 0))
    targets = _write_jsonl(data / "targets.jsonl", gsm8k_targets(shared, args.n_targets))
    return pool, targets


def write_table(args: argparse.Namespace, argv: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """The results file for the rows done so far (the first is the all-layer reference)."""
    ref = rows[0]
    info = machine_info()
    device = "cuda" if str(args.device).startswith("cuda") else "cpu"
    hardware = f"{info['gpu']} (CUDA {info.get('cuda')}), " if device == "cuda" else ""
    n_targets = sum(1 for line in Path(args.data or Path(args.cache) / "data").joinpath("targets.jsonl").open())
    lines = [
        f"# Layer depth: LoRA on the last K decoder layers ({device})",
        "",
        f"Command: `python bench/layer_depth.py {shlex.join(argv)}`",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"Machine: {hardware}{info['processor']}, {info['cpus']} logical cores, torch {info['torch']}.",
        "",
        f"Pool: {ref['n']} candidates (bench/sft_selection.py's FLAN-CoT + Alpaca mix), "
        f"{n_targets} GSM8K targets; "
        f"built-in model (30 decoder layers, dtype {ref['dtype']}); LESS with a {args.warmup_epochs}-epoch warm-up, "
        f"PRISM at the model given; budget {args.budget}; dim {args.dim}. Each K has its own warm-up (its LoRA is "
        "on those layers). ex/s: pool examples over the seconds of that method's pool feature passes.",
        "",
        "| layers | LESS pool ex/s | PRISM pool ex/s | LESS Spearman vs all | PRISM Spearman vs all "
        "| LESS selection shared (Jaccard) | PRISM selection shared (Jaccard) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["layers"]]
        cells += [f"{r['n'] / s:.3f}" if (s := r["pool_seconds"][m]) else "cached" for m in METHODS]
        for m in METHODS:
            rho = spearman(r["scores"][m], ref["scores"][m])
            cells.append("-" if rho is None else f"{rho:.3f}")
        for m in METHODS:
            o = overlap(r["selected"][m], ref["selected"][m])
            cells.append(f"{o['shared']}/{o['n_b']} ({o['jaccard']:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
