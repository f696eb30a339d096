"""LESS, PRISM and BIDS end to end through ``gradsift select`` (recipes/sft.py; methods.md sections 1, 2, 4).

Every score is recomputed here from the feature stores the run left in its cache, with plain numpy
(cosines, per-task means, PRISM's preference-weighted direction, BIDS' z-scores), so the tests check the
wiring between checkpoints, stores and the scoring math, not only that something was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from testkit import make_tiny_model, make_tiny_tokenizer

import gradsift.evaluation.generate
import gradsift.gradients.extract
import gradsift.training.warmup
from gradsift.data.demo import make_targets, write_demo_data
from gradsift.data.load import load_examples
from gradsift.data.records import Example, Kind, fingerprint
from gradsift.pipeline import SelectConfig, run_select
from gradsift.selection.bids import bids_select, coverage
from gradsift.store.features import FeatureStore

torch.set_num_threads(1)

BUDGET = 6
N_POOL = 24
WARM = {"warmup": "less", "warmup_epochs": 2, "dim": 64}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    tok = make_tiny_tokenizer()
    make_tiny_model(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The demo pool, its one-task targets (no ``rejected``) and two-task targets with ``rejected``."""
    d = tmp_path_factory.mktemp("data")
    pool, targets = write_demo_data(d, n_pool=N_POOL, n_targets=4, seed=3)
    # these targets must lack y-: PRISM then generates it
    rows = [json.loads(line) for line in targets.read_text().splitlines()]
    targets.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "rejected"}) + "\n" for r in rows))
    records = make_targets(3, seed=3) + make_targets(3, seed=3, skill="capitals")
    for i, r in enumerate(records):
        # another target's answer: a plausible wrong response to this prompt
        r["rejected"] = records[(i + 1) % len(records)]["output"]
    two = d / "two-tasks.jsonl"
    two.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"pool": pool, "targets": targets, "two": two}


def _run(model_dir: Path, data: dict[str, Path], out: Path, cache: Path, methods, targets="targets", **options):
    return run_select(
        SelectConfig(
            pool=str(data["pool"]),
            targets=str(data[targets]) if targets else None,
            out=str(out),
            cache_dir=str(cache),
            methods=methods,
            budget=str(BUDGET),
            model=str(model_dir),
            device="cpu",
            max_length=96,
            batch_tokens=1024,
            options={"prism_max_new_tokens": 8, **options},
        )
    )


def _store(cache: Path, pattern: str) -> FeatureStore:
    """The one store under ``cache/features`` whose relative path matches `pattern`."""
    paths = sorted(cache.glob(f"features/{pattern}"))
    assert len(paths) == 1, (pattern, paths)
    return FeatureStore.load(paths[0])


