"""``report.html`` from a real ``select`` run, rebuilt from the run's files (``gradsift.rebuild_report``), with
clear errors for unfinished runs and moved or different pools; a failing page never loses a selection."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest

import gradsift
import gradsift.select_report
from gradsift.data.demo import write_demo_data
from gradsift.pipeline import SelectConfig, run_select


@pytest.fixture
def data(tmp_path):
    return write_demo_data(tmp_path / "data", n_pool=30, n_targets=3, seed=5)


def _cfg(tmp_path, data, model_dir, **kw):
    pool, targets = data
    base = dict(
        pool=str(pool),
        targets=str(targets),
        out=str(tmp_path / "out"),
        model=str(model_dir),
        device="cpu",
        methods=["length", "random"],
        budget="20%",
        max_length=96,
    )
    return SelectConfig(**{**base, **kw})


def _without_date(html: str) -> str:
    return re.sub(r"report made [^.]*\.", "", html)


def test_select_writes_the_report_and_rebuild_gives_the_same_page(tmp_path, data, tiny_model_dir):
    res = run_select(_cfg(tmp_path, data, tiny_model_dir))
    assert res.report == res.out / "report.html"
    html = res.report.read_text()
    for text in ("length: first selected", "random: first selected", "the 6 highest scores", "30 candidates"):
        assert text in html
    config = json.loads((res.out / "config.json").read_text())
    assert config["timings_s"]["report"] > 0  # the page's own time is in config.json
    res.report.unlink()
    assert gradsift.rebuild_report(res.out) == res.out / "report.html"
    assert _without_date((res.out / "report.html").read_text()) == _without_date(html)


def test_rebuild_errors_name_what_to_do(tmp_path, data, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="finished gradsift select run"):
        gradsift.rebuild_report(tmp_path / "nothing")
    res = run_select(_cfg(tmp_path, data, tiny_model_dir, methods=["random"]))
    pool, _ = data
    moved = tmp_path / "moved.jsonl"
    shutil.move(pool, moved)
    with pytest.raises(FileNotFoundError, match="pass --pool"):
        gradsift.rebuild_report(res.out)
    assert gradsift.rebuild_report(res.out, pool=str(moved)).exists()
    other, _ = write_demo_data(tmp_path / "other", n_pool=30, n_targets=3, seed=6)
    with pytest.raises(ValueError, match="not the pool .* selected from"):
        gradsift.rebuild_report(res.out, pool=str(other))


def test_a_failing_page_is_a_warning_not_a_lost_selection(tmp_path, data, tiny_model_dir, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(gradsift.select_report, "write_report", broken)
    with caplog.at_level(logging.WARNING):
        res = run_select(_cfg(tmp_path, data, tiny_model_dir, methods=["random"]))
    assert res.report is None and (res.out / "config.json").exists() and (res.out / "selected.jsonl").exists()
    assert "report.html could not be written (no fonts); rebuild it with: gradsift report" in caplog.text


def test_write_format_reaches_the_selection_files_and_the_settings(tmp_path, data, tiny_model_dir):
    res = run_select(_cfg(tmp_path, data, tiny_model_dir, write_format="prompt-completion"))
    for name in ("selected.jsonl", "selected-random.jsonl"):
        row = json.loads((res.out / name).read_text().splitlines()[0])
        assert row["prompt"][-1]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        assert {"instruction", "output", "gradsift_id", "gradsift_score"} <= set(row)
    with pytest.raises(ValueError, match="write_format"):
        run_select(_cfg(tmp_path, data, tiny_model_dir, write_format="messages"))
    with pytest.raises(ValueError, match="write_format must be one of original, messages, prompt-completion"):
        _cfg(tmp_path, data, tiny_model_dir, write_format="chatml")
