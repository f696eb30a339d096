"""`gradsift train`, `gradsift evaluate`, `gradsift bench` and `gradsift report`: thin layers over
`gradsift.train`, `gradsift.evaluate`, `gradsift.bench` and `gradsift.rebuild_report`.

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
from gradsift.cli.args import add_config_flags, build_config, config_values

SUMMARIES = {
    "select": "score a candidate pool and select a budget of it",
    "features": "compute per-example gradient features into a resumable store",
    "demo": "run the built-in demo: a generated multi-skill pool, selection with a real model",
    "train": "fine-tune a LoRA adapter on a data file (SFT or DPO); resumes after a kill",
    "evaluate": "score a model (and adapter) on a task; results JSON with per-example outputs",
    "bench": "compare selectors: methods x budgets x seeds, trained and evaluated, with a report",
    "report": "rebuild a selection's report.html from its run directory",
}
"""One line per subcommand, for ``gradsift --help``."""

_CONFIG_HELP = "YAML file of settings, keys as the flags with underscores (flags override it)"


# ---------------------------------------------------------------------------------------------------------------
# train


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``gradsift train`` to `sub` (the parser's subcommands)."""
    p = sub.add_parser(
        "train",
        help=SUMMARIES["train"],
        description="Fine-tune a LoRA adapter with TRL: SFT on examples (loss on the responses) or DPO on "
        "preference pairs. Writes the adapter, a training log and the settings to --out; rerun the same command "
        "to resume an interrupted run.",
    )
    p.add_argument("--config", help=_CONFIG_HELP)
    add_config_flags(p, gradsift.TrainConfig)
    p.set_defaults(func=cmd_train)
    return p


def train_config(args: argparse.Namespace) -> gradsift.TrainConfig:
    """The `TrainConfig` the flags and ``--config`` file describe."""
    return build_config(args, gradsift.TrainConfig, ("data", "out"))


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
        help=SUMMARIES["evaluate"],
        description="Evaluate a model, optionally with a LoRA adapter, on one task: gsm8k and bbh (exact match "
        "of greedy outputs), mc (multiple-choice log-likelihood), refusal (refusal rate on harmful prompts, "
        "phrase judge), utility (loss on reference answers, optionally exact match), preference (accuracy and "
        "implicit reward margin on held-out pairs; needs --adapter), target-loss (loss of the gold answers).",
    )
    p.add_argument("--config", help=_CONFIG_HELP)
    add_config_flags(p, gradsift.EvaluateConfig)
    p.set_defaults(func=cmd_evaluate)
    return p


def evaluate_config(args: argparse.Namespace) -> gradsift.EvaluateConfig:
    """The `EvaluateConfig` the flags and ``--config`` file describe."""
    return build_config(args, gradsift.EvaluateConfig, ("task", "data", "out"))


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
        help=SUMMARIES["bench"],
        description="Run a selector comparison from a YAML config: select with each method, budget and seed, "
        "fine-tune on each selection (and on the full pool), evaluate on the benchmarks, and write the results "
        "table, the survey's efficiency and feasibility metrics and an HTML/Markdown report. Everything is "
        "cached: rerun the same command to resume.",
    )
    p.add_argument("config", help="bench config (YAML); its keys are the fields of gradsift.BenchConfig")
    p.add_argument("--size", help="a size from the config's sizes: section (e.g. gpu, quick)")
    add_config_flags(p, gradsift.BenchConfig)
    p.set_defaults(func=cmd_bench)
    return p


def bench_config(args: argparse.Namespace) -> gradsift.BenchConfig:
    """The `BenchConfig` of the file, size and flags."""
    flags = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "config"})
    overrides = config_values(flags, gradsift.BenchConfig)
    for key in ("out", "results"):
        if key in overrides:
            overrides[key] = os.path.abspath(overrides[key])
    overrides["command"] = " ".join(["gradsift", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None
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


# ---------------------------------------------------------------------------------------------------------------
# report


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``gradsift report`` to `sub`."""
    p = sub.add_parser(
        "report",
        help="rebuild a selection's report.html from its run directory",
        description="Rebuild the self-contained report.html of a finished gradsift select run (score distributions "
        "with the cut, composition of pool and selection, overlap between methods, top and bottom examples with "
        "the targets they help most, time by stage, settings) from its config.json, scores.parquet and pool.",
    )
    p.add_argument("run_dir", help="a gradsift select output directory")
    p.add_argument("--pool", help="the pool's path, when it moved since the run (must be the same data)")
    p.add_argument("--targets", help="the targets' path, when they moved since the run")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    print(f"report: {gradsift.rebuild_report(args.run_dir, pool=args.pool, targets=args.targets)}")
    return 0


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