def _feats(store: FeatureStore) -> np.ndarray:
    block = store.read()
    assert block.valid.all()
    return block.features.astype(np.float64)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] cosines of the rows of `a` and `b`."""
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def _tasks(path: Path) -> list[str]:
    return [t.task for t in load_examples(str(path), kind=Kind.TARGET)]


def _per_task_means(a: np.ndarray, tasks: list[str]) -> dict[str, np.ndarray]:
    names = list(dict.fromkeys(tasks))
    return {t: a[:, [j for j, u in enumerate(tasks) if u == t]].mean(axis=1) for t in names}


def _check_helps(scores, a: np.ndarray, targets: Path, rtol: float = 1e-4) -> None:
    """The "helps most" columns of `scores` are the three largest entries of each row of `a` [N, M]."""
    ids = [t.id for t in load_examples(str(targets), kind=Kind.TARGET)]
    order = np.argsort(-a, axis=1, kind="stable")[:, :3]
    for j in range(3):
        assert scores.columns[f"help_{j + 1}_id"].tolist() == [ids[c] for c in order[:, j]]
        want = np.take_along_axis(a, order[:, j : j + 1], axis=1)[:, 0]
        np.testing.assert_allclose(scores.columns[f"help_{j + 1}_value"], want, rtol=rtol, atol=rtol * np.abs(a).max())


def _mtimes(cache: Path) -> dict[str, int]:
    """Modification times of the files that hold computed results (features, warm-up weights and moments)."""
    kinds = ("*.npy", "*.safetensors", "metadata.json", "checkpoint.json", "warmup.json", "prism-greedy-*.json")
    return {str(p): p.stat().st_mtime_ns for k in kinds for p in cache.rglob(k)}


@pytest.fixture(scope="module")
def nowarm(tmp_path_factory, model_dir, data):
    """LESS, PRISM and BIDS at the base model (``warmup=none``), one-task targets without ``rejected``."""
    root = tmp_path_factory.mktemp("nowarm")
    res = _run(model_dir, data, root / "out", root / "cache", ["less", "prism", "bids"], warmup="none")
    return res, root / "cache"


@pytest.fixture(scope="module")
def warm(tmp_path_factory, model_dir, data):
    """LESS, PRISM and BIDS after a 2-epoch warm-up, two-task targets with ``rejected``; PRISM warms up because
    the warm-up is asked for explicitly."""
    root = tmp_path_factory.mktemp("warm")
    res = _run(model_dir, data, root / "out", root / "cache", ["less", "prism", "bids"], "two", **WARM)
    return res, root / "cache"


def test_outputs_without_warmup(nowarm, data):
    res, cache = nowarm
    out = res.out
    assert res.budget == BUDGET
    table = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(table) == N_POOL
    for m in ("less", "prism", "bids"):
        assert {f"score_{m}", f"rank_{m}", f"selected_{m}"} <= set(table.columns)
        # "why this example": the 3 targets each candidate helps most, ids of the run's targets
        helps = [f"{m}_help_{j}_{part}" for j in (1, 2, 3) for part in ("id", "value")]
        assert set(helps) <= set(table.columns)
        assert set(table[f"{m}_help_1_id"]) <= {t.id for t in load_examples(str(data["targets"]), kind=Kind.TARGET)}
        assert len(res.selections[m]) == len(set(res.selections[m])) == BUDGET
        assert table[f"selected_{m}"].sum() == BUDGET
        assert sorted(np.flatnonzero(table[f"selected_{m}"])) == sorted(res.selections[m])
    np.testing.assert_allclose(table["less_task_arithmetic"], table["score_less"])  # one task: task-max = its mean
    # LESS and PRISM keep their top scores; BIDS its own iterative order
    for m in ("less", "prism"):
        assert set(res.selections[m]) == set(np.argsort(-table[f"score_{m}"].to_numpy(), kind="stable")[:BUDGET])
    assert res.selections["bids"] == res.scores["bids"].selected
    assert [json.loads(line)["gradsift_method"] for line in (out / "selected.jsonl").read_text().splitlines()] == [
        "less"
    ] * BUDGET
    assert (out / "selected-prism.jsonl").exists() and (out / "selected-bids.jsonl").exists()

    info = json.loads((out / "config.json").read_text())["methods"]
    for m in ("less", "prism", "bids"):
        assert info[m]["checkpoints"] == [{"name": "base", "adapter": None, "optimizer": None, "weight": 1.0}]
    assert any(k.startswith("features/base/pool-") for k in info["less"]["timings_s"])
    assert info["less"]["aggregation"] == "task-max" and info["less"]["bad_rows"] == 0
    assert info["prism"]["n_generated_rejected"] == 4 and info["prism"]["reduction"] == "sum"
    assert list(info["prism"]["preference_weights"]) == ["base"]
    assert len(info["prism"]["preference_weights"]["base"]) == 4
    assert all(0 < p < 1 for p in info["prism"]["preference_weights"]["base"])
    assert [c["task"] for c in info["bids"]["coverage"]] == ["arithmetic"]
    assert {"coverage_less_task_max", "excluded"} <= set(info["bids"])

    # LESS from the stores: mean cosine with the targets (one task). PRISM's y+ store holds the same prompts
    # with generated y- attached, another records fingerprint: pick LESS's by the fingerprint of its targets.
    fp = fingerprint(load_examples(str(data["targets"]), kind=Kind.TARGET))[:8]
    cands = _feats(_store(cache, "base/pool-*-chosen-mean-factorized-*"))
    tgts = _feats(_store(cache, f"base/targets-{fp}-chosen-mean-factorized-*"))
    np.testing.assert_allclose(res.scores["less"].score, _cos(cands, tgts).mean(axis=1), rtol=1e-5, atol=1e-6)


def test_prism_generates_missing_rejected_once(nowarm, model_dir, data, tmp_path, monkeypatch):
    res, cache = nowarm
    greedy = sorted(cache.glob("prism-greedy-*.json"))
    assert len(greedy) == 1
    targets = load_examples(str(data["targets"]), kind=Kind.TARGET)
    generated = json.loads(greedy[0].read_text())
    assert set(generated) == {t.id for t in targets}
    rejected = _store(cache, "base/targets-*-rejected-mean-*")
    assert rejected.layout.n_rows == len(targets) and rejected.settings["response"] == "rejected"

    def no_generation(*args, **kwargs):
        raise AssertionError("the greedy y- was generated again")

    monkeypatch.setattr(gradsift.evaluation.generate, "generate", no_generation)
    again = _run(model_dir, data, tmp_path / "again", cache, ["prism"], warmup="none")
    np.testing.assert_array_equal(again.scores["prism"].score, res.scores["prism"].score)
    # y- of another length is another y-: it is generated, not read from the first file
    monkeypatch.undo()
    _run(model_dir, data, tmp_path / "longer", cache, ["prism"], warmup="none", prism_max_new_tokens=4)
    assert len(list(cache.glob("prism-greedy-*.json"))) == 2


@pytest.mark.parametrize("aggregation", ["task-max", "instance-max", "sum"])
def test_less_aggregations_from_stores(model_dir, data, tmp_path_factory, aggregation):
    # one cache for the three variants: the features are computed once
    cache = tmp_path_factory.getbasetemp() / "two-task-cache"
    out = tmp_path_factory.mktemp(f"agg-{aggregation}")
    res = _run(model_dir, data, out, cache, ["less"], "two", warmup="none", less_aggregation=aggregation)
    a = _cos(_feats(_store(cache, "base/pool-*-chosen-mean-*")), _feats(_store(cache, "base/targets-*-chosen-mean-*")))
    means = _per_task_means(a, _tasks(data["two"]))
    expected = {
        "task-max": np.max(list(means.values()), axis=0),
        "instance-max": a.max(axis=1),
        "sum": a.sum(axis=1),
    }[aggregation]
    scores = res.scores["less"]
    np.testing.assert_allclose(scores.score, expected, rtol=1e-5, atol=1e-5)
    assert sorted(c for c in scores.columns if c.startswith("task_")) == ["task_arithmetic", "task_capitals"]
    _check_helps(scores, a, data["two"])
    for task, m in means.items():
        np.testing.assert_allclose(scores.columns[f"task_{task}"], m, rtol=1e-5, atol=1e-6)
    assert scores.info["aggregation"] == aggregation
    assert set(pq.read_table(out / "scores.parquet").column_names) >= {"less_task_arithmetic", "less_task_capitals"}


def test_bids_equals_bids_select_on_matrix_from_stores(model_dir, data, tmp_path):
    cache = tmp_path / "cache"
    res = _run(model_dir, data, tmp_path / "out", cache, ["bids", "less"], "two", warmup="none")
    a = _cos(_feats(_store(cache, "base/pool-*-chosen-mean-*")), _feats(_store(cache, "base/targets-*-chosen-mean-*")))
    tasks = _tasks(data["two"])
    sel = bids_select(a, BUDGET)
    assert res.selections["bids"] == sel.indices
    # the score column is BIDS' first-step criterion: the best column-z-scored influence
    z = (a - a.mean(axis=0)) / a.std(axis=0)
    np.testing.assert_allclose(res.scores["bids"].score, z.max(axis=1), rtol=1e-4, atol=1e-4)
    _check_helps(res.scores["bids"], z, data["two"])

    info = res.scores["bids"].info
    assert [c["task"] for c in info["coverage"]] == ["arithmetic", "capitals"] and info["excluded"] == 0
    for got, want in zip(info["coverage"], coverage(z, tasks, sel.indices), strict=True):
        assert got["covered"] == want.covered and got["n_targets"] == want.n_targets == 3
        assert got["best_influence"] == pytest.approx(want.best_influence, rel=1e-4, abs=1e-4)
        assert got["top_recall"] == pytest.approx(want.top_recall, abs=1e-9)
    # the LESS comparison is the coverage of LESS's own selection (task-max) from the same matrix
    for got, want in zip(info["coverage_less_task_max"], coverage(z, tasks, res.selections["less"]), strict=True):
        assert got["covered"] == want.covered
        assert got["best_influence"] == pytest.approx(want.best_influence, rel=1e-4, abs=1e-4)
        assert got["mean_influence"] == pytest.approx(want.mean_influence, rel=1e-4, abs=1e-4)


def test_prism_variants_from_stores(model_dir, data, tmp_path):
    cache = tmp_path / "cache"

    def prism(name: str, **options) -> np.ndarray:
        res = _run(model_dir, data, tmp_path / name, cache, ["prism"], "two", warmup="none", **options)
        assert res.scores["prism"].info["n_generated_rejected"] == 0  # the targets bring their own y-
        return res.scores["prism"]

    default, uniform = prism("default"), prism("uniform", prism_uniform=True)
    cosine, mean = prism("cosine", prism_scoring="cosine"), prism("mean", prism_reduction="mean")
    assert not list(cache.glob("prism-greedy-*.json"))

    plus = _store(cache, "base/targets-*-chosen-mean-*")
    minus = _store(cache, "base/targets-*-rejected-mean-*")
    gp, gm = _feats(plus), _feats(minus)
    # pi_q = pbar(y+) / (pbar(y+) + pbar(y-)) from the token-mean losses the stores keep
    lp = plus.read().extras["loss"].astype(np.float64)
    lm = minus.read().extras["loss"].astype(np.float64)
    pi = np.exp(-lp) / (np.exp(-lp) + np.exp(-lm))
    direction = (pi[:, None] * (gp - gm)).mean(axis=0)
    # one pool store serves both reductions: the summed loss's gradient is the token-mean one times the tokens
    pool = _store(cache, "base/pool-*-chosen-mean-*")
    token_mean = _feats(pool)
    summed = token_mean * pool.read().extras["tokens"].astype(np.float64)[:, None]

    np.testing.assert_allclose(default.info["preference_weights"]["base"], pi, atol=1e-4)
    np.testing.assert_allclose(default.score, summed @ direction, rtol=1e-4, atol=1e-6)
    # "helps most": the largest per-target terms, which sum to the score
    terms = summed @ (pi[:, None] * (gp - gm)).T / len(pi)
    _check_helps(default, terms, data["two"])
    assert uniform.info["preference_weights"] == {"base": [1.0] * 6}
    np.testing.assert_allclose(uniform.score, summed @ (gp - gm).mean(axis=0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(uniform.score, default.score, rtol=1e-3)
    np.testing.assert_allclose(cosine.score, _cos(summed, direction[None])[:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mean.score, token_mean @ direction, rtol=1e-4, atol=1e-6)
    assert mean.info["reduction"] == "mean"


def test_less_with_warmup_uses_adam_features_and_shared_sparse_projection(warm, data):
    res, cache = warm
    info = res.scores["less"].info
    ckpts = info["checkpoints"]
    assert [c["name"] for c in ckpts] == ["epoch-1", "epoch-2"]
    weights = []
    for c in ckpts:
        assert c["optimizer"] == c["adapter"] and Path(c["optimizer"], "optimizer.safetensors").exists()
        lr = json.loads(Path(c["adapter"], "checkpoint.json").read_text())["lr"]
        assert c["weight"] == pytest.approx(lr) and lr > 0
        weights.append(c["weight"])
    assert "warmup" in info["timings_s"]
    assert any(k.startswith("features/epoch-2/pool-") for k in info["timings_s"])
    written = json.loads((res.out / "config.json").read_text())["methods"]
    for m in ("less", "prism", "bids"):
        assert len(res.selections[m]) == len(set(res.selections[m])) == BUDGET
        assert written[m]["checkpoints"] == ckpts

    tasks = _tasks(data["two"])
    a = np.zeros((N_POOL, len(tasks)))
    for c, w in zip(ckpts, weights, strict=True):
        pool = _store(cache, f"{c['name']}/pool-*-chosen-mean-adam-sparse-*")
        targets = _store(cache, f"{c['name']}/targets-*-chosen-mean-sparse-*")
        # candidates: Adam update directions from this checkpoint's moments; targets: plain gradients
        assert pool.settings["optimizer"] is not None and targets.settings["optimizer"] is None
        assert pool.settings["projector"]["preconditioner"] == "adam"
        # LESS's released code puts eps inside the square root (the default; --option adam_eps=outside: paper)
        assert pool.settings["projector"]["eps_mode"] == "inside"
        # ... both through the same sparse JL projection, so their cosines compare like with like
        shared = {k: v for k, v in pool.settings["projector"].items() if k in targets.settings["projector"]}
        assert shared == targets.settings["projector"] and shared["projector"] == "sparse" and shared["dim"] == 64
        a += w * _cos(_feats(pool), _feats(targets))
    expected = np.max(list(_per_task_means(a, tasks).values()), axis=0)
    np.testing.assert_allclose(res.scores["less"].score, expected, rtol=1e-4)
    # PRISM compares plain gradients: its pool features are not preconditioned
    prism_pool = _store(cache, "epoch-1/pool-*-chosen-mean-factorized-*")
    assert prism_pool.settings["optimizer"] is None and prism_pool.settings["adapter"] is not None


def test_second_run_reuses_warmup_and_feature_stores(warm, model_dir, data, tmp_path, monkeypatch):
    res, cache = warm
    before = _mtimes(cache)
    assert any(k.endswith("adapter_model.safetensors") for k in before)

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed what the cache holds")

    monkeypatch.setattr(gradsift.training.warmup, "make_sft_trainer", forbidden)
    monkeypatch.setattr(gradsift.gradients.extract, "_fill", forbidden)
    again = _run(model_dir, data, tmp_path / "again", cache, ["less", "prism", "bids"], "two", **WARM)
    assert _mtimes(cache) == before
    for m in ("less", "prism", "bids"):
        np.testing.assert_array_equal(again.scores[m].score, res.scores[m].score)
        assert again.selections[m] == res.selections[m]


def test_prism_scores_at_the_model_given_by_default(nowarm, model_dir, data, tmp_path, monkeypatch):
    res, cache = nowarm

    def no_warmup(*args, **kwargs):
        raise AssertionError("PRISM warmed up without being asked to")

    monkeypatch.setattr(gradsift.training.warmup, "run_warmup", no_warmup)
    before = _mtimes(cache)
    default = _run(model_dir, data, tmp_path / "default", cache, ["prism"])
    assert default.scores["prism"].info["checkpoints"] == [
        {"name": "base", "adapter": None, "optimizer": None, "weight": 1.0}
    ]
    # the same run as warmup=none: every store and the greedy y- are reused, the scores are equal
    np.testing.assert_array_equal(default.scores["prism"].score, res.scores["prism"].score)
    assert _mtimes(cache) == before


def test_less_and_bids_keep_their_warmup_while_prism_takes_the_model_given(warm, model_dir, data, tmp_path):
    res, cache = warm
    options = {k: v for k, v in WARM.items() if k != "warmup"}
    less_files = {k: v for k, v in _mtimes(cache).items() if "/epoch-" in k or "/warmup-" in k}
    again = _run(model_dir, data, tmp_path / "again", cache, ["less", "prism", "bids"], "two", **options)
    info = again.scores
    assert info["prism"].info["checkpoints"] == [{"name": "base", "adapter": None, "optimizer": None, "weight": 1.0}]
    for m in ("less", "bids"):
        assert info[m].info["checkpoints"] == res.scores[m].info["checkpoints"]
        np.testing.assert_array_equal(info[m].score, res.scores[m].score)
        assert again.selections[m] == res.selections[m]
    # LESS's and BIDS's warm-up and feature stores keep their cache keys: all reused, nothing rewritten
    assert len(list(cache.glob("warmup-*"))) == 1
    assert {k: v for k, v in _mtimes(cache).items() if k in less_files} == less_files


def _lora_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def test_prism_with_a_warmup_generates_y_minus_at_each_checkpoint(warm, model_dir, data, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from gradsift.model.lora import is_peft_model

    res, cache = warm
    calls: list[dict[str, torch.Tensor]] = []

    def fake_generate(model, tokenizer, prompts, settings=None, progress=False):
        assert is_peft_model(model), "y- was generated by the base model, not by the checkpoint"
        calls.append(_lora_state(model))
        return [f"wrong answer {len(calls)} {i}" for i in range(len(prompts))]

    monkeypatch.setattr(gradsift.evaluation.generate, "generate", fake_generate)
    out = _run(model_dir, data, tmp_path / "out", cache, ["prism"], **WARM)
    info = out.scores["prism"].info
    ckpts = info["checkpoints"]
    assert [c["name"] for c in ckpts] == ["epoch-1", "epoch-2"] and ckpts == res.scores["less"].info["checkpoints"]
    assert info["n_generated_rejected"] == 4 and len(calls) == 2
    targets = load_examples(str(data["targets"]), kind=Kind.TARGET)
    for i, (c, state) in enumerate(zip(ckpts, calls, strict=True)):
        # the generating model carries exactly this checkpoint's adapter
        saved = load_file(str(Path(c["adapter"], "adapter_model.safetensors")))
        assert state.keys() == saved.keys()
        assert all(torch.equal(state[k], saved[k]) for k in saved)
        # ... and this checkpoint's y- is what its rejected-response gradients were taken on
        own = [
            Example(id=t.id, messages=t.messages, task=t.task, rejected=f"wrong answer {i + 1} {j}")
            for j, t in enumerate(targets)
        ]
        store = _store(cache, f"{c['name']}/targets-{fingerprint(own)[:8]}-rejected-mean-*")
        assert store.layout.n_rows == len(targets) and store.settings["response"] == "rejected"
    assert any(not torch.equal(calls[0][k], calls[1][k]) for k in calls[0])  # two models, two y-
    # each checkpoint's own preference weights
    assert list(info["preference_weights"]) == ["epoch-1", "epoch-2"]
    assert all(len(w) == 4 for w in info["preference_weights"].values())
    assert len(list(cache.glob("prism-greedy-*.json"))) == 2


@pytest.mark.parametrize("method", ["less", "prism", "bids"])
def test_missing_targets_is_a_clear_error(model_dir, data, tmp_path, method):
    with pytest.raises(ValueError, match=f"the {method} method needs --targets"):
        _run(model_dir, data, tmp_path / "out", tmp_path / "cache", [method], targets=None, warmup="none")


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("less", {"warmup": "lots"}, "option warmup must be one of less, none"),
        ("less", {"warmup": "none", "less_aggregation": "mean"}, "option less_aggregation must be one of task-max"),
        ("bids", {"warmup": "none", "bids_normalize": "maybe"}, "option bids_normalize must be true or false"),
        ("prism", {"warmup": "none", "prism_scoring": "dot"}, "option prism_scoring must be one of raw, cosine"),
        ("prism", {"warmup": "none", "prism_reduction": "max"}, "option prism_reduction must be one of sum, mean"),
        ("prism", {"warmup": "none", "prism_uniform": "sometimes"}, "option prism_uniform must be true or false"),
        ("less", {"warmup": "none", "dim": "big"}, "option dim must be a positive integer"),
        ("less", {"warmup": "none", "projector": "tiled"}, "projector must be one of auto, dense, factorized"),
        ("less", {"warmup_epochs": 1.5}, "option warmup_epochs must be a positive integer"),
        ("less", {"warmup_lr": "fast"}, "option warmup_lr must be a number"),
        ("less", {"adapter": "some/dir"}, "option adapter must be an existing directory"),
        ("less", {"adapter": "."}, "option adapter is the checkpoint of warmup=none"),
    ],
)
def test_bad_options_fail_before_any_work(model_dir, data, tmp_path, method, options, message):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=message):
        _run(model_dir, data, tmp_path / "out", cache, [method], **options)
    # nothing was generated, trained or extracted before the option was read
    assert not cache.exists() or not any(cache.iterdir())


def test_adam_eps_and_lora_layers_options_reach_the_warmup_and_the_stores(warm, model_dir, data, tmp_path):
    res, cache = warm
    outside = _run(model_dir, data, tmp_path / "outside", cache, ["less"], "two", **WARM, adam_eps="outside")
    pools = sorted((cache / "features" / "epoch-1").glob("pool-*-chosen-mean-adam-sparse-*"))
    assert {FeatureStore.load(p).settings["projector"]["eps_mode"] for p in pools} == {"inside", "outside"}
    assert not np.allclose(outside.scores["less"].score, res.scores["less"].score)  # the two forms differ
    last = _run(
        model_dir, data, tmp_path / "last", tmp_path / "cache-last", ["less"], "two", **WARM, lora_layers="last:1"
    )
    ckpt = Path(last.scores["less"].info["checkpoints"][0]["adapter"])
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == [1]  # the tiny model's last decoder layer
    store = FeatureStore.load(next((tmp_path / "cache-last" / "features" / "epoch-1").glob("pool-*-adam-*")))
    assert store.settings["lora_params"] < FeatureStore.load(pools[0]).settings["lora_params"]
