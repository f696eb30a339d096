"""`gradsift` command line: subcommands as thin layers over the Python API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradsift
from gradsift.cli.args import add_config_flags, build_config, comma_list
from gradsift.cli.commands import SUMMARIES, add_bench_parser, add_evaluate_parser, add_report_parser, add_train_parser


def select_config(args: argparse.Namespace) -> gradsift.SelectConfig:
    """The `SelectConfig` the flags and ``--config`` file describe."""
    return build_config(args, gradsift.SelectConfig, ("pool", "out"))


def feature_config(args: argparse.Namespace) -> gradsift.FeatureConfig:
    """The `FeatureConfig` the flags and ``--config`` file describe."""
    return build_config(args, gradsift.FeatureConfig, ("data", "out"))


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
    if args.help_options:
        print(gradsift.methods_help(args.methods, options=True))
        return 0
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
        options=gradsift.method_options(comma_list(args.method), {"warmup": "none", "prism_max_new_tokens": 48}),
    )
    result = gradsift.select(cfg)
    _print_summary(result)
    losses = _demo_effect(args, out, result) if args.train_steps > 0 else {}
    print(
        "\nper method: target-skill rows among the selected vs the pool's base rate (a proxy), and the effect: "
        f"loss of {DEMO_HELDOUT} held-out arithmetic answers after {args.train_steps} LoRA steps on the selection"
        + (f" (base model: {losses['base']:.3f}; lower is better)" if "base" in losses else "")
    )
    for m, shares in result.summary.items():
        s = shares.get("arithmetic", {"selected": 0.0, "pool": 0.0, "n_selected": 0})
        n = len(result.selections[m])
        effect = f"   held-out loss {losses[m]:.3f}" if m in losses else ""
        print(f"  {m:>10}: {s['n_selected']:3d}/{n} = {s['selected']:.0%}  (base rate {s['pool']:.0%}){effect}")
    if losses:
        print(
            "  (a smoke-level figure: one seed, a few steps; `gradsift bench` compares methods with paired "
            "intervals. PRISM's raw score favours long answers on this pool, see README.)"
        )
    print(f"\nreport: {result.report}")
    return 0


DEMO_HELDOUT = 48


def _demo_effect(args: argparse.Namespace, out: Path, result: gradsift.SelectResult) -> dict[str, float]:
    """Fine-tune briefly on each method's selection and score held-out arithmetic answers (and the base model)."""
    _, heldout = gradsift.demo_data(out / "heldout", n_pool=8, n_targets=DEMO_HELDOUT, seed=args.seed + 1)
    print(f"\nfine-tuning {args.train_steps} LoRA steps on each selection, scoring {heldout} ...")

    def loss(adapter: str | None) -> float:
        cfg = gradsift.EvaluateConfig(
            task="target-loss", data=str(heldout), model=args.model, adapter=adapter, max_length=128
        )
        return float(gradsift.evaluate(cfg)["metrics"]["mean_loss"])

    losses = {"base": loss(None)}
    for i, m in enumerate(result.selections):
        selected = result.out / ("selected.jsonl" if i == 0 else f"selected-{m}.jsonl")
        run = gradsift.train(
            gradsift.TrainConfig(
                data=str(selected),
                out=str(out / "train" / m),
                model=args.model,
                max_steps=args.train_steps,
                lr=2e-4,
                batch_size=4,
                max_length=128,
                seed=args.seed,
                progress=False,
                overwrite=True,
            )
        )
        losses[m] = loss(str(run.adapter_dir))
    return losses


def cmd_features(args: argparse.Namespace) -> int:
    store = gradsift.features(feature_config(args))
    if int(os.environ.get("RANK", "0")) == 0:
        layout = store.layout
        print(
            f"features: {store.path} [{layout.n_rows} x {layout.dim}] {layout.dtype}, "
            f"{len(store.bad_rows())} rows with NaN/inf excluded"
        )
    return 0


def add_select_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``gradsift select`` to `sub` (the parser's subcommands)."""
    p = sub.add_parser(
        "select",
        help=SUMMARIES["select"],
        description="Score every candidate of a pool with one or more methods and keep a budget.",
        epilog="methods:\n" + gradsift.methods_help() + "\n\n`gradsift select --method less --help-options` lists "
        "a method's options (--option KEY=VALUE).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file of settings, keys as the flags with underscores (flags override it)")
    p.add_argument(
        "--help-options", action="store_true", help="list the options of the --method methods (default all) and exit"
    )
    add_config_flags(p, gradsift.SelectConfig)
    p.add_argument("--quiet", action="store_true", help="progress as periodic log lines instead of bars")
    p.set_defaults(func=cmd_select)
    return p


def add_features_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``gradsift features`` to `sub`."""
    p = sub.add_parser(
        "features",
        help=SUMMARIES["features"],
        description="Per-example LoRA gradients, projected, written to a resumable feature store. "
        "Under torchrun, ranks share the rows of one store.",
    )
    p.add_argument("--config", help="YAML file of settings, keys as the flags with underscores (flags override it)")
    add_config_flags(p, gradsift.FeatureConfig)
    p.add_argument("--quiet", action="store_true", help="progress as periodic log lines instead of bars")
    p.set_defaults(func=cmd_features)
    return p


def add_demo_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``gradsift demo`` to `sub`."""
    p = sub.add_parser(
        "demo",
        help=SUMMARIES["demo"],
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
    p.add_argument(
        "--train-steps",
        type=int,
        default=12,
        help="LoRA steps on each selection before scoring held-out answers (default 12; 0: select only)",
    )
    p.add_argument("--quiet", action="store_true", help="progress as periodic log lines instead of bars")
    p.set_defaults(func=cmd_demo)
    return p


_COMMANDS = {
    "select": add_select_parser,
    "features": add_features_parser,
    "demo": add_demo_parser,
    "train": add_train_parser,
    "evaluate": add_evaluate_parser,
    "bench": add_bench_parser,
    "report": add_report_parser,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``gradsift`` parser. With `command`, only that subcommand gets its flags (the others, all of them
    for ``""``, are listed by name): building one imports its stage's config, and a command should not wait for
    the others'."""
    parser = argparse.ArgumentParser(
        prog="gradsift", description="Pick the fine-tuning data worth training on (gradient-influence selection)."
    )
    parser.add_argument("--version", action="version", version=f"gradsift {gradsift.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add in _COMMANDS.items():
        if command is None or command == name:
            add(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name])
    return parser


def _message(e: BaseException) -> str:
    """One line for an error: an OS error as its path and reason, without the errno prefix."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        return f"{where}: {e.strerror}"
    return str(e)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # only the command given gets its flags ("" when none: every command is listed by name)
    parser = build_parser(next((a for a in argv if a in _COMMANDS), ""))
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
        # read when transformers is first imported; importing it here would delay every command by seconds
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Bars on a terminal, one log line per half minute elsewhere or with --quiet (gradsift.progress).
    logging.getLogger("gradsift.progress").setLevel(logging.INFO)
    gradsift.set_progress("log" if getattr(args, "quiet", False) else "auto")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError, NotImplementedError, ImportError) as e:
        if args.debug:
            raise
        print(f"gradsift {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradsift {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
