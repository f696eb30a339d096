"""On-disk per-example feature store: memmapped rows, a done-mask and `metadata.json`.

One store holds the projected features of one split at one checkpoint (methods.md, preamble: every
gradient is projected to `k` dimensions before it is stored). Its directory holds:

    metadata.json   layout (n_rows, dim, dtype, extras), the caller's settings, provenance
    features.npy    [N, k] float16 | float32, opened with `numpy.lib.format.open_memmap`
    done.npy        [N] bool: row i is on disk and may be read
    bad.npy         [N] bool: row i had non-finite features (NaN/inf, also after a float16 cast)
    <extra>.npy     [N] float32 | bool per named extra, e.g. `loss.npy`

Resuming: `write_rows` writes and flushes a batch's features, extras and bad flags, and only then
sets and flushes their done flags. A process killed between the two leaves those rows not done, so
the next run recomputes and overwrites them; a row is never read half-written and never counted
twice. Creation is atomic too: the store is built in a hidden sibling directory and renamed into
place, so a store that exists at its path is complete in layout.

Reopening checks that the settings agree exactly (the layout and every key of the caller's
`settings` dict); a store built with other settings is refused unless `overwrite=True`.

Multi-process writers (e.g. torch.distributed ranks on one node) fill one store concurrently.
Every process maps the same files in `r+` mode and writes only its own rows; the done-mask has
one byte per row, so disjoint row sets never touch the same bytes. Protocol:

    if rank == 0:
        store = FeatureStore.open(path, n, k, settings, overwrite=overwrite)
    dist.barrier()                       # the store now exists, with the right settings
    if rank != 0:
        store = FeatureStore.open(path, n, k, settings)  # reopens, checking settings agree
    for batch in batches(store.missing_rows(rank, world_size)):
        store.write_rows(batch, features_of(batch), {"loss": losses_of(batch)})
    dist.barrier()                       # rank 0 may now check store.is_complete()

`missing_rows(rank, world_size)` shards by row index (`row % world_size == rank`), so each rank's
share is disjoint from the others' and does not depend on how far they have got. Without
`overwrite`, all ranks may also call `open` at the same moment with no barrier: one creation wins
the rename, the others drop theirs and reopen the winner's. Only one rank may pass
`overwrite=True`. Separate runs do not share a store: `store_lock` (a lock file beside the store, held by
the writing run's rank 0) makes a second one fail at once, naming the first. The processes must share one
machine's page cache: on a network filesystem
written from several nodes, whole pages are written back and disjoint rows on one page can
clobber each other.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import numpy as np

from gradsift.atomic import fsync_dir, write_json_atomic
from gradsift.rundir import RunLock
from gradsift.settings import check_same_settings
from gradsift.version import __version__

logger = logging.getLogger(__name__)

FORMAT = "gradsift.feature-store"
FORMAT_VERSION = 1
METADATA = "metadata.json"
_RESERVED = {"features", "done", "bad"}
_EXTRA_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Keys of metadata.json that must agree for a reopen; the rest is provenance.
_COMPARED = ("n_rows", "dim", "dtype", "extras", "settings")


class FeatureDtype(StrEnum):
    """Storage dtype of the feature rows."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"


class ExtraDtype(StrEnum):
    """Storage dtype of a per-row side array."""

    FLOAT32 = "float32"
    BOOL = "bool"


class IncompleteStoreError(RuntimeError):
    """Reading for scoring was asked of a store whose rows are not all done."""


@dataclass
class StoreLayout:
    """Shape of a feature store.

    Attributes:
        n_rows: Number of rows N, one per example index of the split.
        dim: Feature dimension k (the projection dimension).
        dtype: Storage dtype of the features (the enum or its string value).
        extras: Per-row side arrays, name -> dtype (e.g. ``{"loss": "float32"}``). Names are lower-case
            identifiers other than ``features``, ``done`` and ``bad``; each is stored as ``<name>.npy``.
    """

    n_rows: int
    dim: int
    dtype: FeatureDtype = FeatureDtype.FLOAT32
    extras: dict[str, ExtraDtype] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_rows", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))
        try:
            self.dtype = FeatureDtype(self.dtype)
        except ValueError:
            raise ValueError(
                f"feature dtype must be one of {[d.value for d in FeatureDtype]}, got {self.dtype!r}"
            ) from None
        extras = {}
        for name, dtype in self.extras.items():
            if not isinstance(name, str) or not _EXTRA_NAME.match(name) or name in _RESERVED:
                raise ValueError(
                    f"extra name {name!r} must be a lower-case identifier ([a-z][a-z0-9_]*) "
                    f"other than {sorted(_RESERVED)}"
                )
            try:
                extras[name] = ExtraDtype(dtype)
            except ValueError:
                raise ValueError(
                    f"extra {name!r}: dtype must be one of {[d.value for d in ExtraDtype]}, got {dtype!r}"
                ) from None
        self.extras = extras

    def as_dict(self) -> dict[str, Any]:
        """JSON form, as stored in metadata.json."""
        return {
            "n_rows": self.n_rows,
            "dim": self.dim,
            "dtype": self.dtype.value,
            "extras": {name: dtype.value for name, dtype in self.extras.items()},
        }


