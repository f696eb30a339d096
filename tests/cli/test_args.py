"""The flag helpers every subcommand shares, and the CLI's one dependency: the public API."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

import gradsift
import gradsift.cli
from gradsift.cli.args import add_config_flags, comma_list, config_values, load_yaml, parse_options, require
from gradsift.cli.commands import _number
from gradsift.report.markdown import fixed, fmt, pct


def test_config_file_names_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max-length: 96\nmethods: [a, b]\n")
    assert load_yaml(str(path)) == {"max_length": 96, "methods": ["a", "b"]}
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_yaml(str(path))
    with pytest.raises(FileNotFoundError):
        load_yaml(str(tmp_path / "none.yaml"))


def test_options_are_yaml_values():
    assert parse_options(["n=3", "flag=true", "x-y=[a, b]", "s=a=b"]) == {
        "n": 3,
        "flag": True,
        "x_y": ["a", "b"],
        "s": "a=b",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["novalue"])


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pool: a.jsonl\nseed: 1\nbudget: 10\noptions: {dim: 64}\n")
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_config_flags(p, gradsift.SelectConfig)
    args = p.parse_args(["--config", str(path), "--seed", "2", "--out", "o", "--option", "k_in=4"])
    want = {"pool": "a.jsonl", "seed": 2, "budget": 10, "out": "o", "options": {"dim": 64, "k_in": 4}}
    assert config_values(args, gradsift.SelectConfig) == want
    assert config_values(p.parse_args([]), gradsift.SelectConfig) == {}
    with pytest.raises(ValueError, match="missing --pool-limit and --out"):
        require({"out": ""}, ("pool_limit", "out"))
    require({"out": "o"}, ("out",))
    assert comma_list(" q_proj, v_proj,,") == ["q_proj", "v_proj"]


@pytest.mark.parametrize("x", [None, float("nan"), "n/a", 0, 3, 2.0, 0.12345, -1.5, 1234.5678, 1e7, 0.999999])
def test_bench_numbers_read_as_in_the_report(x):
    assert _number(x, ".1%") == pct(x)
    assert _number(x, ".4f") == fixed(x)
    if not isinstance(x, str):  # the report shows text as it is; the bench table has none
        assert _number(x, ".3g") == fmt(x, 3)
        assert _number(x, ".4g") == fmt(x)


def test_the_cli_imports_only_the_public_api():
    for path in Path(gradsift.cli.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name and name.startswith("gradsift"):
                    assert name == "gradsift" or name.startswith("gradsift.cli"), f"{path.name} imports {name}"


@pytest.mark.parametrize(
    ("command", "cls"),
    [
        ("select", "SelectConfig"),
        ("features", "FeatureConfig"),
        ("train", "TrainConfig"),
        ("evaluate", "EvaluateConfig"),
    ],
)
def test_every_setting_of_a_stage_has_a_flag_with_its_help(command, cls):
    from gradsift.cli.main import build_parser

    sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices[command]._actions}
    for f in dataclasses.fields(getattr(gradsift, cls)):
        assert f.name in actions, f"{cls}.{f.name} has no flag"
        assert actions[f.name].help.startswith(f.metadata["help"].replace("%", "%%")), f.name
    assert actions["max_length"].type is int and "--max-length" in actions["max_length"].option_strings
    assert actions["dtype"].choices == ["auto", "float32", "bfloat16", "float16"]
