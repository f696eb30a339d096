"""LESS scores on hand-built features, variants, bad rows, float16 memmaps and a memory bound at pool scale."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from gradsift.score.less import Aggregation, less_scores

E = np.eye(4)
R = 1 / np.sqrt(2)


def hand_built():
    """Two checkpoints, 5 candidates, 3 orthogonal targets: t0, t1 in task "a", t2 in task "b".

    Cosines per checkpoint (rows: candidates, columns: t0 t1 t2):
      checkpoint 1 (weight 2): c0=2e0 -> [1,0,0]; c1=e2 -> [0,0,1]; c2=e0+e1 -> [r,r,0]; c3=e3 -> 0; c4=-e0 -> [-1,0,0]
      checkpoint 2 (weight 1): same, except c0=e2 -> [0,0,1]
    Summed A = 2*cos1 + cos2:
      c0 [2,0,1]; c1 [0,0,3]; c2 [3r,3r,0]; c3 [0,0,0]; c4 [-3,0,0]
    """
    ck1 = np.stack([2 * E[0], E[2], E[0] + E[1], E[3], -E[0]])
    ck2 = ck1.copy()
    ck2[0] = E[2]
    targets = E[:3]
    return [ck1, ck2], [targets, targets], ["a", "a", "b"], [2.0, 1.0]


def test_task_max_by_hand():
    cands, targets, tasks, weights = hand_built()
    out = less_scores(cands, targets, tasks, weights)
    # Task means [a, b]: c0 [1, 1]; c1 [0, 3]; c2 [3r, 0]; c3 [0, 0]; c4 [-1.5, 0].
    np.testing.assert_allclose(out.task_scores, [[1, 1], [0, 3], [3 * R, 0], [0, 0], [-1.5, 0]], atol=1e-6)
    # Max over tasks after summing checkpoints (LESS's order): c0 gets 1, not 2*0.5 + 1*1 = 2.
    np.testing.assert_allclose(out.scores, [1, 3, 3 * R, 0, 0], atol=1e-6)
    assert out.tasks == ["a", "b"]
    assert not out.bad.any() and out.bad_rows.tolist() == []


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("instance-max", [2, 3, 3 * R, 0, 0]), ("sum", [3, 3, 6 * R, 0, -3])],
)
def test_variants_by_hand(aggregation, expected):
    cands, targets, tasks, weights = hand_built()
    out = less_scores(cands, targets, tasks, weights, aggregation=aggregation)
    np.testing.assert_allclose(out.scores, expected, atol=1e-6)
    np.testing.assert_allclose(out.task_scores[1], [0, 3], atol=1e-6)


def test_weights_scale_but_do_not_reorder():
    cands, targets, tasks, _ = hand_built()
    one = less_scores(cands, targets, tasks, [2.0, 1.0])
    small = less_scores(cands, targets, tasks, [2e-5, 1e-5])
    np.testing.assert_allclose(small.scores, one.scores * 1e-5, rtol=1e-5, atol=1e-12)


def test_no_task_labels_is_one_task():
    cands, targets, _, weights = hand_built()
    out = less_scores(cands, targets, None, weights)
    assert out.tasks == ["all"]
    np.testing.assert_allclose(out.scores, np.array([3, 3, 6 * R, 0, -3]) / 3, atol=1e-6)


def test_bad_rows_score_minus_inf_and_are_reported():
    cands, targets, tasks, weights = hand_built()
    cands[1] = cands[1].copy()
    cands[1][3, 0] = np.nan
    bad = np.zeros(5, dtype=bool)
    bad[0] = True
    out = less_scores(cands, targets, tasks, weights, bad=bad)
    assert out.bad_rows.tolist() == [0, 3]
    assert np.isneginf(out.scores[[0, 3]]).all() and np.isneginf(out.task_scores[[0, 3]]).all()
    np.testing.assert_allclose(out.scores[[1, 2, 4]], [3, 3 * R, 0], atol=1e-6)


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_chunked_matches_unchunked_and_dense(aggregation):
    rng = np.random.default_rng(0)
    cands = [rng.standard_normal((37, 8)) for _ in range(2)]
    targets = [rng.standard_normal((9, 8)) for _ in range(2)]
    tasks = ["x", "y", "z"] * 3
    weights = [1.5, 0.5]
    whole = less_scores(cands, targets, tasks, weights, aggregation, chunk_rows=37)
    for rows in (1, 4, 10):
        part = less_scores(cands, targets, tasks, weights, aggregation, chunk_rows=rows)
        np.testing.assert_allclose(part.scores, whole.scores, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(part.task_scores, whole.task_scores, rtol=1e-6, atol=1e-6)
    unit = [c / np.linalg.norm(c, axis=1, keepdims=True) for c in cands]
    unit_t = [t / np.linalg.norm(t, axis=1, keepdims=True) for t in targets]
    a = sum(w * c @ t.T for w, c, t in zip(weights, unit, unit_t, strict=True))
    per_task = np.stack([a[:, [j for j in range(9) if tasks[j] == name]].mean(axis=1) for name in "xyz"], axis=1)
    reference = {"task-max": per_task.max(axis=1), "instance-max": a.max(axis=1), "sum": a.sum(axis=1)}
    np.testing.assert_allclose(whole.scores, reference[aggregation], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(whole.task_scores, per_task, rtol=1e-5, atol=1e-5)


def test_float16_memmap_matches_in_memory(tmp_path):
    cands, targets, tasks, weights = hand_built()
    maps = []
    for i, c in enumerate(cands):
        mm = np.lib.format.open_memmap(tmp_path / f"ck{i}.npy", mode="w+", dtype=np.float16, shape=c.shape)
        mm[:] = c
        mm.flush()
        maps.append(np.load(tmp_path / f"ck{i}.npy", mmap_mode="r"))
    from_maps = less_scores(maps, targets, tasks, weights, chunk_rows=2)
    np.testing.assert_allclose(from_maps.scores, less_scores(cands, targets, tasks, weights).scores, atol=1e-6)


def test_bad_inputs():
    cands, targets, tasks, weights = hand_built()
    with pytest.raises(ValueError, match="'best'"):
        less_scores(cands, targets, tasks, weights, aggregation="best")
    with pytest.raises(ValueError, match="2 target task labels for 3"):
        less_scores(cands, targets, ["a", "b"], weights)
    with pytest.raises(ValueError, match="non-finite"):
        less_scores(cands, [targets[0], np.full((3, 4), np.nan)], tasks, weights)


# Scores 200,000 x 512 float16 candidates (a memmap) against 1,000 targets in a fresh interpreter and reports
# its peak RSS before and after. The dense N x M float32 matrix alone would be 800 MB. VmHWM, not
# getrusage: a child's ru_maxrss starts from its parent's RSS at fork (pytest with torch loaded).
SCRIPT = """
import json, re, sys, time
import numpy as np
from gradsift.score.less import less_scores

