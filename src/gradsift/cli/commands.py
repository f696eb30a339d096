"""`gradsift train`, `gradsift evaluate` and `gradsift bench`: thin layers over `gradsift.train`,
`gradsift.evaluate` and `gradsift.bench`.

Each ``add_*_parser(sub)`` adds one subcommand to the parser's subcommands and sets its ``func``; flags left
out fall back to the ``--config`` YAML file, then to the API's defaults.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

import gradsift
from gradsift.cli.args import add_model_args, comma_list, flag_values, parse_options, require

TRAIN_KEYS = (
    "data",
    "out",
    "kind",
    "model",
    "dtype",
    "device",
    "fmt",
    "limit",
    "on_invalid",
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "grad_accum",
    "max_length",
    "warmup",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "beta",
    "seed",
    "save_steps",
    "logging_steps",
)
EVALUATE_KEYS = (
    "task",
    "data",
    "out",
    "model",
    "adapter",
    "dtype",
    "device",
    "fmt",
    "split",
    "task_label",
    "prompt_field",
    "limit",
    "on_invalid",
    "max_new_tokens",
    "gen_batch_size",
    "fewshot",
    "fewshot_n",
    "template",
    "max_length",
    "batch_size",
    "mc_format",
    "normalisation",
    "beta",
    "refusal_window",
)


# ---------------------------------------------------------------------------------------------------------------
# train


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``gradsift train`` to `sub` (the parser's subcommands)."""
    p = sub.add_parser(
        "train",
        help="fine-tune a LoRA adapter on a data file (SFT or DPO); resumes after a kill",
        description="Fine-tune a LoRA adapter with TRL: SFT on examples (loss on the responses) or DPO on "
        "preference pairs. Writes the adapter, a training log and the settings to --out; rerun the same command "
        "to resume an interrupted run.",
    )
    p.add_argument("--config", help="YAML file of options (command-line flags override it)")
    p.add_argument("--data", help="training data: JSONL/JSON/CSV/TSV/Parquet (optionally .gz), dataset dir or hf:NAME")
    p.add_argument("--kind", choices=["sft", "pair"], help="sft examples (default) or preference pairs (DPO)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, help="examples or pairs per step and device (default 4)")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
    p.add_argument("--max-length", type=int, help="token limit per sequence (default 256)")
    p.add_argument("--warmup", type=float, help="lr warm-up: fraction of steps (<1) or steps (default 0)")
    p.add_argument("--lora-rank", type=int, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha (default 16)")
    p.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0)")
    p.add_argument("--lora-targets", help="modules to adapt, comma-separated (default q_proj,v_proj; or all-linear)")
    p.add_argument("--beta", type=float, help="DPO temperature (default 0.1)")
    p.add_argument("--seed", type=int, help="trainer seed (default 0)")
    p.add_argument("--save-steps", type=int, help="checkpoint every N steps for resuming (default 25)")
    p.add_argument("--logging-steps", type=int, help="log every N steps (default 1)")
    p.add_argument("--fmt", help="force the data format")
    p.add_argument("--limit", type=int, help="train on the first N records only")
    p.add_argument("--on-invalid", choices=["raise", "skip"], help="stop at (default) or skip invalid records")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="further SFTConfig/DPOConfig field")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming an unfinished run")
    p.add_argument("--overwrite", action="store_true", help="replace a run with other settings, or retrain")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=cmd_train)
    return p


