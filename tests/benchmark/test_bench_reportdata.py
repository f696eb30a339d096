"""A bench run as report data: the task shares, Jaccard overlaps and expected random overlap the report shows,
against direct counts; the pool records as the report shows them."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from gradsift.benchmark.reportdata import pool_item, selection_summary, write_run_md
from gradsift.data.records import Example, MCItem, Pair
from gradsift.report.data import MethodSelection, PoolItem


def pool_and_selections(n_pool: int = 40) -> tuple[list[PoolItem], list[MethodSelection]]:
    rng = np.random.default_rng(0)
    tasks = ["gsm8k", "alpaca", "strategyqa", None]
    pool = [PoolItem(id=f"p{i}", task=tasks[i % 4], prompt=f"question {i}", response=f"a {i}") for i in range(n_pool)]
    pool[3] = PoolItem(id="p3", task="alpaca", prompt="q", response="a")
    score_a = rng.normal(size=n_pool)
    score_a[5] = np.nan
    sel_a = [int(i) for i in np.argsort(-np.nan_to_num(score_a, nan=-9))[:8]]
    selections = [
        MethodSelection("less", 8, 0, sel_a, score_a),
        MethodSelection("length", 8, 0, list(range(n_pool - 8, n_pool))[::-1], np.arange(n_pool, dtype=float)),
        MethodSelection("random", 8, 0, list(range(0, 16, 2)), rng.random(n_pool)),
    ]
    return pool, selections


def test_task_shares_and_jaccard_against_direct_counts():
    pool, selections = pool_and_selections()
    task_shares, overlap = selection_summary(pool, selections)
    tasks, shares = task_shares.tasks, task_shares.shares
    labels = [p.task or "(none)" for p in pool]
    assert set(tasks) == set(labels)
    assert tasks == [t for t, _ in Counter(labels).most_common()]
    assert list(shares) == ["pool", "less", "length", "random"]
    for s in selections:
        for t in tasks:
            assert shares[s.method][t] == pytest.approx(sum(labels[i] == t for i in s.rows) / len(s.rows))
    assert sum(shares["pool"].values()) == pytest.approx(1.0)
    names, mat = overlap.methods, overlap.jaccard
    assert names == [s.method for s in selections]
    for i, a in enumerate(selections):
        for j, b in enumerate(selections):
            sa, sb = set(a.rows), set(b.rows)
            assert mat[i, j] == pytest.approx(len(sa & sb) / len(sa | sb))
    # expected overlap of two uniform 8-of-40 selections, from the hypergeometric mean 8 * 8 / 40
    assert overlap.expected_random == pytest.approx(1.6 / (16 - 1.6))


def test_without_selections_only_the_pool_has_shares():
    pool, _ = pool_and_selections()
    task_shares, overlap = selection_summary(pool, [])
    assert list(task_shares.shares) == ["pool"]
    assert overlap.methods == [] and overlap.jaccard.shape == (0, 0) and overlap.expected_random is None


def test_pool_items_show_the_last_user_turn_and_the_response():
    example = Example(
        id="e",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "answer"},
        ],
        task="t",
    )
    assert pool_item(example) == PoolItem("e", "t", "second", "answer")
    pair = Pair(id="p", prompt=[{"role": "user", "content": "q"}], chosen="good", rejected="bad")
    assert pool_item(pair) == PoolItem("p", None, "q", "chosen: good\nrejected: bad")
    assert pool_item(MCItem("m", "q?", ["a", "b"], "B")) == PoolItem("m", None, "q?", "b")


def test_run_md_counts_every_sitting_and_marks_a_stopped_one(tmp_path):
    data = SimpleNamespace(machine={"cpus": 2}, title="t", lr_search=None, prepare={})
    sittings = [
        {"start": "a", "end": "b", "wall_s": 600.0, "cpu_s": 1200.0, "workers": 1, "stopped": True, "note": "by hand"},
        {"start": "c", "end": "d", "wall_s": 60.0, "cpu_s": 120.0, "workers": 1},
    ]
    write_run_md(tmp_path / "RUN.md", data, sittings)  # type: ignore[arg-type]
    text = (tmp_path / "RUN.md").read_text()
    assert "Wall time 11.0 min, CPU time 22.0 min" in text and "(2 sitting(s))" in text
    assert "| a | b (stopped) (by hand) | 10.0 | 20.0 | 1 |" in text and "| c | d | 1.0 | 2.0 | 1 |" in text


def test_run_md_keeps_the_notes_written_into_it(tmp_path):
    data = SimpleNamespace(machine={"cpus": 2}, title="t", lr_search=None, prepare={})
    path = tmp_path / "RUN.md"
    write_run_md(path, data, [{"start": "a", "end": "b", "wall_s": 60.0, "cpu_s": 60.0, "workers": 1}])  # type: ignore[arg-type]
    notes = "<!-- notes -->\n**Partial grid.** Two sittings ran by hand.\n<!-- /notes -->"
    path.write_text(path.read_text().replace("- Command", notes + "\n\n- Command", 1) + "stray edit\n")
    write_run_md(path, data, [{"start": "c", "end": "d", "wall_s": 60.0, "cpu_s": 60.0, "workers": 1}])  # type: ignore[arg-type]
    text = path.read_text()
    assert text.count(notes) == 1 and text.index(notes) < text.index("- Command")
    assert "| c | d |" in text and "| a | b |" not in text and "stray edit" not in text