def peak_kb():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1))

cand = np.load(sys.argv[1], mmap_mode="r")
rng = np.random.default_rng(1)
targets = rng.standard_normal((1000, 512)).astype(np.float16)
tasks = [f"t{j % 4}" for j in range(1000)]
before = peak_kb()
start = time.perf_counter()
out = less_scores([cand], [targets], tasks, [1.0])
seconds = time.perf_counter() - start
after = peak_kb()
print(json.dumps({"before_kb": before, "after_kb": after, "seconds": seconds,
                  "finite": int(np.isfinite(out.scores).sum()), "bad": out.bad_rows.tolist()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status")
def test_pool_scale_memory(tmp_path):
    n, k = 200_000, 512
    path = tmp_path / "cand.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, k))
    rng = np.random.default_rng(0)
    for start in range(0, n, 20_000):
        mm[start : start + 20_000] = rng.standard_normal((20_000, k), dtype=np.float32)
    mm[123_456, 7] = np.nan
    mm.flush()
    del mm
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout)
    growth_mb = (report["after_kb"] - report["before_kb"]) / 1024
    assert report["bad"] == [123_456] and report["finite"] == n - 1
    assert report["after_kb"] / 1024 < 2048, report
    # Reading the 200 MB memmap counts towards RSS; blocks add ~64 MB. The dense matrix would add 800 MB.
    assert growth_mb < 600, report
    print(f"scored in {report['seconds']:.1f} s (test {time.perf_counter() - started:.1f} s), RSS +{growth_mb:.0f} MB")
