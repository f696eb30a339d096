"""What a new user meets with bad settings and busy or foreign output directories: every case exits 2 with one
line naming the file, line, key or holder, before any work, and no user's output is lost or mixed."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradsift import demo_data
from gradsift.cli.main import _message, add_select_parser, main, select_config
from gradsift.data.load import write_jsonl
from gradsift.score.base import Method

NO_MODEL = ["--model", "/nonexistent/model-dir"]
HOLDER = """
import sys, time
from gradsift.rundir import RunLock
RunLock(sys.argv[1], "x").acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def pool(tmp_path) -> Path:
    return demo_data(tmp_path / "d", n_pool=20, n_targets=3)[0]


@pytest.fixture
def hold(tmp_path):
    """Start a process that holds the given lock file until the test ends; yields a starter."""
    procs = []

    def start(path: Path) -> int:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        procs.append(p)
        return p.pid

    yield start
    for p in procs:
        p.kill()
        p.wait()


def select(pool: Path, out: Path, *extra: str) -> list[str]:
    method = [] if "--method" in extra else ["--method", "random"]
    return ["select", "--pool", str(pool), "--out", str(out), *method, *extra]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_select_help_lists_every_method_and_help_options_lists_a_methods_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["select", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    listed = text.split("methods:", 1)[1]
    for m in Method:
        assert f"\n  {m.value} " in listed, m
    assert main(["select", "--method", "less", "--help-options"]) == 0
    options = capsys.readouterr().out
    assert (
        "warmup = less | none  (default less)" in options and "adam_eps" in options and "less_aggregation" in options
    )


def test_a_repeated_list_flag_adds_up_instead_of_the_last_one_winning(tmp_path, pool):
    parser = argparse.ArgumentParser()
    add_select_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(select(pool, tmp_path / "o", "--method", "random", "--method", "length,ifd"))
    assert select_config(args).methods == ["random", "length", "ifd"]


def test_an_unknown_option_key_fails_at_once_naming_the_closest_key(tmp_path, pool, capsys):
    out = tmp_path / "out"
    t = time.perf_counter()
    # the model named does not exist: the option must fail before it is looked for
    code = main([*select(pool, out, "--option", "warmpu=none", "--method", "less", "--targets", str(pool)), *NO_MODEL])
    assert code == 2 and time.perf_counter() - t < 5
    assert "unknown option 'warmpu' for less (did you mean 'warmup'?)" in error_line(capsys)
    assert not out.exists()


def test_a_bad_option_value_fails_before_any_work(tmp_path, pool, capsys):
    out = tmp_path / "out"
    assert main([*select(pool, out, "--option", "dim=-3", "--method", "less", "--targets", str(pool)), *NO_MODEL]) == 2
    assert "option dim must be a positive integer, got -3" in error_line(capsys)
    assert not out.exists()  # no warm-up, no cache


def test_yaml_key_typos_and_syntax_errors_are_one_line_naming_file_and_key_or_line(tmp_path, pool, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"pool: {pool}\nout: {tmp_path / 'o'}\nbudgte: 5\n")
    assert main(["select", "--config", str(typo)]) == 2
    assert error_line(capsys) == f"gradsift select: error: {typo}: unknown key 'budgte' (did you mean 'budget'?)"
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"pool: {pool}\nout: [o\nbudget: 5\n")
    assert main(["select", "--config", str(broken)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"gradsift select: error: {broken}, line 3: not valid YAML")
    assert not (tmp_path / "o").exists()


def test_overwrite_with_fewer_methods_removes_the_earlier_selections(tmp_path, pool, tiny_model_dir):
    out = tmp_path / "out"
    assert main([*select(pool, out), "--method", "random,length", "--model", str(tiny_model_dir)]) == 0
    assert (out / "selected-length.jsonl").exists()
    assert main([*select(pool, out, "--overwrite"), "--model", str(tiny_model_dir)]) == 0
    assert not (out / "selected-length.jsonl").exists()
    config = json.loads((out / "config.json").read_text())
    assert set(config["n_selected"]) == {"random"}
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "report.html",
        "scores.parquet",
        "selected.jsonl",
    ]


def test_a_corrupt_config_json_keeps_the_guard_up(tmp_path, pool, capsys):
    out = tmp_path / "out"
    assert main(select(pool, out)) == 0
    (out / "config.json").write_text("{not json")
    capsys.readouterr()
    assert main(select(pool, out, "--seed", "3")) == 2
    assert f"{out / 'config.json'} cannot be read" in error_line(capsys)
    assert (out / "config.json").read_text() == "{not json"
    assert main(select(pool, out, "--seed", "3", "--overwrite")) == 0
    assert json.loads((out / "config.json").read_text())["settings"]["seed"] == 3


