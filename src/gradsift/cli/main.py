"""`gradsift` command line: subcommands as thin layers over the Python API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import gradsift
from gradsift.cli.args import add_model_args, comma_list, flag_values, parse_options, require
from gradsift.cli.commands import add_bench_parser, add_evaluate_parser, add_report_parser, add_train_parser

SELECT_KEYS = (
    "pool",
    "out",
    "targets",
    "budget",
    "kind",
    "model",
    "dtype",
    "device",
    "pool_format",
    "targets_format",
    "max_length",
    "batch_tokens",
    "seed",
    "loss_order",
    "length_order",
    "pool_limit",
    "on_invalid",
    "targets_limit",
    "cache_dir",
    "write_format",
)
FEATURE_KEYS = (
    "data",
    "out",
    "kind",
    "response",
    "model",
    "dtype",
    "device",
    "adapter",
    "optimizer",
    "lora_rank",
    "lora_alpha",
    "lora_seed",
    "lora_layers",
    "adam_eps",
    "projector",
    "dim",
    "sparse_s",
    "k_in",
    "k_out",
    "projection",
    "projection_seed",
    "reduction",
    "beta",
    "max_length",
    "batch_tokens",
    "max_batch",
    "store_dtype",
    "fmt",
    "limit",
    "on_invalid",
)


def select_config(args: argparse.Namespace) -> gradsift.SelectConfig:
    """The `SelectConfig` the flags and ``--config`` file describe."""
    values = flag_values(args, SELECT_KEYS)
    if args.method is not None:
        values["methods"] = args.method
    if args.overwrite:
        values["overwrite"] = True
    values["options"] = {**values.get("options", {}), **parse_options(args.option or [])}
    require(values, ("pool", "out"))
    return gradsift.SelectConfig(**values)


def feature_config(args: argparse.Namespace) -> gradsift.FeatureConfig:
    """The `FeatureConfig` the flags and ``--config`` file describe."""
    values = flag_values(args, FEATURE_KEYS)
    if args.lora_targets:
        values["lora_targets"] = comma_list(args.lora_targets)
    if args.overwrite:
        values["overwrite"] = True
    require(values, ("data", "out"))
    return gradsift.FeatureConfig(**values)


def _print_summary(result: gradsift.SelectResult) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    table = Table(title=f"gradsift select: {result.n_pool} candidates")
    for col in ("method", "selected", "mean score: selected / pool", "most selected task (share vs pool)"):
        table.add_column(col)
    for m, rows in result.selections.items():
        shares = result.summary[m]
        score = result.scores[m].score
        finite = np.isfinite(score)
        sel_mean = float(np.nanmean(score[rows])) if rows else float("nan")
        pool_mean = float(score[finite].mean()) if finite.any() else float("nan")
        labelled = {t: s for t, s in shares.items() if t != "(none)"}
        if labelled:
            t, s = max(labelled.items(), key=lambda kv: kv[1]["n_selected"])
            task = f"{t}: {s['selected']:.0%} vs {s['pool']:.0%}"
        else:
            task = "(no task labels)"
        table.add_row(m, str(len(rows)), f"{sel_mean:.4g} / {pool_mean:.4g}", task)
    console.print(table)
    console.print(f"outputs in {result.out}: selected.jsonl, scores.parquet, report.html, config.json")


def cmd_select(args: argparse.Namespace) -> int:
    result = gradsift.select(select_config(args))
    _print_summary(result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    pool, targets = gradsift.demo_data(out / "data", n_pool=args.n_pool, n_targets=args.n_targets, seed=args.seed)
    print(f"demo data: {pool} ({args.n_pool} examples, 8 skills, ~15% noisy answers), {targets} (arithmetic)")
    cfg = gradsift.SelectConfig(
        pool=str(pool),
        targets=str(targets),
        out=str(out / "selection"),
        methods=args.method,
        budget=args.budget,
        model=args.model,
        max_length=128,
        batch_tokens=2048,
        seed=args.seed,
        overwrite=True,
        # no warm-up: the base model is the single checkpoint, which keeps the demo to a few minutes
        options={"warmup": "none", "prism_max_new_tokens": 48},
    )
    result = gradsift.select(cfg)
    _print_summary(result)
    print("\ntarget skill 'arithmetic' among the selected examples vs the pool's base rate:")
    for m, shares in result.summary.items():
        s = shares.get("arithmetic", {"selected": 0.0, "pool": 0.0, "n_selected": 0})
        print(f"  {m:>10}: {s['n_selected']:3d}/{result.budget} = {s['selected']:.0%}  (base rate {s['pool']:.0%})")
    print(f"\nreport: {result.report}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    store = gradsift.features(feature_config(args))
    if int(os.environ.get("RANK", "0")) == 0:
        layout = store.layout
        print(
            f"features: {store.path} [{layout.n_rows} x {layout.dim}] {layout.dtype}, "
            f"{len(store.bad_rows())} rows with NaN/inf excluded"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradsift", description="Pick the fine-tuning data worth training on (gradient-influence selection)."
    )
    parser.add_argument("--version", action="version", version=f"gradsift {gradsift.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "select",
        help="score a candidate pool and select a budget of it",
        description="Score every candidate of a pool with one or more methods and keep a budget.",
    )
    p.add_argument("--config", help="YAML file of options (command-line flags override it)")
    p.add_argument(
        "--pool", help="candidate data: JSONL/JSON/CSV/TSV/Parquet (optionally .gz), a saved dataset dir or hf:NAME"
    )
    p.add_argument("--targets", help="target examples (what the model should get better at)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--method", help="method(s), comma-separated: random, length, loss, perplexity")
    p.add_argument(
        "--budget",
        help="count (50) or fraction (5%% or 0.05) to select; default: 5%% for top-k methods and BIDS, the whole "
        "middle band for tif, lossdiff, irm and fusion",
    )
    p.add_argument("--kind", choices=["sft", "pair"], help="sft examples (default) or preference pairs")
    p.add_argument("--pool-format", help="force the pool's format instead of detecting it")
    p.add_argument("--targets-format", help="force the targets' format")
    p.add_argument("--max-length", type=int, help="token limit per sequence (default 256)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per batch (default 4096)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--on-invalid", choices=["raise", "skip"], help="stop at an invalid record (default) or skip it")
    p.add_argument("--pool-limit", type=int, help="use only the first N pool records")
    p.add_argument("--targets-limit", type=int, help="use only the first N targets")
    p.add_argument("--cache-dir", help="where warm-up checkpoints and feature stores are kept (default OUT/cache)")
    p.add_argument("--loss-order", choices=["high", "low"], help="loss baseline keeps high (default) or low loss")
    p.add_argument("--length-order", choices=["long", "short"], help="length baseline keeps long (default) or short")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="further method option (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs made with other settings")
    p.add_argument(
        "--write-format",
        choices=["original", "messages", "prompt-completion"],
        help="selected*.jsonl as read (original, default) or in TRL's conversational formats "
        "(pairs: messages = chosen/rejected chats, prompt-completion = prompt/chosen/rejected)",
    )
    p.add_argument("--quiet", action="store_true", help="progress as periodic log lines instead of bars")
    add_model_args(p)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "features",
        help="compute per-example gradient features into a resumable store",
        description="Per-example LoRA gradients, projected, written to a resumable feature store. "
        "Under torchrun, ranks share the rows of one store.",
    )
    p.add_argument("--config", help="YAML file of options (command-line flags override it)")
    p.add_argument("--data", help="records: JSONL/JSON/CSV/TSV/Parquet (optionally .gz), saved dataset dir or hf:NAME")
    p.add_argument("--kind", choices=["sft", "target", "pair"], help="candidates (default), targets or pairs")
    p.add_argument("--response", choices=["chosen", "rejected"], help="y+ (default) or the rejected response y-")
    p.add_argument("--out", help="store directory")
    p.add_argument("--adapter", help="LoRA adapter directory (a warm-up checkpoint); default a fresh LoRA")
    p.add_argument("--optimizer", help="warm-up checkpoint with Adam moments: LESS's preconditioned features")
    p.add_argument("--lora-rank", type=int, help="rank of a fresh LoRA (default 8)")
    p.add_argument("--lora-alpha", type=int, help="alpha of a fresh LoRA (default 16)")
    p.add_argument("--lora-targets", help="modules of a fresh LoRA, comma-separated (default q_proj,v_proj)")
    p.add_argument("--lora-seed", type=int, help="seed of a fresh LoRA (default 0)")
    p.add_argument(
        "--lora-layers", help="decoder layers of a fresh LoRA: last:K or a list such as 0,5,7 (default all)"
    )
    p.add_argument(
        "--adam-eps",
        choices=["inside", "outside"],
        help="Adam feature m'/sqrt(v'+eps) (default, LESS code) or outside",
    )
    p.add_argument(
        "--projector",
        choices=["auto", "dense", "factorized", "sparse"],
        help="default auto: factorized, sparse with --optimizer",
    )
    p.add_argument("--dim", type=int, help="sparse/dense projection dimension (default 8192)")
    p.add_argument("--sparse-s", type=int, help="sparse projection: non-zeros per column (default 4)")
    p.add_argument("--k-in", type=int, help="factorized: input-side size per layer (default 16)")
    p.add_argument("--k-out", type=int, help="factorized: output-side size per layer (default 16)")
    p.add_argument("--projection", choices=["rademacher", "gaussian"], help="projection entries")
    p.add_argument("--projection-seed", type=int, help="projection seed (default 0)")
    p.add_argument("--reduction", choices=["mean", "sum"], help="per-example loss: token mean (default) or sum")
    p.add_argument("--beta", type=float, help="DPO beta for pairs (default 0.1)")
    p.add_argument("--max-length", type=int, help="token limit per sequence (default 256)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per batch (default 4096)")
    p.add_argument("--max-batch", type=int, help="most examples per batch (default 64)")
    p.add_argument("--store-dtype", choices=["float16", "float32"], help="row dtype on disk (default float16)")
    p.add_argument("--fmt", help="force the data format")
    p.add_argument("--limit", type=int, help="use only the first N records")
    p.add_argument("--on-invalid", choices=["raise", "skip"], help="stop at (default) or skip invalid records")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    p.add_argument("--quiet", action="store_true", help="progress as periodic log lines instead of bars")
    add_model_args(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "demo",
        help="run the built-in demo: a generated multi-skill pool, selection with a real model",
        description="Generate a multi-skill instruction pool and arithmetic targets, then select.",
    )
    p.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    p.add_argument(
        "--method", default="random,loss,embed,less,prism", help="methods (default random,loss,embed,less,prism)"
    )
    p.add_argument("--budget", default="10%", help="budget (default 10%%)")
    p.add_argument("--n-pool", type=int, default=160, help="pool size (default 160)")
    p.add_argument("--n-targets", type=int, default=12, help="number of targets (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="builtin", help="model (default builtin)")
    p.add_argument("--quiet", action="store_true", help="progress as periodic log lines instead of bars")
    p.set_defaults(func=cmd_demo)

    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_bench_parser(sub)
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.debug:
        import warnings

        warnings.filterwarnings("ignore")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    # Bars on a terminal, one log line per half minute elsewhere or with --quiet (gradsift.progress).
    logging.getLogger("gradsift.progress").setLevel(logging.INFO)
    gradsift.set_progress("log" if getattr(args, "quiet", False) else "auto")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError, NotImplementedError, ImportError) as e:
        if args.debug:
            raise
        print(f"gradsift {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradsift {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
