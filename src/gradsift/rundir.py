"""Output directories gradsift owns: one run at a time (a lock file), and a record of what the run wrote (a
manifest), so that a rerun replaces exactly its own files and never a user's.

`RunLock`: an exclusive lock held through a lock file that names its holder (process id, host, start time,
command). A second run into the same directory or feature store fails at once, naming the holder. The lock is
an ``flock`` on the file, which the kernel drops when its process dies: a lock file left by a killed run is
taken over, with a warning naming the process that left it.

`RunDir`: an output directory (``gradsift select --out``). Its manifest ``.gradsift-run.json`` lists the
files gradsift wrote there. Rules:

- A directory holding files the manifest does not list ("foreign" files, e.g. the user's own
  ``selected.jsonl``) is refused unless ``overwrite``; with it, foreign files are left alone, and a run that
  would replace one is refused whatever ``overwrite`` says.
- A ``config.json`` that cannot be read, or that records other settings, is refused unless ``overwrite``.
- A run first removes the previous ``config.json`` (a directory with one holds a finished run) and lists its
  outputs in the manifest; once its outputs are written it removes the previous run's files it did not
  rewrite, so the directory holds exactly the outputs of its ``config.json``. Kept entries (a cache keyed by
  its settings) stay.
- A run that fails before writing anything leaves the directory as it found it (a directory it created is
  removed again).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gradsift.atomic import write_json_atomic
from gradsift.settings import check_same_settings

log = logging.getLogger(__name__)

LOCK_FILE = ".gradsift.lock"
MANIFEST = ".gradsift-run.json"
_MANIFEST_FORMAT = "gradsift.run"


# lock files this process holds -> how many times it took each
_HELD: dict[str, int] = {}


class RunDirBusy(BlockingIOError):
    """Another gradsift process holds the lock of a directory or feature store."""


def _holder(fd: int) -> dict[str, Any] | None:
    """The holder recorded in an open lock file, or None when it is empty or unreadable."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 1 << 16).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another gradsift process"
    where = f" on {holder['host']}" if holder.get("host") and holder.get("host") != socket.gethostname() else ""
    command = f": {holder['command']}" if holder.get("command") else ""
    return f"gradsift process {holder.get('pid', '?')}{where} (started {holder.get('started', '?')}{command})"


