"""`gradsift bench`'s config: reading YAML with sizes and overrides, resolving paths, and refusing bad settings
with a clear message."""

from __future__ import annotations

import pytest
import yaml
from benchkit import FAST_TRAIN, bench_dict

from gradsift.benchmark.config import BenchConfig, merge_overrides
from gradsift.benchmark.dataspec import DataSpec, Source

NO_LR = {k: v for k, v in FAST_TRAIN.items() if k != "lr"}


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
        ({"train": {"learning_rate": 0.1}}, "train: unknown key 'learning_rate'"),
        ({"select": {"pool": "x"}}, "the bench sets"),
        ({"select": {"max_lenght": 64}}, r"select: unknown key 'max_lenght' \(did you mean 'max_length'\?\)"),
        ({"benchmarks": []}, "at least one benchmark"),
        ({"benchmarks": [{"name": "a", "task": "target-loss", "data": "nowhere"}]}, "no data set 'nowhere'"),
        ({"benchmarks": [{"name": "a", "task": "preference", "data": "heldout"}]}, "needs a pair set"),
        ({"benchmarks": [{"name": "a", "task": "nope", "data": "heldout"}]}, "unknown task"),
        ({"benchmarks": [{"name": "a.b", "task": "target-loss", "data": "heldout"}]}, "without '.'"),
        (
            {"benchmarks": [{"name": "a", "task": "gsm8k", "data": "heldout", "max_new_token": 3}]},
            "did you mean 'max_new_tokens'",
        ),
        ({"benchmarks": [{"name": "a", "task": "gsm8k", "data": "heldout", "metric": "odd"}]}, "higher_is_better"),
        ({"references": ["random"]}, "two different methods"),
        ({"baselines": ["full-epoch"], "train": {"lr": 1e-3}}, "only when train.max_steps is set"),
        ({"baselines": ["aligned"]}, "after the prepare step 'align'"),
        ({"budgets": ["band"]}, "needs a band method"),
        ({"band_size_of": "irm"}, "applies to the budget 'band'"),
        ({"methods": ["random", "p-u"]}, "unknown method 'p-u'"),
        ({"variants": {"prism": {"method": "prism"}}}, "already a method or baseline name"),
        ({"variants": {"a__b": {"method": "prism"}}}, "without '/', '.' or '__'"),
        ({"variants": {"pu": {"method": "prisms"}}}, "unknown method 'prisms'"),
        (
            {"variants": {"pu": {"method": "prism", "opts": {}}}},
            r"variants.pu: unknown key .opts. \(did you mean .options.\?\)",
        ),
        ({"variants": {"pc": {"method": "prism", "cache": "less"}}}, "runs less, not prism"),
        ({"variants": {"pc": {"method": "prism", "cache": "pc"}}}, "must select with a cache of its own"),
        ({"variants": {"rc": {"method": "random", "cache": "random"}}}, "seeded_methods cannot share"),
        ({"lr_search": {"grid": [1e-4]}, "train": NO_LR}, "at least two learning rates"),
        ({"lr_search": {"grid": [1e-4, -1]}, "train": NO_LR}, "positive numbers"),
        ({"lr_search": {"grid": [1e-4, 1e-3], "benchmark": "nope"}, "train": NO_LR}, "not a benchmark"),
        ({"lr_search": {"grid": [1e-4, 1e-3], "data": "nowhere"}, "train": NO_LR}, "no data set 'nowhere'"),
        ({"lr_search": {"grid": [1e-4, 1e-3]}, "train": {"lr": 1e-3}}, "train.lr is what lr_search chooses"),
        ({"lr_search": {"grid": [1e-4, 1e-3]}, "methods": ["length"], "train": NO_LR}, "add random to methods"),
        ({"select_cache": "none"}, "select_cache must be"),
        ({"workers": 0}, "workers must be a positive integer"),
        ({"bootstrap": 0}, "bootstrap must be a positive integer"),
        (
            {
                "prepare": {
                    "align": {"data": {"sources": [{"path": "a.jsonl"}]}, "until": {"data": "x", "at_least": 0.8}}
                }
            },
            "until.data: no set 'x'",
        ),
        (
            {"prepare": {"align": {"data": {"sources": [{"path": "a.jsonl"}]}, "until": {"data": "x"}}}},
            "exactly one of at_least and at_most",
        ),
        (
            {"prepare": {"align": {"data": {"sources": [{"path": "a.jsonl"}]}, "train": {"model": "x"}}}},
            "prepare.align.train: the bench sets",
        ),
        ({"device": "tpu"}, "device must be"),
        ({"unknown_key": 1}, "unknown key 'unknown_key'"),
    ],
)
def test_bad_configs_are_refused_with_a_clear_message(tmp_path, demo, change, message):
    raw = bench_dict(tmp_path, demo, "builtin")
    raw.update(change)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        BenchConfig.from_yaml(path)


def test_variants_band_budget_and_learning_rate_search(tmp_path, demo):
    raw = bench_dict(
        tmp_path,
        demo,
        "builtin",
        methods=["random", "prism", "pu"],
        variants={"pu": {"method": "prism", "options": {"prism_uniform": True}}},
        select={"options": {"dim": 64}},
        seeded_methods=["random", "pu"],
        lr_search={"grid": [1e-4, 3e-4]},
        train=NO_LR,
    )
    cfg = BenchConfig(**raw)
    assert cfg.methods == ["random", "prism", "pu"] and cfg.seeded_methods == ["random", "pu"]
    assert cfg.base_method("pu") == "prism" and cfg.base_method("prism") == "prism"
    assert cfg.method_options("pu") == {"dim": 64, "prism_uniform": True}
    assert cfg.method_options("prism") == {"dim": 64}
    assert cfg.identity()["variants"] == {"pu": {"method": "prism", "options": {"prism_uniform": True}}}
    lr = cfg.lr_benchmark()
    assert lr is not None and lr.name == "lr_tl" and lr.data == "heldout" and lr.metric == "mean_loss"
    assert lr.higher_is_better is False and cfg.lr_search.benchmark == "tl"  # the first benchmark by default
    pairs = {"kind": "pair", "sources": [{"path": str(demo[0])}]}
    band = BenchConfig(
        **bench_dict(
            tmp_path,
            demo,
            "builtin",
            kind="pair",
            methods=["random", "tif", "fusion"],
            budgets=["band", "25%"],
            data={"pool": pairs},
            benchmarks=[{"name": "p", "task": "preference", "data": "pool"}],
        )
    )
    assert band.band_size_of == "fusion" and band.budgets == ["band", "25%"]
    with pytest.raises(ValueError, match="band_size_of 'random' must be one of the band methods"):
        BenchConfig(
            **{
                **bench_dict(tmp_path, demo, "builtin"),
                "budgets": ["band"],
                "methods": ["random", "irm"],
                "band_size_of": "random",
                "kind": "pair",
                "data": {"pool": pairs},
                "benchmarks": [{"name": "p", "task": "preference", "data": "pool"}],
            }
        )


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
