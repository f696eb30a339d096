"""The progress helper: a bar on a terminal, periodic one-line log messages elsewhere or when quiet."""

from __future__ import annotations

import io
import logging

import pytest

from gradsift import progress as progress_module
from gradsift.progress import Progress, duration, get_mode, set_mode


@pytest.fixture(autouse=True)
def restore_mode():
    before = get_mode()
    yield
    set_mode(before)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeStderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_duration():
    assert [duration(s) for s in (0, 41.6, 187.2, 3600 * 2 + 300)] == ["0s", "42s", "3m07s", "2h05m"]


def test_log_mode_writes_a_line_per_interval_and_one_at_the_end(caplog):
    set_mode("log")
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="gradsift.progress"):
        with Progress(100, "features pool", "ex", every=30, clock=clock) as bar:
            for _ in range(10):
                clock.t += 6  # 10 ex every 6 s: a line after 30 s and after 60 s
                bar.update(10)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "features pool: 50/100 ex (50%), 1.67 ex/s, elapsed 30s, ETA 30s",
        "features pool: 100/100 ex (100%), 1.67 ex/s, elapsed 1m00s",
    ]
    assert all("\r" not in line and "\n" not in line for line in lines)


def test_log_mode_ends_with_a_line_when_the_last_one_is_stale(caplog):
    set_mode("log")
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="gradsift.progress"):
        with Progress(3, "gen", "batch", every=30, clock=clock) as bar:
            clock.t += 2
            bar.update(3)
    assert [r.getMessage() for r in caplog.records] == ["gen: 3/3 batch (100%), 1.5 batch/s, elapsed 2s"]


def test_auto_mode_draws_a_bar_on_a_terminal_and_logs_elsewhere(monkeypatch, caplog):
    set_mode("auto")
    tty = FakeStderr(tty=True)
    monkeypatch.setattr(progress_module.sys, "stderr", tty)
    with Progress(5, "loss", "ex") as bar:
        assert bar.mode == "bar"
        bar.update(5)
    assert "loss" in tty.getvalue() and "\r" in tty.getvalue()

    pipe = FakeStderr(tty=False)
    monkeypatch.setattr(progress_module.sys, "stderr", pipe)
    with caplog.at_level(logging.INFO, logger="gradsift.progress"):
        with Progress(5, "loss", "ex") as bar:
            assert bar.mode == "log"
            bar.update(5)
    assert pipe.getvalue() == ""  # no bar characters in a log file
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["loss: 5/5 ex (100%)"]


def test_quiet_on_a_terminal_logs_and_off_or_disabled_shows_nothing(monkeypatch, caplog):
    tty = FakeStderr(tty=True)
    monkeypatch.setattr(progress_module.sys, "stderr", tty)
    set_mode("log")
    assert Progress(3, "x").mode == "log"
    with caplog.at_level(logging.INFO, logger="gradsift.progress"):
        set_mode("off")
        with Progress(3, "x") as bar:
            bar.update(3)
        set_mode("bar")
        with Progress(3, "x", enabled=False) as bar:
            bar.update(3)
    assert tty.getvalue() == "" and not caplog.records


def test_bad_mode():
    with pytest.raises(ValueError, match="auto, bar, log, off"):
        set_mode("loud")


def test_bars_follows_the_mode_and_the_terminal(monkeypatch):
    monkeypatch.setattr(progress_module.sys, "stderr", FakeStderr(tty=True))
    for mode, want in (("auto", True), ("bar", True), ("log", False), ("off", False)):
        set_mode(mode)
        assert progress_module.bars() is want, mode
    monkeypatch.setattr(progress_module.sys, "stderr", FakeStderr(tty=False))
    set_mode("auto")
    assert not progress_module.bars()


def test_a_fast_rate_is_written_without_scientific_notation():
    clock = FakeClock()
    bar = Progress(30, "loss", "ex", enabled=False, clock=clock)
    clock.t += 0.025
    bar.update(30)
    assert "1200 ex/s" in bar.line() and "e+" not in bar.line()
