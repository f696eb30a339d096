"""The gradient engine's peak memory against batch size on the built-in model (gradsift issue 13).

Each size runs in its own process: the built-in model with LoRA (q, v; r = 8), one batch of full-length rows
(every token in the loss: the worst case for the output head), one forward and backward through
:class:`~gradsift.gradients.grads.LoraGradients` with the factorized projector. Reports the growth of resident
memory over the process's state after loading, and the seconds of that one batch.

Run: ``.venv/bin/python bench/engine_peak.py [--tokens 1024,1536,2048,4096] [--length 256]``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import torch

from gradsift.gradients.extract import FeatureConfig
from gradsift.gradients.grads import LoraGradients
from gradsift.gradients.projection import FactorizedProjector
from gradsift.machine import machine_info
from gradsift.model.load import ModelSettings, load_model
from gradsift.model.lora import LoraSettings, attach_lora
from gradsift.model.task import SFTTask


def one(tokens: int, length: int) -> dict[str, float]:
    torch.set_num_threads(1)
    lm = load_model(ModelSettings(model="builtin", device="cpu"))
    model = attach_lora(lm.model, LoraSettings(), seed=0, init="gaussian")
    model.eval()
    grads = LoraGradients(model)
    proj = FactorizedProjector([layer.shape for layer in grads.layers])
    rows = max(1, tokens // length)
    ids = torch.randint(5, len(lm.tokenizer) - 1, (rows, length), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    proc = psutil.Process()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start = proc.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    grads.compute(batch, SFTTask(), sink=proj)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    return {"tokens": rows * length, "rows": rows, "growth": peak[0] - start, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="1024,1536,2048,4096", help="padded tokens per batch, comma-separated")
    p.add_argument("--length", type=int, default=256, help="tokens per row")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "engine-peak-cpu.md"))
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one, args.length)))
        return
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        child = [sys.executable, __file__, "--one", str(tokens), "--length", str(args.length)]
        done = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"[engine_peak] {tokens} tokens: +{rows[-1]['growth'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    info = machine_info()
    lines = [
        "# Gradient engine: peak memory against batch size (cpu)",
        "",
        f"Command: `python bench/engine_peak.py {shlex.join(argv)}`",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"Machine: {info['processor']}, {info['cpus']} logical cores, {info.get('memory', '?')} RAM, "
        f"torch {info['torch']}, one torch thread; other jobs were running on the machine.",
        "",
        f"Built-in model (SmolLM2-135M-Instruct, float32), LoRA q,v r=8, factorized projector; one batch of "
        f"{args.length}-token rows with every token in the loss (the worst case). gradsift's default "
        f"`batch_tokens` is {FeatureConfig.batch_tokens}.",
        "",
        "| padded tokens | rows | peak RSS growth GiB | seconds | ms per token |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tokens']:,} | {r['rows']} | {r['growth'] / 2**30:.2f} | {r['seconds']:.1f} | "
            f"{1000 * r['seconds'] / r['tokens']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
