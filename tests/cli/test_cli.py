import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gradsift import __version__, demo_data
from gradsift.cli.main import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    for sub in ("select", "demo"):
        with pytest.raises(SystemExit):
            main([sub, "--help"])
        assert "--" in capsys.readouterr().out


def test_select_end_to_end_in_a_subprocess(tmp_path, tiny_model_dir):
    pool, targets = demo_data(tmp_path / "d", n_pool=30, n_targets=3)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "gradsift",
        "select",
        "--model",
        str(tiny_model_dir),
        "--pool",
        str(pool),
        "--targets",
        str(targets),
        "--budget",
        "20%",
        "--method",
        "loss,length",
        "--out",
        str(out),
        "--max-length",
        "96",
        "--device",
        "cpu",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "outputs in" in r.stdout
    assert len((out / "selected.jsonl").read_text().splitlines()) == 6
    assert json.loads((out / "config.json").read_text())["budget"] == 6


def test_bad_input_gives_a_clear_error_not_a_traceback(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    code = main(
        [
            "select",
            "--pool",
            str(bad),
            "--out",
            str(tmp_path / "o"),
            "--method",
            "random",
            "--model",
            str(tiny_model_dir),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.jsonl" in err and "line 2" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "selected.jsonl").exists()


def test_missing_arguments_and_yaml_config(tmp_path, capsys, tiny_model_dir):
    assert main(["select", "--method", "random"]) == 2
    assert "--pool" in capsys.readouterr().err
    pool, _ = demo_data(tmp_path / "d", n_pool=20, n_targets=2)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"pool: {pool}\nout: {tmp_path / 'o'}\nmethods: [random]\nbudget: 5\nmodel: {tiny_model_dir}\n")
    assert main(["select", "--config", str(cfg), "--budget", "4"]) == 0
    assert len((tmp_path / "o" / "selected.jsonl").read_text().splitlines()) == 4


def test_quiet_select_logs_one_line_per_stage_and_report_rebuilds_the_page(tmp_path, tiny_model_dir, capsys):
    pool, _ = demo_data(tmp_path / "d", n_pool=30, n_targets=3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gradsift", "select", "--pool", str(pool), "--out", str(out), "--method", "loss"]
    cmd += ["--model", str(tiny_model_dir), "--device", "cpu", "--max-length", "96", "--budget", "5"]
    r = subprocess.run([*cmd, "--quiet", "--write-format", "messages"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # a log file gets whole lines: no bar redrawn with carriage returns, gradsift's progress as one line
    assert "\r" not in r.stderr
    assert re.search(r"INFO gradsift\.progress: loss: 30/30 ex \(100%\), [0-9.]+ ex/s, elapsed \d+s", r.stderr)
    assert "report.html" in r.stdout and (out / "report.html").exists()
    assert "messages" in json.loads((out / "selected.jsonl").read_text().splitlines()[0])

    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}" and (out / "report.html").exists()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "finished gradsift select run" in capsys.readouterr().err


def test_demo_selects_fine_tunes_each_selection_and_prints_its_effect(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--model", str(tiny_model_dir), "--n-pool", "24", "--n-targets", "4"]
    code = main(args + ["--method", "random,loss,less,prism", "--train-steps", "2", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    base = float(re.search(r"base model: (\d+\.\d+)", text).group(1))
    losses = {m: float(v) for m, v in re.findall(r"^\s+(\S+): .*held-out loss (\d+\.\d+)$", text, flags=re.M)}
    assert set(losses) == {"random", "loss", "less", "prism"}
    # each method trained its own adapter, and training moved the held-out loss away from the base model's
    for m in losses:
        assert (out / "train" / m / "config.json").exists()
    assert any(abs(v - base) > 1e-4 for v in losses.values())
    report = re.search(r"^report: (\S+)$", text, flags=re.M).group(1)
    assert report.endswith("report.html") and Path(report).exists()
