"""Featurisation at pool scale: throughput (tokens/s) and peak memory against pool size (gradsift issue 13).

Each pool size runs in its own process (so one run's peak memory cannot hide another's): a generated
multi-skill pool (``gradsift.data.demo.make_pool``) of N examples is featurised with
:func:`gradsift.gradients.extract.extract_features` at the given settings, timed end to end after
model loading, with resident memory sampled every 10 ms (and the CUDA allocator's peak on a GPU).

Two uses:

- ``--sizes 256,4096``: memory independent of the pool (the growth must not scale with N);
- ``--device cuda --n 20000`` (bench/gpu.sh): tokens/s of one pass on a GPU.

Run: ``.venv/bin/python bench/featurize_scale.py --sizes 256,4096 [--out FILE | --append FILE]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features import Phase, machine, measured, mib  # noqa: E402

from gradsift.data.demo import make_pool  # noqa: E402
from gradsift.data.load import load_examples, write_jsonl  # noqa: E402
from gradsift.data.records import Kind  # noqa: E402
from gradsift.data.tokenize import encode_examples  # noqa: E402
from gradsift.gradients.extract import FeatureConfig, extract_features  # noqa: E402
from gradsift.model.load import ModelSettings, load_model  # noqa: E402


def tiny_model(cache: Path) -> str:
    """A randomly initialised 2-layer Llama (hidden 64) with the built-in tokenizer, saved once under `cache`:
    for measuring what scales with the pool rather than with the model, in seconds."""
    path = cache / "tiny-llama"
    if not (path / "config.json").exists():
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = load_model(ModelSettings(model="builtin")).tokenizer
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
        )
        LlamaForCausalLM(config).save_pretrained(path)
        tok.save_pretrained(path)
    return str(path)


def one(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Featurise a generated pool of `n` examples in this process; return the measurements."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pool.jsonl"
        write_jsonl(data, make_pool(n, seed=0))
        extra = {"lora_layers": args.lora_layers} if args.lora_layers else {}
        cfg = FeatureConfig(
            data=str(data),
            out=str(Path(tmp) / "store"),
            model=args.model,
            device=args.device,
            projector=args.projector,
            max_length=args.max_length,
            batch_tokens=args.batch_tokens,
            max_batch=args.max_batch,
            **extra,
        )
        lm = load_model(ModelSettings(model=args.model, device=args.device))  # type: ignore[arg-type]
        phase = Phase("featurize", f"{n} generated examples")
        with measured(phase, device, n):
            extract_features(cfg, loaded=lm, progress=False)
        records = load_examples(str(data), kind=Kind.SFT)
        tokens = sum(len(e) for e in encode_examples(lm.tokenizer, records, cfg.max_length)[0])
        return {
            "n": n,
            "seconds": phase.seconds,
            "cpu_seconds": phase.cpu_seconds,
            "tokens": tokens,
            "rss_start": phase.rss_start,
            "rss_peak": phase.rss_peak,
            "cuda_peak": phase.cuda_peak,
            "batch_tokens": cfg.batch_tokens,
            "max_length": cfg.max_length,
        }


def report(args: argparse.Namespace, rows: list[dict[str, Any]], argv: Sequence[str]) -> str:
    device = torch.device(args.device)
    lines = [
        f"## Featurisation at pool scale ({args.device})",
        "",
        f"Command: `python bench/featurize_scale.py {shlex.join(argv)}`",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        *machine(device),
        f"- Model {args.model}; generated multi-skill pool (gradsift.data.demo); projector {args.projector}; "
        f"max_length {args.max_length}; batch_tokens {args.batch_tokens}, max_batch {args.max_batch}"
        + (f"; LoRA layers {args.lora_layers}" if args.lora_layers else ""),
        "- Each size in its own process; model loading excluded; resident memory sampled every 10 ms; "
        "tokens: unpadded sequence lengths (prompt and response).",
        "",
        "| examples | seconds | examples/s | tokens | tokens/s | RSS start MiB | peak RSS MiB (growth) "
        "| peak CUDA MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        growth = r["rss_peak"] - r["rss_start"]
        lines.append(
            f"| {r['n']:,} | {r['seconds']:.1f} | {r['n'] / r['seconds']:.2f} | {r['tokens']:,} | "
            f"{r['tokens'] / r['seconds']:,.0f} | {mib(r['rss_start'])} | {mib(r['rss_peak'])} (+{mib(growth)}) | "
            f"{mib(r['cuda_peak'])} |"
        )
    if len(rows) > 1:
        g = [r["rss_peak"] - r["rss_start"] for r in rows]
        lines += [
            "",
            f"Peak RSS growth from {rows[0]['n']:,} to {rows[-1]['n']:,} examples "
            f"({rows[-1]['n'] / rows[0]['n']:.0f}x the pool): {mib(g[0])} -> {mib(g[-1])} MiB "
            f"({g[-1] / max(g[0], 1):.2f}x).",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=None, help="one pool size (same as --sizes N)")
    p.add_argument("--sizes", default="256,4096", help="comma-separated pool sizes, each in its own process")
    p.add_argument("--model", default="builtin", help="builtin, a model directory, or 'tiny' (see --help of --tiny)")
    p.add_argument("--projector", default="auto", choices=["auto", "factorized", "dense", "sparse"])
    p.add_argument("--lora-layers", default=None, help="feature LoRA on these layers only (e.g. last:4)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-tokens", type=int, default=FeatureConfig.batch_tokens)
    p.add_argument("--max-batch", type=int, default=FeatureConfig.max_batch, help="examples per batch at most")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="write the results section to this file")
    out.add_argument("--append", default=None, help="append the results section to this file")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [args.n] if args.n else [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s < 1 for s in sizes):
        p.error(f"pool sizes must be positive integers, got {args.sizes!r}")
    args.size_list = sizes
    if args.model == "tiny":
        args.model = tiny_model(Path(__file__).resolve().parent / "cache")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: this torch build sees no CUDA device")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args, args.one)))
        return
    rows = []
    for n in args.size_list:
        child = [
            *("--device", args.device, "--model", args.model, "--projector", args.projector),
            *("--max-length", str(args.max_length), "--batch-tokens", str(args.batch_tokens), "--one", str(n)),
            *("--max-batch", str(args.max_batch)),
            *(("--lora-layers", args.lora_layers) if args.lora_layers else ()),
        ]
        done = subprocess.run([sys.executable, __file__, *child], check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"[featurize_scale] {n:,} examples: {rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    text = report(args, rows, argv)
    if args.out:
        Path(args.out).write_text(text)
    elif args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    print(text)


if __name__ == "__main__":
    main()