class RunLock:
    """An exclusive lock on a directory or feature store, held by one process through a lock file.

    A process may take a lock it holds again (a run that trains a warm-up inside its own directory): the lock is
    dropped when the outermost holder releases it.

    Args:
        path: The lock file.
        place: What it locks, as the user named it (for messages).
        flag: The setting that chooses `place` (``--out``), for the advice in the busy message.
    """

    def __init__(self, path: str | Path, place: str, flag: str = "--out") -> None:
        self.path = Path(path)
        self.place = place
        self.flag = flag
        self._fd: int | None = None
        self._nested = False

    def acquire(self) -> None:
        """Take the lock, or fail at once naming its holder.

        Raises:
            RunDirBusy: Another live process holds it.
        """
        import fcntl

        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key] += 1
            self._nested = True
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunDirBusy(
                    f"{self.place} is in use by {_describe(holder)}; wait for that run to end, or choose another "
                    f"{self.flag}"
                ) from None
            # The last holder unlinks the file before closing it: a lock won on an unlinked file is no lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _holder(fd)
        if previous is not None:
            log.warning("%s: took over the lock left by %s, which has ended", self.place, _describe(previous))
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["gradsift", *sys.argv[1:]])
            if "gradsift" in (sys.argv[0] if sys.argv else "")
            else "",
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self._fd = fd
        _HELD[key] = 1

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        key = str(self.path.resolve())
        if self._nested:
            _HELD[key] -= 1
            self._nested = False
            return
        if self._fd is None:
            return
        _HELD.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked_dir(path: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Create `path` if needed and hold its lock (``path/.gradsift.lock``) for the block; a directory this call
    created is removed again if the block left it empty (a run refused before writing anything).

    Raises:
        ValueError: `path` exists and is not a directory.
        RunDirBusy: Another process holds the lock.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory; choose another {flag}")
    created = _first_missing(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = RunLock(path / LOCK_FILE, str(path), flag)
    try:
        lock.acquire()
        yield path
    finally:
        lock.release()
        if created is not None:
            _remove_empty(path, created)


@dataclass
class RunDir:
    """An output directory gradsift owns (module docstring for the rules).

    Use `claim` around the whole run, `begin` before the first output is written and `finish` once all are.

    Attributes:
        path: The directory.
        what: What a finished run there holds, for messages (``"a selection"``).
        outputs: Names of the files and folders this run writes (``config.json`` among them).
        keep: Names of owned entries that later runs keep (caches keyed by their settings).
        config: The file that records a finished run's settings; written last.
        read_settings: The settings in the parsed config file (raises KeyError/TypeError when they are absent).
        legacy: Glob patterns of the outputs of a run made before manifests existed (trusted only beside a
            readable config file).
        flag: The setting that names `path`, for messages.
    """

    path: Path
    what: str
    outputs: tuple[str, ...]
    keep: tuple[str, ...] = ()
    config: str = "config.json"
    read_settings: Callable[[Any], Any] = lambda config: config["settings"]
    legacy: tuple[str, ...] = ()
    flag: str = "--out"
    _owned: set[str] = field(default_factory=set, init=False, repr=False)
    _before: set[str] = field(default_factory=set, init=False, repr=False)

    @contextlib.contextmanager
    def claim(self, settings: Any, overwrite: bool) -> Iterator[RunDir]:
        """Lock the directory (creating it) and check it may take a run with `settings`.

        Raises:
            ValueError: `path` is not a directory; it holds foreign files or an unreadable config file, or a
                run with other settings (each unless `overwrite`); or this run would replace a foreign file.
            RunDirBusy: Another run holds the directory.
        """
        with locked_dir(self.path, self.flag):
            self._inspect(settings, overwrite)
            yield self

    def _entries(self) -> set[str]:
        return {p.name for p in self.path.iterdir() if p.name not in (LOCK_FILE, MANIFEST) and not _temporary(p.name)}

    def _inspect(self, settings: Any, overwrite: bool) -> None:
        entries = self._entries()
        config_path = self.path / self.config
        config, problem = _read_json(config_path) if self.config in entries else (None, None)
        manifest, _ = _read_json(self.path / MANIFEST)
        if isinstance(manifest, dict) and manifest.get("format") == _MANIFEST_FORMAT:
            owned = {str(f) for f in manifest.get("files", [])} & entries
        elif config is not None:
            owned = {e for e in entries if any(fnmatch.fnmatch(e, p) for p in self.legacy)}
        else:
            owned = set()
        # an unreadable config file is still the run's file: --overwrite replaces it
        owned |= {e for e in entries if e == self.config or e in self.keep}
        foreign = sorted(entries - owned)
        clash = [f for f in foreign if f in self.outputs]
        if clash:
            raise ValueError(
                f"{self.path} holds {_names(clash)}, which gradsift did not write and this run would replace; "
                f"move {'it' if len(clash) == 1 else 'them'} away or choose another {self.flag}"
            )
        if foreign and not overwrite:
            raise ValueError(
                f"{self.path} holds files gradsift did not write ({_names(foreign)}); pass --overwrite to write "
                f"beside them (they are left alone), or choose another {self.flag}"
            )
        if self.config in entries and not overwrite:
            old = None
            if problem is None:
                try:
                    old = self.read_settings(config)
                except (KeyError, TypeError, IndexError):
                    problem = "no settings in it"
            if problem is not None:
                raise ValueError(
                    f"{config_path} cannot be read ({problem}); pass --overwrite to replace the run in {self.path}, "
                    f"or choose another {self.flag}"
                )
            check_same_settings(str(self.path), old, settings, what=self.what, elsewhere=f"choose another {self.flag}")
        self._owned = owned
        self._before = entries

    def begin(self) -> None:
        """Record this run's outputs in the manifest and remove the previous config file: from here on the
        directory holds no finished run until `finish`."""
        write_json_atomic(self.path / MANIFEST, self._manifest(self._owned | set(self.outputs), complete=False))
        with contextlib.suppress(FileNotFoundError):
            (self.path / self.config).unlink()
        for p in self.path.iterdir():
            if _temporary(p.name):
                _remove(p)

    def finish(self) -> None:
        """Remove the previous run's files this run did not rewrite and record what the directory now holds.
        Call when every output but the config file is written, then write the config file."""
        present = self._entries()
        ours = set(self.outputs) | (present & set(self.keep)) | (present - self._before)
        for name in sorted((self._owned & present) - ours):
            _remove(self.path / name)
        write_json_atomic(self.path / MANIFEST, self._manifest(ours, complete=True))

    def _manifest(self, files: set[str], complete: bool) -> dict[str, Any]:
        return {"format": _MANIFEST_FORMAT, "what": self.what, "complete": complete, "files": sorted(files)}


def _read_json(path: Path) -> tuple[Any, str | None]:
    """The parsed file, or None and why it could not be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as e:
        return None, str(e) or type(e).__name__


def _temporary(name: str) -> bool:
    """An atomic write's temporary file (`gradsift.atomic`), left by a killed run."""
    return name.startswith(".") and name.endswith(".tmp")


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost ancestor of `path` (or `path` itself) that does not exist yet."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _remove_empty(path: Path, top: Path) -> None:
    """Remove `path` and its parents up to `top`, as long as each is empty."""
    for p in [path, *path.parents]:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return
