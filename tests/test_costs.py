"""gradsift.costs: a reused cache entry charges what it cost, once, and never to the job that computed it."""

import json
import time

import pytest

from gradsift import costs


def _compute(entry, seconds=0.02):
    with costs.computing(entry):
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:  # CPU work, so cpu_s is above 0 too
            pass
        entry.write_text("x")


def test_reuse_charges_the_recorded_cost_once_and_not_to_its_maker(tmp_path):
    entry = tmp_path / "warmup-abc"
    with costs.job("maker"):
        _compute(entry)
        costs.reuse(entry)  # the maker reads its own entry (a resumed run): already in its spending
        assert costs.charged()["wall_s"] == 0
    record = json.loads(costs.cost_path(entry).read_text())
    assert costs.cost_path(entry) == tmp_path / ".costs" / "warmup-abc.json"
    assert record["job"] == "maker" and record["wall_s"] >= 0.02 and record["cpu_s"] > 0
    with costs.job("reader"):
        costs.reuse(entry)
        costs.reuse(entry)  # read twice by one job: charged once
        got = costs.charged()
    assert got == {"wall_s": record["wall_s"], "cpu_s": record["cpu_s"], "entries": [str(entry)]}
    with costs.job("next"):  # every job starts at zero
        assert costs.charged() == {"wall_s": 0.0, "cpu_s": 0.0, "entries": []}


def test_an_entry_without_a_record_or_a_failed_computation_charges_nothing(tmp_path):
    old = tmp_path / "made-before-records.npz"
    old.write_text("x")
    failed = tmp_path / "failed"
    with costs.job("reader"):
        costs.reuse(old)
        with pytest.raises(RuntimeError), costs.computing(failed):
            raise RuntimeError("killed")
        assert not costs.cost_path(failed).exists()
        costs.reuse(failed)
        assert costs.charged()["entries"] == []
