"""Run directories gradsift owns: one run at a time (lock files naming their holder, stale ones taken over),
and a manifest so that a rerun replaces exactly its own files and never a user's."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradsift.rundir import LOCK_FILE, MANIFEST, RunDir, RunDirBusy, RunLock, locked_dir

# A process that takes a lock, says so, and holds it until killed.
HOLDER = """
import sys, time
from gradsift.rundir import RunLock
lock = RunLock(sys.argv[1], "x")
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock file given; yields its Popen."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_held_lock_refuses_a_second_process_at_once_naming_the_holder(tmp_path, holder):
    path = tmp_path / LOCK_FILE
    proc = holder(path)
    info = json.loads(path.read_text())
    assert info["pid"] == proc.pid and info["started"]
    t = time.perf_counter()
    with pytest.raises(RunDirBusy, match=rf"out is in use by gradsift process {proc.pid} .*started .*choose another"):
        RunLock(path, "out").acquire()
    assert time.perf_counter() - t < 1.0


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, holder, caplog):
    path = tmp_path / LOCK_FILE
    proc = holder(path)
    proc.kill()
    proc.wait()
    assert path.exists()  # a killed run leaves its lock file
    with caplog.at_level(logging.WARNING), RunLock(path, "out"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"took over the lock left by gradsift process {proc.pid}" in caplog.text
    assert not path.exists()  # released: the file goes


def test_a_process_may_take_its_own_lock_again(tmp_path):
    path = tmp_path / LOCK_FILE
    with RunLock(path, "out"):
        with RunLock(path, "out"):
            assert path.exists()
        assert path.exists()  # still held by the outer one
    assert not path.exists()


def test_locked_dir_removes_the_directory_it_created_when_left_empty(tmp_path):
    target = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError), locked_dir(target):
        assert (target / LOCK_FILE).exists()
        raise RuntimeError("refused before writing")
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"), locked_dir(tmp_path / "f"):
        pass


def _run(path: Path, outputs: tuple[str, ...], settings, overwrite=False, fail=False) -> None:
    run = RunDir(path, "a selection", (*outputs, "config.json"), keep=("cache",))
    with run.claim(settings, overwrite):
        run.begin()
        (path / "cache").mkdir(exist_ok=True)
        for name in outputs:
            (path / name).write_text(json.dumps(settings))
        if fail:
            raise RuntimeError("killed")
        run.finish()
        (path / "config.json").write_text(json.dumps({"settings": settings}))


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_a_rerun_replaces_the_previous_run_and_removes_what_it_does_not_rewrite(tmp_path):
    out = tmp_path / "out"
    _run(out, ("a.jsonl", "b.jsonl"), {"m": ["a", "b"]})
    assert _listing(out) == [MANIFEST, "a.jsonl", "b.jsonl", "cache", "config.json"]
    with pytest.raises(ValueError, match=r"different settings: m \(.*\).*--overwrite"):
        _run(out, ("a.jsonl",), {"m": ["a"]})
    _run(out, ("a.jsonl",), {"m": ["a"]}, overwrite=True)
    assert _listing(out) == [MANIFEST, "a.jsonl", "cache", "config.json"]  # b.jsonl went, the cache stays
    assert json.loads((out / MANIFEST).read_text())["files"] == ["a.jsonl", "cache", "config.json"]


def test_foreign_files_are_refused_unless_overwrite_and_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files gradsift did not write \(notes.txt\).*--overwrite"):
        _run(out, ("a.jsonl",), {"m": 1})
    _run(out, ("a.jsonl",), {"m": 1}, overwrite=True)
    _run(out, ("b.jsonl",), {"m": 2}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "a.jsonl").exists()
    (out / "c.jsonl").write_text("mine too")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="holds c.jsonl, which gradsift did not write and this run would replace"):
            _run(out, ("c.jsonl",), {"m": 3}, overwrite=overwrite)
    assert (out / "c.jsonl").read_text() == "mine too"


def test_an_unreadable_config_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    _run(out, ("a.jsonl",), {"m": 1})
    (out / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"config.json cannot be read .*--overwrite"):
        _run(out, ("a.jsonl",), {"m": 1})
    _run(out, ("a.jsonl",), {"m": 2}, overwrite=True)
    assert json.loads((out / "config.json").read_text()) == {"settings": {"m": 2}}


def test_a_killed_run_leaves_no_config_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "out"
    _run(out, ("a.jsonl", "b.jsonl"), {"m": 1})
    with pytest.raises(RuntimeError):
        _run(out, ("a.jsonl",), {"m": 2}, overwrite=True, fail=True)
    assert not (out / "config.json").exists()  # no finished run is claimed
    _run(out, ("c.jsonl",), {"m": 3})  # no config.json: nothing to compare, every file is gradsift's
    assert _listing(out) == [MANIFEST, "c.jsonl", "cache", "config.json"]


def test_a_refused_claim_writes_nothing(tmp_path):
    out = tmp_path / "new"
    run = RunDir(out, "a selection", ("a.jsonl", "config.json"))
    with pytest.raises(ValueError, match="bad data"), run.claim({}, False):
        raise ValueError("bad data")
    assert not out.exists()
