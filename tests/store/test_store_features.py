"""Tests of the on-disk feature store: resume, settings checks, dtypes, bad rows, crashes, concurrency."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _store_worker import BAD_ROW, SETTINGS, features_of, losses_of

from gradsift.store import features as features_module
from gradsift.store.features import FeatureStore, IncompleteStoreError, StoreLayout

WORKER = Path(__file__).with_name("_store_worker.py")
N, K = 24, 6


def _settings(**changes):
    return {"model": {"fingerprint": "abc", "layers": 2}, "lora": {"rank": 8, "targets": ["q", "v"]}, **changes}


def _rows_features(rows, k=K, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((len(rows), k)).astype(np.float32)


def _open(path, settings=None, **kwargs):
    return FeatureStore.open(path, N, K, _settings() if settings is None else settings, **kwargs)


def _fill(store, rows, seed=0):
    rows = np.asarray(rows)
    feats = _rows_features(rows, store.layout.dim, seed)
    store.write_rows(rows, feats, {"loss": rows.astype(np.float32)})
    return feats


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def test_create_reopen_resume(tmp_path):
    path = tmp_path / "ckpt1" / "train"
    store = _open(path)
    assert not store.is_complete()
    np.testing.assert_array_equal(store.missing_rows(), np.arange(N))
    even = np.arange(0, N, 2)
    feats_even = _fill(store, even, seed=1)
    store.close()

    store = _open(path)
    np.testing.assert_array_equal(store.missing_rows(), np.arange(1, N, 2))
    odd = store.missing_rows()
    feats_odd = _fill(store, odd, seed=2)
    assert store.is_complete() and len(store.missing_rows()) == 0

    expected = np.empty((N, K), np.float32)
    expected[even], expected[odd] = feats_even, feats_odd
    block = store.read()
    np.testing.assert_array_equal(block.rows, np.arange(N))
    np.testing.assert_array_equal(block.features, expected)
    assert block.valid.all()
    np.testing.assert_array_equal(block.extras["loss"], np.arange(N, dtype=np.float32))
    store.close()
    # Independent reference: the files themselves, read without the store.
    np.testing.assert_array_equal(np.load(path / "features.npy"), expected)
    assert np.load(path / "done.npy").all()
    assert _siblings(path) == []


def test_metadata_records_layout_settings_and_provenance(tmp_path):
    path = tmp_path / "s"
    _open(path, dtype="float16", command="gradsift features --run r").close()
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["settings"] == _settings()
    assert (meta["n_rows"], meta["dim"], meta["dtype"], meta["extras"]) == (N, K, "float16", {"loss": "float32"})
    assert meta["format"] == "gradsift.feature-store" and meta["gradsift_version"]
    assert meta["command"] == "gradsift features --run r" and meta["created"].endswith("+00:00")
    assert FeatureStore.load(path).settings == _settings()


@pytest.mark.parametrize(
    ("changes", "kwargs", "named"),
    [
        ({"lora": {"rank": 16, "targets": ["q", "v"]}}, {}, ["settings.lora.rank"]),
        ({"seed": 1}, {}, ["settings.seed"]),
        ({}, {"dtype": "float16"}, ["dtype"]),
        ({}, {"extras": ("loss", "margin")}, ["extras.margin"]),
        ({"model": {"fingerprint": "xyz", "layers": 2}, "kind": "pair"}, {}, ["settings.model.fingerprint", "kind"]),
    ],
)
def test_settings_mismatch_refused_then_overwrite(tmp_path, changes, kwargs, named):
    path = tmp_path / "s"
    store = _open(path)
    _fill(store, [0, 1, 2])
    store.close()

    with pytest.raises(ValueError, match="different settings") as info:
        _open(path, settings=_settings(**changes), **kwargs)
    for key in named:
        assert key in str(info.value)
    assert "overwrite=True" in str(info.value) and "--overwrite" in str(info.value)
    # The refused store is untouched.
    assert len(FeatureStore.load(path).missing_rows()) == N - 3

    store = _open(path, settings=_settings(**changes), overwrite=True, **kwargs)
    assert len(store.missing_rows()) == N
    assert store.settings == _settings(**changes)
    store.close()
    assert _siblings(path) == []


def test_layout_mismatch_refused(tmp_path):
    _open(tmp_path / "s").close()
    with pytest.raises(ValueError, match=r"n_rows \(24 -> 25\)"):
        FeatureStore.open(tmp_path / "s", N + 1, K, _settings())
    with pytest.raises(ValueError, match=r"dim \(6 -> 7\)"):
        FeatureStore.open(tmp_path / "s", N, K + 1, _settings())


def test_settings_compared_as_json(tmp_path):
    # Tuples are stored as JSON lists: reopening with the same tuple must match.
    settings = _settings(targets=("q", "v"), flag=True)
    _open(tmp_path / "s", settings=settings).close()
    _open(tmp_path / "s", settings=settings).close()
    with pytest.raises(ValueError, match="settings.flag"):
        _open(tmp_path / "s", settings=_settings(targets=("q", "v"), flag=1))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"path": Path("/x")}, "JSON-serialisable"),
        ({"lr": float("nan")}, "JSON-serialisable"),
        (["not", "a", "dict"], "must be a dict"),
    ],
)
def test_bad_settings_refused(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match):
        FeatureStore.open(tmp_path / "s", N, K, settings)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_rows": 0}, "n_rows must be a positive integer"),
        ({"dim": -1}, "dim must be a positive integer"),
        ({"dim": 2.0}, "dim must be a positive integer"),
        ({"dtype": "bfloat16"}, "feature dtype must be one of"),
        ({"extras": ("done",)}, "extra name 'done'"),
        ({"extras": ("Loss",)}, "extra name 'Loss'"),
        ({"extras": "loss"}, "got the string 'loss'"),
        ({"extras": {"tokens": "int8"}}, "extra 'tokens': dtype must be one of"),
    ],
)
def test_bad_layout_refused(tmp_path, kwargs, match):
    args = {"path": tmp_path / "s", "n_rows": N, "dim": K, "settings": {}} | kwargs
    with pytest.raises(ValueError, match=match):
        FeatureStore.open(**args)
    assert not (tmp_path / "s").exists()


def test_layout_dataclass_validates():
    with pytest.raises(ValueError, match="n_rows"):
        StoreLayout(n_rows=True, dim=3)
    assert StoreLayout(n_rows=np.int64(3), dim=2, extras={"ok": "bool"}).as_dict() == {
        "n_rows": 3,
        "dim": 2,
        "dtype": "float32",
        "extras": {"ok": "bool"},
    }


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_dtypes_round_trip(tmp_path, dtype):
    store = _open(tmp_path / "s", dtype=dtype)
    feats = _fill(store, np.arange(N))
    block = store.read()
    assert block.features.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(block.features, feats.astype(dtype))
    assert np.load(tmp_path / "s" / "features.npy").dtype == np.dtype(dtype)
    assert len(store.bad_rows()) == 0


def test_float16_overflow_is_a_bad_row(tmp_path):
    # 1e5 is finite in float32 but beyond float16's range (65504): it would be stored as inf.
    feats = np.ones((2, K), np.float32)
    feats[1, 0] = 1e5
    half = _open(tmp_path / "half", dtype="float16")
    np.testing.assert_array_equal(half.write_rows([0, 1], feats, {"loss": [0.0, 0.0]}), [1])
    full = _open(tmp_path / "full", dtype="float32")
    assert len(full.write_rows([0, 1], feats, {"loss": [0.0, 0.0]})) == 0


def test_extras_of_both_dtypes(tmp_path):
    store = FeatureStore.open(tmp_path / "s", 4, 2, {}, extras={"loss": "float32", "truncated": "bool"})
    store.write_rows([2, 0], np.zeros((2, 2)), {"loss": np.array([1.5, 2.5]), "truncated": np.array([True, False])})
    block = store.read(allow_partial=True)
    np.testing.assert_array_equal(block.extras["loss"], [2.5, np.nan, 1.5, np.nan])
    np.testing.assert_array_equal(block.extras["truncated"], [False, False, True, False])
    assert block.extras["truncated"].dtype == bool


def test_no_extras(tmp_path):
    store = FeatureStore.open(tmp_path / "s", 3, 2, {}, extras=())
    store.write_rows([0, 1, 2], np.eye(3, 2))
    assert store.read().extras == {}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "bad.npy",
        "done.npy",
        "features.npy",
        "metadata.json",
    ]


@pytest.mark.parametrize("chunk_rows", [1, 5, 7, N, N + 10])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_iter_chunks_equals_full_read(tmp_path, chunk_rows, dtype):
    store = _open(tmp_path / "s", dtype=dtype)
    feats = np.arange(N * K, dtype=np.float32).reshape(N, K)
    feats[3] = np.inf
    store.write_rows(np.arange(N), feats, {"loss": np.arange(N)})
    full = store.read()
    chunks = list(store.iter_chunks(chunk_rows))
    assert all(len(c.rows) <= chunk_rows for c in chunks)
    assert [int(c.rows[0]) for c in chunks] == list(range(0, N, chunk_rows))
    np.testing.assert_array_equal(np.concatenate([c.rows for c in chunks]), full.rows)
    np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), full.features)
    np.testing.assert_array_equal(np.concatenate([c.valid for c in chunks]), full.valid)
    np.testing.assert_array_equal(np.concatenate([c.extras["loss"] for c in chunks]), full.extras["loss"])
    assert not full.valid[3] and full.valid.sum() == N - 1


def test_read_selected_rows(tmp_path):
    store = _open(tmp_path / "s")
    feats = _fill(store, np.arange(N))
    block = store.read([5, 0, 5])
    np.testing.assert_array_equal(block.rows, [5, 0, 5])
    np.testing.assert_array_equal(block.features, feats[[5, 0, 5]])
    assert store.read([]).features.shape == (0, K)


@pytest.mark.parametrize("rows", [[N], [-1], [0.5], [[0, 1]], [True]])
def test_read_bad_rows_refused(tmp_path, rows):
    store = _open(tmp_path / "s")
    _fill(store, np.arange(N))
    with pytest.raises(ValueError, match="read: rows"):
        store.read(rows)


def test_incomplete_read_refused(tmp_path):
    store = _open(tmp_path / "s", command="gradsift features --run runs/a")
    feats = _fill(store, [0, 2])
    with pytest.raises(IncompleteStoreError, match=f"{N - 2} of {N} rows missing") as info:
        store.read()
    assert "gradsift features --run runs/a" in str(info.value) and "allow_partial=True" in str(info.value)
    with pytest.raises(IncompleteStoreError):
        store.iter_chunks(4)  # refused before the first chunk, not lazily
    with pytest.raises(IncompleteStoreError):
        store.read([0])

    block = store.read(allow_partial=True)
    np.testing.assert_array_equal(np.flatnonzero(block.valid), [0, 2])
    np.testing.assert_array_equal(block.features[[0, 2]], feats)
    assert np.isnan(block.features[~block.valid]).all()
    assert sum(c.valid.sum() for c in store.iter_chunks(5, allow_partial=True)) == 2


def test_incomplete_read_without_command_says_how_to_resume(tmp_path):
    store = _open(tmp_path / "s")
    with pytest.raises(IncompleteStoreError, match="same settings and without --overwrite"):
        store.read()


def test_nan_rows_recorded_and_excluded(tmp_path):
    path = tmp_path / "s"
    store = _open(path)
    feats = _rows_features(np.arange(N))
    feats[4, 2] = np.nan
    feats[9, 0] = -np.inf
    bad = store.write_rows(np.arange(N)[::-1], feats[::-1], {"loss": np.zeros(N)})
    np.testing.assert_array_equal(bad, [9, 4])
    np.testing.assert_array_equal(store.bad_rows(), [4, 9])
    store.close()

    store = FeatureStore.load(path)
    np.testing.assert_array_equal(store.bad_rows(), [4, 9])
    block = store.read()
    np.testing.assert_array_equal(np.flatnonzero(~block.valid), [4, 9])
    assert np.isnan(block.features[[4, 9]]).all()
    np.testing.assert_array_equal(block.features[block.valid], np.delete(feats, [4, 9], axis=0))
    # The file keeps what was computed, for diagnosis.
    assert np.isneginf(np.load(path / "features.npy")[9, 0])


def test_bad_rows_logged(tmp_path, caplog):
    store = _open(tmp_path / "s")
    feats = _rows_features([0, 1])
    feats[1] = np.nan
    store.write_rows([0, 1], feats, {"loss": [0, 0]})
    assert "1 rows with non-finite features: [1]" in caplog.text


@pytest.mark.parametrize(
    ("rows", "features", "extras", "match"),
    [
        ([0, 0], np.zeros((2, K)), {"loss": [0, 0]}, "duplicates"),
        ([0, N], np.zeros((2, K)), {"loss": [0, 0]}, "out of range"),
        ([-1], np.zeros((1, K)), {"loss": [0]}, "out of range"),
        ([0.0, 1.0], np.zeros((2, K)), {"loss": [0, 0]}, "integer indices"),
        ([0, 1], np.zeros((2, K + 1)), {"loss": [0, 0]}, r"shape \[2, 6\]"),
        ([0, 1], np.zeros((1, K)), {"loss": [0, 0]}, r"shape \[2, 6\]"),
        ([0, 1], np.full((2, K), "x"), {"loss": [0, 0]}, "real numbers"),
        ([0, 1], np.zeros((2, K)), {}, r"missing \['loss'\]"),
        ([0, 1], np.zeros((2, K)), {"loss": [0, 0], "x": [0, 0]}, r"unknown \['x'\]"),
        ([0, 1], np.zeros((2, K)), {"loss": [0]}, r"extra 'loss' must have shape \[2\]"),
        ([0, 1], np.zeros((2, K)), {"loss": ["a", "b"]}, "extra 'loss' must be real numbers"),
        ([2, N - 1], np.zeros((2, K)), {"loss": [0, 0]}, r"already done: \[23\]"),
    ],
)
def test_write_rows_bad_input_writes_nothing(tmp_path, rows, features, extras, match):
    store = _open(tmp_path / "s")
    _fill(store, [N - 1])
    before = np.load(tmp_path / "s" / "features.npy")
    with pytest.raises(ValueError, match=match):
        store.write_rows(rows, features, extras)
    np.testing.assert_array_equal(store.missing_rows(), np.arange(N - 1))
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "features.npy"), before)


def test_bool_extra_requires_bool(tmp_path):
    store = FeatureStore.open(tmp_path / "s", 2, 2, {}, extras={"flag": "bool"})
    with pytest.raises(ValueError, match="extra 'flag' is bool"):
        store.write_rows([0], np.zeros((1, 2)), {"flag": [0.5]})


def test_read_only_store_refuses_writes(tmp_path):
    _open(tmp_path / "s").close()
    store = FeatureStore.load(tmp_path / "s")
    with pytest.raises(ValueError, match="read-only"):
        _fill(store, [0])


def test_missing_rows_shards_are_disjoint_and_stable(tmp_path):
    store = _open(tmp_path / "s")
    shards = [store.missing_rows(rank, 3) for rank in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(N))
    # Another rank's progress does not move this rank's share.
    _fill(store, shards[0][:4])
    np.testing.assert_array_equal(store.missing_rows(1, 3), shards[1])
    np.testing.assert_array_equal(store.missing_rows(0, 3), shards[0][4:])
    for rank, world in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError, match="rank"):
            store.missing_rows(rank, world)


def test_chunk_rows_validated(tmp_path):
    store = _open(tmp_path / "s")
    _fill(store, np.arange(N))
    for bad in [0, -3, 2.0, True]:
        with pytest.raises(ValueError, match="chunk_rows"):
            store.iter_chunks(bad)


class _Killed(BaseException):
    """A kill, as far as the store can tell: not an Exception any handler would swallow."""


class _DoneMaskCrash:
    """Stands in for the done-mask memmap and 'crashes' when the done flags are set."""

    def __init__(self, done):
        self.done = done

    def __getitem__(self, index):
        return self.done[index]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.done)

    def __setitem__(self, index, value):
        raise _Killed("between flushing the rows and marking them done")


def test_crash_between_rows_and_done_leaves_rows_missing(tmp_path):
    path = tmp_path / "s"
    store = _open(path)
    _fill(store, [0, 1], seed=1)
    store._done = _DoneMaskCrash(store._done)
    with pytest.raises(_Killed):
        _fill(store, [2, 3], seed=2)
    del store

    store = _open(path)
    np.testing.assert_array_equal(store.missing_rows(), np.arange(2, N))
    # The rows did reach the file; being not done, they are recomputed and overwritten, never read.
    assert np.load(path / "features.npy")[[2, 3]].any()
    with pytest.raises(IncompleteStoreError):
        store.read()
    feats = _fill(store, store.missing_rows(), seed=3)
    np.testing.assert_array_equal(store.read().features[2:], feats)


def test_creation_failure_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(features_module, "write_json_atomic", fail)
    with pytest.raises(OSError, match="disk full"):
        _open(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_leftover_temporary_directory_is_not_a_store(tmp_path):
    # What a kill during creation leaves behind: a hidden sibling, never the store path itself.
    leftover = tmp_path / ".s.tmp-abc"
    leftover.mkdir()
    (leftover / "features.npy").write_bytes(b"partial")
    with pytest.raises(FileNotFoundError):
        FeatureStore.load(tmp_path / "s")
    store = _open(tmp_path / "s")
    assert len(store.missing_rows()) == N


def test_lost_creation_race_uses_the_winner(tmp_path):
    path = tmp_path / "s"
    layout = StoreLayout(n_rows=N, dim=K)
    winner = _open(path)
    _fill(winner, [0])
    assert features_module._create(path, layout, {"format": "other"}, replace=False) is False
    assert _siblings(path) == []
    assert FeatureStore.load(path).metadata["format"] == "gradsift.feature-store"


def test_empty_directory_becomes_a_store(tmp_path):
    (tmp_path / "s").mkdir()
    store = _open(tmp_path / "s")
    assert len(store.missing_rows()) == N


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_directory_never_deleted(tmp_path, overwrite):
    path = tmp_path / "run"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a readable feature store"):
        _open(path, overwrite=overwrite)
    (path / "metadata.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="is not a feature store"):
        _open(path, overwrite=overwrite)
    assert (path / "notes.txt").read_text() == "mine"


def test_other_format_version_needs_overwrite(tmp_path):
    path = tmp_path / "s"
    _open(path).close()
    meta = json.loads((path / "metadata.json").read_text())
    (path / "metadata.json").write_text(json.dumps(meta | {"format_version": 99}))
    with pytest.raises(ValueError, match="format version 99.*overwrite=True"):
        _open(path)
    _open(path, overwrite=True).close()
    assert json.loads((path / "metadata.json").read_text())["format_version"] == 1


@pytest.mark.parametrize("damage", ["shape", "missing"])
def test_damaged_store_refused(tmp_path, damage):
    path = tmp_path / "s"
    _open(path).close()
    if damage == "shape":
        np.save(path / "done.npy", np.zeros(N - 1, bool))
        match = r"holds bool \[23\], metadata says bool \[24\]"
    else:
        (path / "loss.npy").unlink()
        match = "loss.npy is missing"
    with pytest.raises(ValueError, match=match):
        FeatureStore.load(path)
    with pytest.raises(ValueError, match=match):
        _open(path)


def test_load_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore.load(tmp_path / "nope")


def test_context_manager_flushes_and_closes(tmp_path):
    with _open(tmp_path / "s") as store:
        _fill(store, np.arange(N))
    with pytest.raises(AttributeError):
        store.read()
    assert FeatureStore.load(tmp_path / "s").is_complete()


# --- separate processes: SIGKILL mid-run and concurrent writers ---------------------------------------


def _worker(path, n, dim, batch, delay, rank=0, world=1, dtype="float16", go=None):
    args = [sys.executable, str(WORKER), str(path), str(n), str(dim), dtype, str(batch), str(delay), str(rank)]
    args += [str(world)] + ([str(go)] if go else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [int(r) for line in out.split() for r in line.split()]


def _expected(n, dim, dtype):
    feats = features_of(np.arange(n), dim).astype(dtype)
    feats[BAD_ROW] = np.nan  # reads return invalid rows as NaN
    return feats


def test_sigkill_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    n, dim = 120, 8
    reference = tmp_path / "reference"
    assert sorted(_finish(_worker(reference, n, dim, batch=3, delay=0))) == list(range(n))

    path = tmp_path / "killed"
    rng = np.random.default_rng(0)
    done_so_far: set[int] = set()
    for _ in range(2):
        proc = _worker(path, n, dim, batch=3, delay=0.05)
        printed = []
        while len(printed) < 9:  # three batches reported done by this process
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            printed += [int(r) for r in line.split()]
        time.sleep(rng.uniform(0, 0.03))  # land anywhere, also inside write_rows
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL

        store = FeatureStore.load(path)
        done = set(range(n)) - set(store.missing_rows().tolist())
        assert not store.is_complete() and set(printed) <= done and done_so_far < done
        # Every row marked done is exactly the uninterrupted result: nothing half-written.
        block = store.read(sorted(done), allow_partial=True)
        np.testing.assert_array_equal(block.features, _expected(n, dim, "float16")[sorted(done)])
        np.testing.assert_array_equal(block.valid, np.array(sorted(done)) != BAD_ROW)
        done_so_far = done
        store.close()

    missing = sorted(set(range(n)) - done_so_far)
    rerun_rows = _finish(_worker(path, n, dim, batch=3, delay=0))
    assert rerun_rows == missing  # the rerun computes exactly the missing rows, each once

    got, want = FeatureStore.load(path), FeatureStore.load(reference)
    a, b = got.read(), want.read()
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.extras["loss"], b.extras["loss"])
    np.testing.assert_array_equal(got.bad_rows(), [BAD_ROW])
    np.testing.assert_array_equal(a.features, _expected(n, dim, "float16"))
    np.testing.assert_array_equal(a.extras["loss"], losses_of(np.arange(n)))
    assert _siblings(path) == ["reference"]


def _start_together(procs, path, go, timeout=30):
    deadline = time.monotonic() + timeout
    while not all(Path(f"{path}-ready-{rank}").exists() for rank in range(len(procs))):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()


@pytest.mark.parametrize("create_first", [True, False])
def test_two_processes_write_interleaved_rows_concurrently(tmp_path, create_first):
    # create_first=False: both processes also race to create the store; one rename wins.
    n, dim = 300, 4
    path, go = tmp_path / "shared", tmp_path / "go"
    if create_first:
        FeatureStore.open(path, n, dim, SETTINGS, dtype="float32", extras=("loss",)).close()
    # One row per batch: the two processes keep writing neighbouring bytes of the same pages.
    procs = [_worker(path, n, dim, batch=1, delay=0, rank=rank, world=2, dtype="float32", go=go) for rank in (0, 1)]
    _start_together(procs, path, go)
    written = [_finish(p) for p in procs]
    assert written[0] == list(range(0, n, 2)) and written[1] == list(range(1, n, 2))

    store = FeatureStore.load(path)
    assert store.is_complete()
    block = store.read()
    np.testing.assert_array_equal(block.features, _expected(n, dim, "float32"))
    np.testing.assert_array_equal(block.extras["loss"], losses_of(np.arange(n)))
    np.testing.assert_array_equal(store.bad_rows(), [BAD_ROW])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "shared", "shared-ready-0", "shared-ready-1"]
