"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Each write goes to a temporary file in the destination's own directory (so the final rename stays
on one filesystem, where POSIX `rename` is atomic), is fsynced, renamed over the destination with
`os.replace`, and the directory is fsynced so the rename itself survives a power loss.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    """0o666 less the process umask: the mode open() gives a new file (read once, at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _umask_mode()


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (creations, renames) to disk.

    Args:
        path: The directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically.

    Args:
        path: Destination file; its directory must exist.
        data: The new contents.

    Raises:
        OSError: If writing or renaming fails; `path` then keeps its old contents (or stays absent)
            and no temporary file is left behind.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            # mkstemp makes the file private (0600): give it the mode a plain open() would, or the old file's
            try:
                mode = stat.S_IMODE(path.stat().st_mode)
            except FileNotFoundError:
                mode = _NEW_FILE_MODE
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave a stray temporary file.
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_npy_atomic(path: str | Path, array: Any) -> None:
    """Replace `path` with `array` in ``.npy`` format atomically (`write_bytes_atomic`)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes_atomic(path, buf.getvalue())


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Replace `path` with `text` atomically (see `write_bytes_atomic`).

    Args:
        path: Destination file; its directory must exist.
        text: The new contents.
        encoding: Text encoding.
    """
    write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Replace `path` with `obj` as JSON atomically (see `write_bytes_atomic`).

    The object is serialised before anything touches the disk, so an unserialisable object leaves
    `path` as it was. NaN and infinity are refused: they are not JSON and other readers reject them.

    Args:
        path: Destination file; its directory must exist.
        obj: A JSON-serialisable object.
        indent: Indentation of the written JSON.

    Raises:
        ValueError: If `obj` is not JSON-serialisable (unsupported type or a non-finite float).
    """
    try:
        text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot write {path} as JSON: {e}") from e
    write_text_atomic(path, text + "\n")