def train_config(args: argparse.Namespace) -> gradsift.TrainConfig:
    """The `TrainConfig` the flags and ``--config`` file describe."""
    values = flag_values(args, TRAIN_KEYS)
    if args.lora_targets:
        values["lora_targets"] = comma_list(args.lora_targets)
    if args.no_resume:
        values["resume"] = False
    if args.overwrite:
        values["overwrite"] = True
    if args.no_progress:
        values["progress"] = False
    values["options"] = {**values.get("options", {}), **parse_options(args.option or [])}
    require(values, ("data", "out"))
    return gradsift.TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    result = gradsift.train(cfg)
    if result.reused:
        print(f"{cfg.out} already holds this finished run ({result.global_step} steps); nothing trained")
    else:
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "-"
        resumed = f", resumed from {result.resumed_from}" if result.resumed_from else ""
        print(f"trained {result.global_step} steps on {result.counts.n_used} records, mean loss {loss}{resumed}")
    c = result.counts
    if c.n_truncated or c.n_dropped:
        print(f"{c.n_truncated} records truncated to max_length, {c.n_dropped} dropped (ids in config.json)")
    print(f"adapter: {result.adapter_dir}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# evaluate


def add_evaluate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``gradsift evaluate`` to `sub`."""
    p = sub.add_parser(
        "evaluate",
        help="score a model (and adapter) on a task; results JSON with per-example outputs",
        description="Evaluate a model, optionally with a LoRA adapter, on one task: gsm8k and bbh (exact match "
        "of greedy outputs), mc (multiple-choice log-likelihood), refusal (refusal rate on harmful prompts, "
        "phrase judge), utility (loss on reference answers, optionally exact match), preference (accuracy and "
        "implicit reward margin on held-out pairs; needs --adapter), target-loss (loss of the gold answers).",
    )
    tasks = ["gsm8k", "bbh", "mc", "multiple_choice", "refusal", "utility", "preference", "target-loss", "target_loss"]
    p.add_argument("--config", help="YAML file of options (command-line flags override it)")
    p.add_argument("--task", choices=tasks, help="task kind")
    p.add_argument("--data", help="the task's records (file, dataset dir or hf:NAME; refusal: also a .txt of prompts)")
    p.add_argument("--out", help="results JSON file")
    p.add_argument("--adapter", help="LoRA adapter directory (e.g. a gradsift train run's adapter/)")
    p.add_argument("--limit", type=int, help="evaluate the first N records only")
    p.add_argument("--max-new-tokens", type=int, help="generation budget per output (default 256)")
    p.add_argument("--gen-batch-size", type=int, help="prompts decoded together (default 8)")
    p.add_argument("--fewshot", help="few-shot context: a .txt prompt prefix (BBH cot-prompts) or a data file")
    p.add_argument("--fewshot-n", type=int, help="demonstrations taken from a few-shot data file (default 3)")
    p.add_argument("--template", help="question template with {question}")
    p.add_argument("--max-length", type=int, help="token limit per scored sequence (default 1024)")
    p.add_argument("--batch-size", type=int, help="sequences per forward pass in likelihood tasks (default 8)")
    p.add_argument("--mc-format", choices=["text", "letter"], help="mc: score option texts (default) or letters")
    p.add_argument("--normalisation", choices=["token", "char", "sum"], help="mc log-likelihood normalisation")
    p.add_argument("--beta", type=float, help="preference: DPO temperature (default 0.1)")
    p.add_argument("--utility-generate", action="store_true", help="utility: also generate and report exact match")
    p.add_argument("--refusal-window", type=int, help="refusal: leading characters the judge reads (default 200)")
    p.add_argument("--fmt", help="force the data format")
    p.add_argument("--split", help="part of a source with named parts")
    p.add_argument("--task-label", help="task label for every record (per-task metrics)")
    p.add_argument("--prompt-field", help="refusal: the prompt column")
    p.add_argument("--on-invalid", choices=["raise", "skip"], help="stop at (default) or skip invalid records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=cmd_evaluate)
    return p


def evaluate_config(args: argparse.Namespace) -> gradsift.EvaluateConfig:
    """The `EvaluateConfig` the flags and ``--config`` file describe."""
    values = flag_values(args, EVALUATE_KEYS)
    if args.utility_generate:
        values["utility_generate"] = True
    if args.no_progress:
        values["progress"] = False
    require(values, ("task", "data", "out"))
    return gradsift.EvaluateConfig(**values)


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = evaluate_config(args)
    result = gradsift.evaluate(cfg)
    metrics = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result["metrics"].items()
        if not isinstance(v, dict)
    )
    print(f"{result['task']} on {result['n']} records: {metrics}")
    print(f"results with per-example outputs: {cfg.out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# bench


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``gradsift bench`` to `sub`."""
    p = sub.add_parser(
        "bench",
        help="compare selectors: methods x budgets x seeds, trained and evaluated, with a report",
        description="Run a selector comparison from a YAML config: select with each method, budget and seed, "
        "fine-tune on each selection (and on the full pool), evaluate on the benchmarks, and write the results "
        "table, the survey's efficiency and feasibility metrics and an HTML/Markdown report. Everything is "
        "cached: rerun the same command to resume.",
    )
    p.add_argument("config", help="bench config (YAML)")
    p.add_argument("--size", help="a size from the config's sizes: section (e.g. gpu, quick)")
    p.add_argument("--out", help="working directory (default from the config)")
    p.add_argument("--results", help="directory for the tables and report (default from the config)")
    p.add_argument("--methods", help="run only these methods, comma-separated")
    p.add_argument("--budgets", help="run only these budgets, comma-separated (e.g. 5%%,10%% or band)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--workers",
        type=int,
        help="processes that run selections and cells side by side, each with an equal share of the CPU threads "
        "(default from the config, else 1)",
    )
    p.add_argument("--progress", action="store_true", help="progress bars of every stage")
    p.add_argument("--overwrite", action="store_true", help="replace a run made with other settings")
    p.set_defaults(func=cmd_bench)
    return p


def bench_config(args: argparse.Namespace) -> gradsift.BenchConfig:
    """The `BenchConfig` of the file, size and flags."""
    overrides: dict[str, Any] = {}
    for key in ("out", "results"):
        v = getattr(args, key)
        if v is not None:
            overrides[key] = os.path.abspath(v)
    if args.methods:
        overrides["methods"] = comma_list(args.methods)
    if args.budgets:
        overrides["budgets"] = comma_list(args.budgets)
    if args.device:
        overrides["device"] = args.device
    if args.workers is not None:
        overrides["workers"] = args.workers
    overrides["command"] = " ".join(["gradsift", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None
    if args.progress:
        overrides["progress"] = True
    if args.overwrite:
        overrides["overwrite"] = True
    return gradsift.BenchConfig.from_yaml(args.config, size=args.size, overrides=overrides)


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    cfg = bench_config(args)
    if not args.progress:
        # one line per cell instead of the data-processing and weight-loading bars of every stage
        from datasets.utils.logging import disable_progress_bar
        from transformers.utils import logging as hf_logging

        disable_progress_bar()
        hf_logging.disable_progress_bar()
    result = gradsift.bench(cfg)
    console = Console()
    table = Table(title=f"gradsift bench {cfg.name}: efficiency per budget (report.html has the rest)")
    for h in ("budget", "method", "SDF", "PIR", "efficiency", "rank"):
        table.add_column(h, justify="left" if h in ("budget", "method") else "right")
    for r in result.efficiency:
        table.add_row(
            str(r["budget"]),
            str(r["method"]),
            _number(r["sdf"], ".1%"),
            _number(r["pir"], ".4f"),
            _number(r.get("efficiency"), ".3g"),
            _number(r.get("efficiency_rank"), ".4g"),
        )
    console.print(table)
    for name, b in result.comparisons.items():
        paired = Table(title=f"{name}: {b['metric']} on {b['n_eval']} examples, mean [95% CI] and differences")
        for h in ("budget", "method", "mean", "vs random", "vs full", "select CPU s"):
            paired.add_column(h, justify="left" if h in ("budget", "method") else "right")
        for method, by_budget in b["methods"].items():
            for budget, e in by_budget.items():
                paired.add_row(
                    budget,
                    method,
                    f"{e['mean']:.4g} [{e['ci95_low']:.4g}, {e['ci95_high']:.4g}]",
                    _versus(e.get("vs_random")),
                    _versus(e.get("vs_full")),
                    _number(e.get("select_cpu_s"), ".4g"),
                )
        console.print(paired)
    for m, why in result.unavailable.items():
        console.print(f"method {m} not run: {why}")
    console.print(f"results: {result.results}/results.csv, report.html, report.md")
    return 0


def _versus(vs: dict[str, Any] | None) -> str:
    """A paired difference with its interval and verdict, as the report shows it."""
    if not vs:
        return "-"
    word = {"better": " better", "worse": " worse"}.get(vs["verdict"], "")
    return f"{vs['diff']:+.3g} [{vs['ci95_low']:+.3g}, {vs['ci95_high']:+.3g}]{word}"


def _number(x: Any, spec: str) -> str:
    """`x` in format `spec` as the bench report shows it: ``-`` when missing or NaN, whole numbers as integers
    in the ``g`` formats."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v):
        return "-"
    if spec.endswith("g") and v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    return format(v, spec)
