"""`gradsift bench`'s config: reading YAML with sizes and overrides, resolving paths, and refusing bad settings
with a clear message."""

from __future__ import annotations

import pytest
import yaml
from benchkit import bench_dict

from gradsift.benchmark.config import BenchConfig, merge_overrides
from gradsift.benchmark.dataspec import DataSpec, Source


def test_from_yaml_resolves_paths_and_merges_a_size(tmp_path):
    d = tmp_path / "configs"
    d.mkdir()
    raw = {
        "out": "../runs/x",
        "results": "../results/x",
        "methods": ["random"],
        "budgets": ["10%"],
        "data": {"pool": {"sources": [{"path": "../data/a.jsonl", "limit": 5}, {"path": "b.jsonl", "name": "bee"}]}},
        "benchmarks": [{"name": "tl", "task": "target-loss", "data": "pool"}],
        "sizes": {"quick": {"budgets": [2], "data": {"pool": {"sources": {"a": {"limit": 2}}}}}},
    }
    (d / "x.yaml").write_text(yaml.safe_dump(raw))
    cfg = BenchConfig.from_yaml(d / "x.yaml", size="quick")
    assert cfg.out == str((tmp_path / "runs" / "x-quick").resolve())
    assert cfg.results == str((tmp_path / "results" / "x-quick").resolve())
    assert cfg.name == "x-quick" and cfg.budgets == ["2"]
    a, b = cfg.data.pool.sources
    assert a.path == str((tmp_path / "data" / "a.jsonl").resolve()) and a.limit == 2 and a.name == "a"
    assert b.path == str((d / "b.jsonl").resolve()) and b.name == "bee"
    plain = BenchConfig.from_yaml(d / "x.yaml", overrides={"methods": ["random", "length"]})
    assert plain.budgets == ["10%"] and plain.data.pool.sources[0].limit == 5
    assert plain.methods == ["random", "length"] and plain.out.endswith("runs/x")
    with pytest.raises(ValueError, match="no size 'gpu'"):
        BenchConfig.from_yaml(d / "x.yaml", size="gpu")


def test_merge_overrides_updates_named_list_items():
    base = {"a": 1, "sources": [{"name": "x", "limit": 1}, {"path": "/d/y.jsonl.gz", "limit": 2}], "l": [1, 2]}
    out = merge_overrides(base, {"sources": {"y": {"limit": 9}}, "l": [3], "b": {"c": 1}})
    assert out == {
        "a": 1,
        "sources": [{"name": "x", "limit": 1}, {"path": "/d/y.jsonl.gz", "limit": 9}],
        "l": [3],
        "b": {"c": 1},
    }
    assert base["sources"][1]["limit"] == 2
    with pytest.raises(ValueError, match="'z'"):
        merge_overrides(base, {"sources": {"z": {"limit": 1}}})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ["random", "bogus"]}, "unknown method 'bogus'"),
        ({"budgets": ["0"]}, "budget count must be >= 1"),
        ({"budgets": []}, "budgets must be a non-empty list"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"baselines": ["full", "oracle"]}, "unknown baseline"),
        ({"baselines": ["original"]}, "before a prepare step"),
        ({"kind": "pair"}, "data.pool.kind is 'sft'"),
        ({"train": {"epochs": 0}}, "epochs must be positive"),
        ({"train": {"out": "x"}}, "the bench sets"),
        ({"train": {"learning_rate": 0.1}}, "unknown field"),
        ({"select": {"pool": "x"}}, "the bench sets"),
        ({"select": {"max_lenght": 64}}, "unknown field"),
        ({"benchmarks": []}, "at least one benchmark"),
        ({"benchmarks": [{"name": "a", "task": "target-loss", "data": "nowhere"}]}, "no data set 'nowhere'"),
        ({"benchmarks": [{"name": "a", "task": "preference", "data": "heldout"}]}, "needs a pair set"),
        ({"benchmarks": [{"name": "a", "task": "nope", "data": "heldout"}]}, "unknown task"),
        ({"benchmarks": [{"name": "a.b", "task": "target-loss", "data": "heldout"}]}, "without '.'"),
        ({"benchmarks": [{"name": "a", "task": "gsm8k", "data": "heldout", "max_new_token": 3}]}, "unknown field"),
        ({"benchmarks": [{"name": "a", "task": "gsm8k", "data": "heldout", "metric": "odd"}]}, "higher_is_better"),
        ({"references": ["random"]}, "two different methods"),
        ({"device": "tpu"}, "device must be"),
        ({"unknown_key": 1}, "unknown field"),
    ],
)
def test_bad_configs_are_refused_with_a_clear_message(tmp_path, demo, change, message):
    raw = bench_dict(tmp_path, demo, "builtin")
    raw.update(change)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        BenchConfig.from_yaml(path)


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must not contain '/'"):
        Source(path="a.jsonl", name="a/b")
    with pytest.raises(ValueError, match="take must be"):
        Source(path="a.jsonl", take="last")
    with pytest.raises(ValueError, match="distinct name"):
        DataSpec(sources=[{"path": "x/a.jsonl"}, {"path": "y/a.jsonl"}])
    with pytest.raises(ValueError, match="applies to sft sets"):
        DataSpec(sources=[{"path": "a.jsonl", "response": "rejected"}], kind="pair")
    with pytest.raises(FileNotFoundError):
        BenchConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        BenchConfig.from_yaml(bad)