def test_a_users_own_files_are_never_replaced(tmp_path, pool, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "selected.jsonl").write_text("my own selection\n")
    for extra in ((), ("--overwrite",)):
        assert main(select(pool, out, *extra)) == 2
        assert "holds selected.jsonl, which gradsift did not write" in error_line(capsys)
    assert (out / "selected.jsonl").read_text() == "my own selection\n"
    (out / "selected.jsonl").rename(out / "mine.jsonl")
    assert main(select(pool, out)) == 2
    assert "holds files gradsift did not write (mine.jsonl)" in error_line(capsys)
    assert main(select(pool, out, "--overwrite")) == 0
    assert (out / "mine.jsonl").read_text() == "my own selection\n"


def test_a_second_select_into_a_busy_directory_exits_2_at_once_naming_the_holder(tmp_path, pool, hold, capsys):
    out = tmp_path / "out"
    out.mkdir()
    pid = hold(out / ".gradsift.lock")
    t = time.perf_counter()
    assert main(select(pool, out)) == 2
    assert time.perf_counter() - t < 5
    assert f"{out} is in use by gradsift process {pid}" in error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == [".gradsift.lock"]


def test_a_second_features_run_on_a_busy_store_exits_2_before_loading_anything(tmp_path, pool, hold, capsys):
    store = tmp_path / "stores" / "pool"
    store.parent.mkdir()
    pid = hold(store.parent / ".pool.lock")
    t = time.perf_counter()
    code = main(["features", "--data", str(pool), "--out", str(store), "--model", str(tmp_path / "no-such-model")])
    assert code == 2 and time.perf_counter() - t < 5  # refused before the (missing) model is looked at
    assert f"feature store {store} is in use by gradsift process {pid}" in error_line(capsys)
    assert not store.exists()


def test_a_budget_larger_than_the_pool_is_said_and_recorded(tmp_path, pool, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(select(pool, out, "--budget", "50")) == 0
    assert "budget 50 is larger than the pool of 20 records: selecting all 20" in caplog.text
    config = json.loads((out / "config.json").read_text())
    assert (config["budget"], config["budget_given"], config["n_selected"]["random"]) == (20, "50", 20)


def test_pairs_read_as_sft_examples_are_named_in_a_warning(tmp_path, caplog):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)])
    with caplog.at_level(logging.WARNING):
        assert main(select(pairs, tmp_path / "out")) == 0
    assert "6 of 6 records are preference pairs; read as SFT examples, their chosen responses are used" in caplog.text


def test_on_invalid_skip_skips_malformed_lines_and_counts_them(tmp_path, capsys, caplog):
    bad = tmp_path / "bad.jsonl"
    good = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(5)]
    bad.write_text("\n".join([good[0], "{not json", good[1], "[1, 2]", *good[2:]]) + "\n")
    assert main(select(bad, tmp_path / "strict")) == 2
    assert "bad.jsonl, line 2: invalid JSON" in error_line(capsys)
    with caplog.at_level(logging.WARNING):
        assert main(select(bad, tmp_path / "out", "--on-invalid", "skip", "--budget", "5")) == 0
    assert (
        "skipped 2 malformed records or lines" in caplog.text and "line 2" in caplog.text and "line 4" in caplog.text
    )
    assert len((tmp_path / "out" / "selected.jsonl").read_text().splitlines()) == 5


def test_cuda_asked_for_without_cuda_is_one_line(tmp_path, pool, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(select(pool, tmp_path / "out", "--device", "cuda")) == 2
    line = error_line(capsys)
    assert line.startswith("gradsift select: error: device cuda asked for, but") and "use --device cpu" in line
    assert not (tmp_path / "out").exists()


def test_os_errors_are_one_line_naming_the_path_without_errno(tmp_path, pool, capsys):
    assert main(select(pool, pool)) == 2
    assert error_line(capsys) == f"gradsift select: error: {pool} exists and is not a directory; choose another --out"
    assert _message(PermissionError(13, "Permission denied", "/data/x")) == "/data/x: Permission denied"
    assert (
        _message(OSError(18, "Invalid cross-device link", "/a", None, "/b")) == "/a -> /b: Invalid cross-device link"
    )
    assert "Errno" not in _message(FileExistsError(17, "File exists", "/o"))