@dataclass(frozen=True)
class FeatureBlock:
    """Rows read from a store for scoring.

    Attributes:
        rows: [b] int64 row indices.
        features: [b, k] features in the store dtype (a copy, not a view of the file). Rows that are not
            valid read as NaN, so a scorer that forgets `valid` produces NaN rather than a plausible score.
        valid: [b] bool, True where the row is done and finite. Scorers must drop the other rows.
        extras: Name -> [b] side array, as stored (float extras of rows never written are NaN).
    """

    rows: np.ndarray
    features: np.ndarray
    valid: np.ndarray
    extras: dict[str, np.ndarray]


class FeatureStore:
    """Per-example feature rows of one split at one checkpoint, on disk.

    Create or reopen with `FeatureStore.open` (writers) or open for reading with `FeatureStore.load`.
    See the module docstring for the layout, the crash-safety argument and the multi-process protocol.
    """

    def __init__(self, path: Path, metadata: dict[str, Any], writable: bool) -> None:
        """Map an existing store's files; use `open` or `load` rather than calling this directly."""
        self._path = path
        self._metadata = metadata
        self._layout = StoreLayout(**{key: metadata[key] for key in ("n_rows", "dim", "dtype", "extras")})
        self._writable = writable
        mode = "r+" if writable else "r"
        n, k = self._layout.n_rows, self._layout.dim
        self._features = _map(path / "features.npy", mode, (n, k), np.dtype(self._layout.dtype.value))
        self._done = _map(path / "done.npy", mode, (n,), np.dtype(bool))
        self._bad = _map(path / "bad.npy", mode, (n,), np.dtype(bool))
        self._extras = {
            name: _map(path / f"{name}.npy", mode, (n,), np.dtype(dtype.value))
            for name, dtype in self._layout.extras.items()
        }

    @classmethod
    def open(
        cls,
        path: str | Path,
        n_rows: int,
        dim: int,
        settings: Mapping[str, Any],
        dtype: FeatureDtype | str = FeatureDtype.FLOAT32,
        overwrite: bool = False,
        extras: Sequence[str] | Mapping[str, ExtraDtype | str] = ("loss",),
        command: str | None = None,
    ) -> FeatureStore:
        """Create a store for writing, or reopen an existing one built with the same settings.

        Args:
            path: Store directory. Its parent is created if needed.
            n_rows: Number of rows N.
            dim: Feature dimension k.
            settings: Everything that determines the features (model and data fingerprints, LoRA config,
                projector and seed, loss reduction, kind, ...). Must be JSON-serialisable; it is stored
                in metadata.json and compared key by key on reopen.
            dtype: Storage dtype of the features, ``"float16"`` or ``"float32"``.
            overwrite: Delete the feature store at `path`, whatever its settings, and start afresh.
            extras: Per-row side arrays: names (float32 each) or a mapping name -> ``"float32"``/``"bool"``.
            command: The command line that builds this store, quoted in the error raised when an
                incomplete store is read, so the user knows how to resume.

        Returns:
            A writable store.

        Raises:
            ValueError: If the layout or settings are invalid, if `path` holds a store built with
                different settings and `overwrite` is False (the message names the differing keys), or
                if `path` exists and is not a feature store (never deleted, even with `overwrite`).
        """
        path = Path(path)
        if isinstance(extras, str):
            raise ValueError(f"extras must be a sequence of names or a mapping, got the string {extras!r}")
        extras_spec = dict(extras) if isinstance(extras, Mapping) else dict.fromkeys(extras, ExtraDtype.FLOAT32)
        # StoreLayout.__post_init__ turns the strings into enums, refusing unknown ones.
        layout = StoreLayout(
            n_rows=n_rows, dim=dim, dtype=cast(FeatureDtype, dtype), extras=cast(dict[str, ExtraDtype], extras_spec)
        )
        requested = {**layout.as_dict(), "settings": _json_settings(settings)}
        # An empty directory (e.g. made by a launcher) is taken as a place to create the store.
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            # With overwrite, only make sure it is a feature store (of any version) before deleting it.
            existing = _read_metadata(path, any_version=overwrite)
            if not overwrite:
                _check_same(path, existing, requested)
                return cls(path, existing, writable=True)
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **requested,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "gradsift_version": __version__,
            "command": command,
        }
        if _create(path, layout, metadata, replace=overwrite):
            return cls(path, metadata, writable=True)
        # Another process created the store between our check and our rename: use theirs.
        existing = _read_metadata(path)
        _check_same(path, existing, requested)
        return cls(path, existing, writable=True)

    @classmethod
    def load(cls, path: str | Path, writable: bool = False) -> FeatureStore:
        """Open an existing store without comparing settings (for scoring and inspection).

        Args:
            path: Store directory.
            writable: Map the files read-write, to add rows.

        Raises:
            FileNotFoundError: If there is no store at `path`.
            ValueError: If `path` is not a feature store or its files disagree with its metadata.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no feature store at {path}")
        return cls(path, _read_metadata(path), writable=writable)

    @property
    def path(self) -> Path:
        """Store directory."""
        return self._path

    @property
    def layout(self) -> StoreLayout:
        """Rows, dimension, dtype and extras."""
        return self._layout

    @property
    def settings(self) -> dict[str, Any]:
        """The caller's settings the store was built with (a copy)."""
        return json.loads(json.dumps(self._metadata["settings"]))

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything in metadata.json (a copy)."""
        return json.loads(json.dumps(self._metadata))

    def missing_rows(self, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Rows not yet done, optionally only one writer's share.

        Args:
            rank: This writer's index in [0, world_size).
            world_size: Number of concurrent writers; the share of `rank` is the rows with
                ``row % world_size == rank``, disjoint from every other rank's whatever they have written.

        Returns:
            [m] int64 row indices, ascending.
        """
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        missing = np.flatnonzero(~np.asarray(self._done)).astype(np.int64)
        return missing[missing % world_size == rank]

    def is_complete(self) -> bool:
        """Whether every row is done."""
        return bool(np.asarray(self._done).all())

    def bad_rows(self) -> np.ndarray:
        """[m] int64 indices, ascending, of done rows whose features were not finite."""
        return np.flatnonzero(np.asarray(self._done) & np.asarray(self._bad)).astype(np.int64)

    def write_rows(
        self, rows: Sequence[int] | np.ndarray, features: np.ndarray, extras: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Write a batch of rows, then mark them done.

        The features, extras and bad flags are written and flushed before the done flags are set and
        flushed, so a crash in between leaves the rows to be recomputed, never half-counted. Rows whose
        features are not finite after the cast to the store dtype (NaN, inf, or float32 values beyond the
        float16 range) are stored as given, flagged in ``bad.npy``, logged, and reported by `bad_rows`;
        reads mark them invalid.

        Args:
            rows: [b] distinct row indices in [0, N), none already done.
            features: [b, k] real-valued features, one row per index in `rows`.
            extras: Name -> [b] values for every extra of the store, no more and no fewer; bool extras
                take bool arrays.

        Returns:
            [m] int64 indices (a subset of `rows`, in its order) of the rows with non-finite features.

        Raises:
            ValueError: If the store is read-only, or any argument has the wrong shape, dtype or rows
                (nothing is written then).
        """
        if not self._writable:
            raise ValueError(f"feature store {self._path} was opened read-only; use FeatureStore.open to write")
        index = self._check_rows(rows, what="write_rows")
        if len(np.unique(index)) != len(index):
            raise ValueError("write_rows: rows contain duplicates")
        already = index[np.asarray(self._done[index])]
        if len(already):
            raise ValueError(
                f"write_rows: rows already done: {_preview(already)} (two writers given the same rows? "
                "write only store.missing_rows(rank, world_size))"
            )
        values = np.asarray(features)
        b, k = len(index), self._layout.dim
        if values.shape != (b, k):
            raise ValueError(f"write_rows: features must have shape [{b}, {k}], got {list(values.shape)}")
        if values.dtype.kind not in "fiu":
            raise ValueError(f"write_rows: features must be real numbers, got dtype {values.dtype}")
        side = self._check_extras(extras or {}, b)

        # Overflow in the float16 cast is expected for extreme rows: they become inf and are flagged below.
        with np.errstate(over="ignore", invalid="ignore"):
            stored = values.astype(self._features.dtype)
        finite = np.isfinite(stored).all(axis=1)
        self._features[index] = stored
        for name, column in side.items():
            self._extras[name][index] = column
        self._bad[index] = ~finite
        for array in (self._features, self._bad, *self._extras.values()):
            array.flush()
        self._done[index] = True
        self._done.flush()

        bad = index[~finite]
        if len(bad):
            logger.warning("%s: %d rows with non-finite features: %s", self._path, len(bad), _preview(bad))
        return bad

    def read(self, rows: Sequence[int] | np.ndarray | None = None, *, allow_partial: bool = False) -> FeatureBlock:
        """Read rows for scoring.

        Args:
            rows: [b] row indices (any order, repeats allowed); None reads every row.
            allow_partial: Read even if some rows of the store are not done (they come back invalid).

        Returns:
            The rows, their features, validity mask and extras.

        Raises:
            IncompleteStoreError: If the store is incomplete and `allow_partial` is False; the message says
                how many rows are missing and how to resume.
            ValueError: If `rows` is not a 1-D array of indices in [0, N).
        """
        self._require_complete(allow_partial)
        if rows is None:
            return self._gather(slice(0, self._layout.n_rows))
        return self._gather(self._check_rows(rows, what="read"))

    def iter_chunks(self, chunk_rows: int, *, allow_partial: bool = False) -> Iterator[FeatureBlock]:
        """Read all rows in consecutive chunks, holding at most `chunk_rows` rows in memory.

        Args:
            chunk_rows: Rows per chunk (the last chunk may be shorter).
            allow_partial: As in `read`.

        Yields:
            Blocks of rows ``[start, start + chunk_rows)`` in ascending order.

        Raises:
            IncompleteStoreError: As in `read` (raised before the first chunk).
        """
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        self._require_complete(allow_partial)
        return self._chunks(chunk_rows)

    def close(self) -> None:
        """Flush (if writable) and unmap the files; the store cannot be used afterwards."""
        if self._writable:
            for array in (self._features, self._bad, *self._extras.values(), self._done):
                array.flush()
        # numpy memmaps have no close(): dropping the last reference unmaps the file.
        del self._features, self._done, self._bad, self._extras

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self._path)!r}, {self._layout})"

    def _chunks(self, chunk_rows: int) -> Iterator[FeatureBlock]:
        for start in range(0, self._layout.n_rows, chunk_rows):
            yield self._gather(slice(start, min(start + chunk_rows, self._layout.n_rows)))

    def _gather(self, index: slice | np.ndarray) -> FeatureBlock:
        features = np.array(self._features[index])
        valid = np.array(self._done[index]) & ~np.array(self._bad[index])
        features[~valid] = np.nan
        rows = np.arange(index.start, index.stop, dtype=np.int64) if isinstance(index, slice) else index
        extras = {name: np.array(array[index]) for name, array in self._extras.items()}
        return FeatureBlock(rows=rows, features=features, valid=valid, extras=extras)

    def _require_complete(self, allow_partial: bool) -> None:
        if allow_partial:
            return
        missing = int(np.count_nonzero(~np.asarray(self._done)))
        if missing == 0:
            return
        command = self._metadata.get("command")
        how = (
            f"rerun `{command}`"
            if command
            else "rerun the command that created it with the same settings and without --overwrite"
        )
        raise IncompleteStoreError(
            f"feature store {self._path} is incomplete: {missing} of {self._layout.n_rows} rows missing. "
            f"To resume, {how}: it computes only the missing rows. To read what is there, pass allow_partial=True."
        )

    def _check_rows(self, rows: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
        index = np.asarray(rows)
        if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
            raise ValueError(f"{what}: rows must be a 1-D array of integer indices, got {index.dtype} {index.shape}")
        index = index.astype(np.int64)
        out = index[(index < 0) | (index >= self._layout.n_rows)]
        if len(out):
            raise ValueError(f"{what}: rows out of range [0, {self._layout.n_rows}): {_preview(out)}")
        return index

    def _check_extras(self, extras: Mapping[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
        expected = set(self._layout.extras)
        if set(extras) != expected:
            raise ValueError(
                f"write_rows: extras must be exactly {sorted(expected)}, got {sorted(extras)} "
                f"(missing {sorted(expected - set(extras))}, unknown {sorted(set(extras) - expected)})"
            )
        out = {}
        for name, dtype in self._layout.extras.items():
            column = np.asarray(extras[name])
            if column.shape != (b,):
                raise ValueError(f"write_rows: extra {name!r} must have shape [{b}], got {list(column.shape)}")
            if dtype is ExtraDtype.BOOL and column.dtype != bool:
                raise ValueError(f"write_rows: extra {name!r} is bool; got dtype {column.dtype}")
            if dtype is ExtraDtype.FLOAT32 and column.dtype.kind not in "fiu":
                raise ValueError(f"write_rows: extra {name!r} must be real numbers, got dtype {column.dtype}")
            out[name] = column.astype(dtype.value)
        return out


def _map(path: Path, mode: str, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """Memory-map one array of a store, checking it has the shape and dtype the metadata says."""
    if not path.is_file():
        raise ValueError(f"feature store is damaged: {path} is missing")
    array = np.lib.format.open_memmap(path, mode=mode)
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(
            f"feature store is damaged: {path} holds {array.dtype} {list(array.shape)}, "
            f"metadata says {dtype} {list(shape)}"
        )
    return array


def _create(path: Path, layout: StoreLayout, metadata: dict[str, Any], replace: bool) -> bool:
    """Build a store in a hidden sibling directory and rename it to `path`.

    Returns:
        True if the new store is at `path`; False if another process created one there first (only
        possible without `replace`), in which case ours is discarded.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        n, k = layout.n_rows, layout.dim
        # mode "w+" makes zero-filled (sparse) files; rows stay zero until written and done.
        specs = [("features", layout.dtype.value, (n, k)), ("done", "bool", (n,)), ("bad", "bool", (n,))]
        specs += [(name, dtype.value, (n,)) for name, dtype in layout.extras.items()]
        for name, dtype, shape in specs:
            array = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            if name in layout.extras and layout.extras[name] is ExtraDtype.FLOAT32:
                array[:] = np.nan  # unwritten values read as missing, not as a plausible 0.0
            array.flush()
            del array  # unmaps the file
        write_json_atomic(tmp / METADATA, metadata)
        fsync_dir(tmp)
        if replace and path.exists():
            # Move the old store aside first: a kill now leaves no store at `path`, never a mixed one.
            trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, trash / "store")
            os.rename(tmp, path)
            shutil.rmtree(trash)
        else:
            try:
                # rename(2) replaces an empty directory but fails on a non-empty one: the race-loser check.
                os.rename(tmp, path)
            except OSError:
                if not (path / METADATA).is_file():
                    raise
                shutil.rmtree(tmp)
                return False
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _read_metadata(path: Path, any_version: bool = False) -> dict[str, Any]:
    """Read and check `path/metadata.json`; refuse directories that are not feature stores.

    Args:
        path: Store directory.
        any_version: Only check that `path` is a feature store, of whatever format version.
    """
    meta_path = path / METADATA
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} exists but is not a readable feature store ({e}); it is never deleted automatically: "
            "remove it yourself or choose another path"
        ) from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} exists but is not a feature store ({meta_path} lacks format {FORMAT!r}); it is never "
            "deleted automatically: remove it yourself or choose another path"
        )
    if any_version:
        return metadata
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"feature store {path} has format version {metadata.get('format_version')!r}; this gradsift reads "
            f"version {FORMAT_VERSION}. Pass overwrite=True (CLI: --overwrite) to rebuild it."
        )
    missing = [key for key in _COMPARED if key not in metadata]
    if missing:
        raise ValueError(f"feature store {path} is damaged: {meta_path} lacks {missing}")
    return metadata


def _json_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as they will read back from metadata.json, so a reopen compares like with like."""
    if not isinstance(settings, Mapping):
        raise ValueError(f"settings must be a dict, got {type(settings).__name__}")
    try:
        text = json.dumps(dict(settings), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"settings must be JSON-serialisable with finite numbers (pass dataclasses as dicts): {e}"
        ) from e
    return json.loads(text)


def _check_same(path: Path, stored: dict[str, Any], requested: dict[str, Any]) -> None:
    """Refuse to reuse a store whose layout or settings differ from the requested ones."""
    old = {key: stored[key] for key in _COMPARED}
    check_same_settings(
        f"feature store {path}", old, requested, what="features", elsewhere="choose another output path"
    )


def store_lock(path: str | Path) -> RunLock:
    """The lock of the store at `path`: a file beside it (the store directory itself is replaced atomically), so
    that a second writer fails at once instead of after computing its rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return RunLock(path.parent / f".{path.name}.lock", f"feature store {path}")


def _preview(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"[{shown}{', ...' if len(rows) > limit else ''}] ({len(rows)} rows)"
