"""`gradsift train`, `evaluate` and `bench` subcommands: flags and config files become the API's settings,
the commands run end to end on a tiny model, and missing or bad input gives a clear error."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml

from gradsift.cli.commands import (
    add_bench_parser,
    add_evaluate_parser,
    add_train_parser,
    bench_config,
    evaluate_config,
    train_config,
)
from gradsift.data.load import write_jsonl

torch.set_num_threads(1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradsift")
    sub = p.add_subparsers(dest="command")
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_bench_parser(sub)
    return p


def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"question": f"What is {i} plus 2?", "answer": f"#### {i + 2}"} for i in range(6)])
    return path


def test_help_of_each_command(capsys):
    for name in ("train", "evaluate", "bench"):
        with pytest.raises(SystemExit) as e:
            parser().parse_args([name, "--help"])
        assert e.value.code == 0 and "--" in capsys.readouterr().out


def test_train_flags_override_the_config_file(tmp_path):
    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": "a.jsonl", "out": "o", "lr": 0.5, "epochs": 3, "options": {"a": 1}}))
    args = parser().parse_args(
        [
            "train",
            "--config",
            str(cfg_file),
            "--lr",
            "0.01",
            "--lora-targets",
            "q_proj,o_proj",
            "--option",
            "b=2",
            "--no-resume",
            "--kind",
            "pair",
        ]
    )
    cfg = train_config(args)
    assert (cfg.lr, cfg.epochs, cfg.kind, cfg.resume) == (0.01, 3.0, "pair", False)
    assert cfg.lora_targets == ["q_proj", "o_proj"] and cfg.options == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="missing --data and --out"):
        train_config(parser().parse_args(["train"]))


def test_train_then_evaluate_end_to_end(tmp_path, tiny_model_dir, capsys):
    data = qa_file(tmp_path)
    run = tmp_path / "run"
    common = ["--model", str(tiny_model_dir), "--device", "cpu"]
    args = parser().parse_args(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--max-length",
            "64",
            "--no-progress",
            *common,
        ]
    )
    assert args.func(args) == 0
    assert "trained 2 steps on 6 records" in capsys.readouterr().out
    assert args.func(args) == 0  # the same command again reuses the finished run
    assert "nothing trained" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    args = parser().parse_args(
        [
            "evaluate",
            "--task",
            "target-loss",
            "--data",
            str(data),
            "--adapter",
            str(run / "adapter"),
            "--out",
            str(out),
            "--limit",
            "4",
            "--max-length",
            "64",
            *common,
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (
        result["n"] == 4
        and len(result["examples"]) == 4
        and f"mean_loss={result['metrics']['mean_loss']:.4g}" in printed
    )


def test_evaluate_needs_task_data_and_out(tmp_path):
    with pytest.raises(ValueError, match="missing --task and --data and --out"):
        evaluate_config(parser().parse_args(["evaluate"]))
    with pytest.raises(SystemExit):
        parser().parse_args(["evaluate", "--task", "essay"])
    cfg = evaluate_config(
        parser().parse_args(["evaluate", "--task", "mc", "--data", "d", "--out", "o", "--utility-generate"])
    )
    assert cfg.task == "multiple_choice" and cfg.utility_generate


def test_bench_flags_reach_the_config(tmp_path):
    raw = {
        "out": "runs/x",
        "methods": ["random", "length"],
        "budgets": [4],
        "data": {"pool": {"sources": [{"path": "p.jsonl"}]}},
        "benchmarks": [{"name": "tl", "task": "target-loss", "data": "pool"}],
        "sizes": {"gpu": {"budgets": [40], "device": "cuda"}},
    }
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(raw))
    args = parser().parse_args(
        [
            "bench",
            str(path),
            "--size",
            "gpu",
            "--methods",
            "random",
            "--out",
            str(tmp_path / "w"),
            "--device",
            "cpu",
            "--workers",
            "2",
            "--budgets",
            "5%,10",
            "--overwrite",
            "--baselines",
            "full",
        ]
    )
    cfg = bench_config(args)
    assert cfg.budgets == ["5%", "10"] and cfg.methods == ["random"] and cfg.device == "cpu" and cfg.overwrite
    assert cfg.baselines == ["full"]
    assert cfg.workers == 2 and cfg.command is None  # pytest's own command line is not a bench command
    assert cfg.out == str(tmp_path / "w") and cfg.results is None
    with pytest.raises(ValueError, match="unknown method"):
        bench_config(parser().parse_args(["bench", str(path), "--methods", "nope"]))
    with pytest.raises(ValueError, match="full-epoch"):
        bench_config(parser().parse_args(["bench", str(path), "--baselines", "full-epochs"]))
    with pytest.raises(FileNotFoundError):
        bench_config(parser().parse_args(["bench", str(tmp_path / "none.yaml")]))
