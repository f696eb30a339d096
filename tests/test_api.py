"""The public API: `gradsift.select`, `features`, `train`, `evaluate`, `bench` (and `demo_data`) with their
configs and result types, resolved lazily so ``import gradsift`` does not import torch."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gradsift

FUNCTIONS = ("select", "features", "train", "evaluate", "bench")
# function -> (its config, the stage implementation it calls)
STAGES = {
    "select": ("SelectConfig", "gradsift.pipeline.run_select"),
    "features": ("FeatureConfig", "gradsift.gradients.extract.extract_features"),
    "train": ("TrainConfig", "gradsift.training.run.run_train"),
    "evaluate": ("EvaluateConfig", "gradsift.evaluation.run.run_evaluate"),
    "bench": ("BenchConfig", "gradsift.benchmark.run.run_bench"),
}


def test_import_is_light():
    code = "import sys, gradsift; print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]"


def test_every_public_name_resolves_to_its_home():
    assert set(gradsift.__all__) == {"__version__", *gradsift._HOMES}
    for name, home in gradsift._HOMES.items():
        value = getattr(gradsift, name)
        assert value.__module__ == home, name
        assert name in dir(gradsift)
    for name in FUNCTIONS:
        doc = inspect.getdoc(getattr(gradsift, name)) or ""
        assert "Args:" in doc and "Returns:" in doc and "Example:" in doc and f"gradsift.{name}(" in doc, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gradsift.nope  # noqa: B018


def test_type_checkers_see_what_runs():
    """Every lazily resolved name is also imported for type checkers, from the module it resolves from."""
    tree = ast.parse(Path(gradsift.__file__).read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {a.name: n.module for n in guarded.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {k: v for k, v in seen.items() if k != "Any"} == gradsift._HOMES


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_takes_its_config_and_returns_its_stages_result(name, monkeypatch):
    config_name, target = STAGES[name]
    fn = getattr(gradsift, name)
    assert list(inspect.signature(fn).parameters)[0] == "config"
    hints = fn.__annotations__
    assert hints["config"] == config_name
    stage_module, stage_fn = target.rsplit(".", 1)
    stage = getattr(__import__(stage_module, fromlist=[stage_fn]), stage_fn)
    assert hints["return"] == inspect.signature(stage).return_annotation

    calls = []
    monkeypatch.setattr(target, lambda *args, **kwargs: calls.append((args, kwargs)) or "result")
    config = object()
    assert fn(config) == "result"
    assert calls[0][0][0] is config


def test_optional_inputs_reach_the_stage(monkeypatch):
    calls = []
    for target in ("gradsift.gradients.extract.extract_features", "gradsift.training.run.run_train"):
        monkeypatch.setattr(target, lambda *args: calls.append(args))
    records, loaded = ["r"], object()
    gradsift.features("cfg", records=records, loaded=loaded, progress=False)  # type: ignore[arg-type]
    gradsift.train("cfg", records=records, loaded=loaded)  # type: ignore[arg-type]
    assert calls == [("cfg", records, loaded, False), ("cfg", records, loaded)]


def test_select_end_to_end_with_random(tmp_path):
    pool, targets = gradsift.demo_data(tmp_path / "data", n_pool=20, n_targets=2, seed=1)
    assert (pool.name, targets.name) == ("pool.jsonl", "targets.jsonl")
    cfg = gradsift.SelectConfig(pool=str(pool), out=str(tmp_path / "out"), methods=["random"], budget="5")
    result = gradsift.select(cfg)
    assert isinstance(result, gradsift.SelectResult)
    assert result.n_pool == 20 and result.budget == 5 and len(result.selections["random"]) == 5
    selected = [json.loads(line) for line in (tmp_path / "out" / "selected.jsonl").read_text().splitlines()]
    assert len({r["gradsift_id"] for r in selected}) == 5
    assert all(r["gradsift_method"] == "random" for r in selected)
    assert (tmp_path / "out" / "config.json").exists()


@pytest.mark.slow
def test_mypy_sees_the_public_types(tmp_path):
    snippet = tmp_path / "use.py"
    snippet.write_text(
        "import gradsift\n"
        + "".join(f"reveal_type(gradsift.{n})\n" for n in FUNCTIONS)
        + "reveal_type(gradsift.TrainResult)\n"
    )
    from mypy import api as mypy_api

    out, err, code = mypy_api.run([str(snippet), "--cache-dir", str(tmp_path / "cache"), "--follow-imports=silent"])
    assert code == 0, out + err
    for want in (
        "gradsift.pipeline.SelectConfig) -> gradsift.pipeline.SelectResult",
        "gradsift.gradients.extract.FeatureConfig",
        "-> gradsift.store.features.FeatureStore",
        "gradsift.training.run.TrainConfig",
        "-> gradsift.training.common.TrainResult",
        "gradsift.evaluation.run.EvaluateConfig",
        "gradsift.benchmark.config.BenchConfig) -> gradsift.benchmark.run.BenchResult",
    ):
        assert want in out, want
