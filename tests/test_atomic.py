"""Tests of the atomic write helpers: a reader sees the old file or the new one, never a mix."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from gradsift import atomic
from gradsift.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"b": [1, 2], "a": "x"})
    assert json.loads(path.read_text()) == {"a": "x", "b": [1, 2]}
    write_json_atomic(path, {"c": 1.5})
    assert json.loads(path.read_text()) == {"c": 1.5}
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert _files(tmp_path) == ["b.bin", "m.json", "t.txt"]


@pytest.mark.parametrize("obj", [{"x": object()}, {"x": float("nan")}, {"x": float("inf")}])
def test_unserialisable_json_leaves_old_file(tmp_path, obj):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"old": True})
    with pytest.raises(ValueError, match="cannot write .*m.json as JSON"):
        write_json_atomic(path, obj)
    assert json.loads(path.read_text()) == {"old": True}
    assert _files(tmp_path) == ["m.json"]


def test_failed_rename_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"old": True})

    def fail(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        write_json_atomic(path, {"new": True})
    assert json.loads(path.read_text()) == {"old": True}
    assert _files(tmp_path) == ["m.json"]


def test_missing_directory_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_text_atomic(tmp_path / "absent" / "f.txt", "x")


def test_sigkill_before_rename_keeps_old_contents(tmp_path):
    # A process killed after writing the new contents but before the rename: readers still see the old file.
    path = tmp_path / "metadata.json"
    write_json_atomic(path, {"version": "old"})
    script = textwrap.dedent(
        f"""
        import os, signal
        from gradsift import atomic
        atomic.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        atomic.write_json_atomic({str(path)!r}, {{"version": "new"}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads(path.read_text()) == {"version": "old"}
    # The only trace is a hidden temporary file, which no reader mistakes for the real one.
    leftovers = [name for name in _files(tmp_path) if name != "metadata.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".metadata.json.") and leftovers[0].endswith(".tmp")


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_written_files_get_the_mode_of_a_plain_open_or_keep_the_old_one(tmp_path):
    new = tmp_path / "new.json"
    write_json_atomic(new, {"a": 1})
    (tmp_path / "plain.txt").write_text("x")
    assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    old = tmp_path / "old.txt"
    old.write_text("x")
    old.chmod(0o640)
    write_text_atomic(old, "y")
    assert stat.S_IMODE(old.stat().st_mode) == 0o640 and old.read_text() == "y"
