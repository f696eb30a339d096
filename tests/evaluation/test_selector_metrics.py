"""SDF, PIR, efficiency distance and feasibility ranks against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from gradsift.evaluation.selector_metrics import (
    FULL_DATA,
    GRADSIFT_METHODS,
    BenchmarkScore,
    FeasibilityAttributes,
    MethodPoint,
    efficiency_table,
    feasibility_table,
    gradsift_feasibility,
    performance_improvement_ratio,
    rank,
    selected_fraction,
    signed_distance,
)


def test_selected_fraction():
    assert selected_fraction(50, 200) == 0.25
    assert selected_fraction(7, 7) == 1.0
    for bad in [(0, 10), (11, 10), (1, 0), (-1, 5)]:
        with pytest.raises(ValueError):
            selected_fraction(*bad)


def test_pir_by_hand():
    scores = [
        BenchmarkScore("gsm8k", selected=0.6, full=0.5),
        BenchmarkScore("target_loss", selected=2.0, full=2.5, higher_is_better=False),
        BenchmarkScore("bbh", selected=0.27, full=0.30),
    ]
    out = performance_improvement_ratio(scores)
    assert out["per_benchmark"] == pytest.approx({"gsm8k": 1.2, "target_loss": 1.25, "bbh": 0.9})
    assert out["pir"] == pytest.approx((1.2 + 1.25 + 0.9) / 3)


def test_pir_bad_input():
    with pytest.raises(ValueError):
        performance_improvement_ratio([])
    with pytest.raises(ValueError, match="more than once"):
        performance_improvement_ratio([BenchmarkScore("a", 1, 1), BenchmarkScore("a", 2, 1)])
    with pytest.raises(ValueError):
        BenchmarkScore("a", selected=0.5, full=0.0)
    with pytest.raises(ValueError):
        BenchmarkScore("loss", selected=0.0, full=1.0, higher_is_better=False)
    with pytest.raises(ValueError):
        BenchmarkScore("a", selected=float("nan"), full=1.0)
    with pytest.raises(ValueError):
        BenchmarkScore("margin", selected=-0.2, full=0.3)


def test_signed_distance_by_hand():
    a, b = (0.1, 0.9), (1.0, 1.0)
    # line y = 0.9 + (x - 0.1) / 9: the point (0.1, 1.0) lies 0.1 above it vertically
    assert signed_distance((0.1, 1.0), a, b) == pytest.approx(0.1 / math.sqrt(1 + 1 / 81))
    assert signed_distance((0.55, 0.95), a, b) == pytest.approx(0.0, abs=1e-12)
    # independent formula: |cross(B - A, P - A)| / |B - A|, sign from the side
    p = (0.5, 0.8)
    cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    assert signed_distance(p, a, b) == pytest.approx(cross / math.dist(a, b))
    assert signed_distance(p, a, b) < 0
    # the order of the reference points does not matter
    assert signed_distance(p, b, a) == pytest.approx(signed_distance(p, a, b))
    with pytest.raises(ValueError, match="different SDFs"):
        signed_distance(p, (0.3, 1.0), (0.3, 2.0))


def test_rank_ties():
    assert rank([3.0, 1.0, 1.0, 2.0]) == [3, 1, 1, 2]
    assert rank([3.0, 1.0, 1.0, 2.0], ties="min") == [4, 1, 1, 3]
    # the authors compare against the first value of a tie group, within 1e-6
    assert rank([0.0, 0.6e-6, 1.2e-6]) == [1, 1, 2]
    assert rank([]) == []
    with pytest.raises(ValueError):
        rank([1.0], ties="average")  # type: ignore[arg-type]


def test_efficiency_table():
    points = [
        MethodPoint("random", 0.1, 0.9),
        MethodPoint("less", 0.05, 1.1),
        MethodPoint("bids", 0.05, 1.1),
        MethodPoint("length", 0.2, 0.85),
    ]
    rows = efficiency_table(points)  # "full" falls back to (1, 1)
    by = {r["method"]: r for r in rows}
    slope = 0.1 / 0.9
    expected_less = ((1.1 - 0.9) - slope * (0.05 - 0.1)) / math.sqrt(1 + slope**2)
    assert by["less"]["efficiency"] == pytest.approx(expected_less)
    assert by["random"]["efficiency"] == pytest.approx(0.0, abs=1e-12)
    assert by["length"]["efficiency"] < 0
    assert [r["efficiency_rank"] for r in rows] == [2, 1, 1, 3]
    assert [r["efficiency_rank"] for r in efficiency_table(points, ties="min")] == [3, 1, 1, 4]
    # an explicit reference pair
    rows = efficiency_table(points, references=("less", "length"))
    assert rows[1]["efficiency"] == pytest.approx(0.0, abs=1e-12)


def test_efficiency_bad_input():
    with pytest.raises(ValueError, match="no \\(SDF, PIR\\) point"):
        efficiency_table([MethodPoint("less", 0.05, 1.1)])
    with pytest.raises(ValueError, match="more than once"):
        efficiency_table([MethodPoint("random", 0.1, 1), MethodPoint("random", 0.2, 1)])
    with pytest.raises(ValueError):
        MethodPoint("x", 0.0, 1.0)
    with pytest.raises(ValueError):
        MethodPoint("x", 1.5, 1.0)
    with pytest.raises(ValueError):
        MethodPoint("x", 0.5, -1.0)
    assert FULL_DATA.sdf == 1.0 and FULL_DATA.pir == 1.0


def _survey(method, llms, steps, rep, model_free, data_free, gpt_free):
    return FeasibilityAttributes(method, llms, steps, rep, not model_free, not data_free, not gpt_free)


def test_feasibility_mirrors_the_authors_ranking():
    # Inputs of the survey's own table (TEDD-Ranker index.html), leaving out the three methods with hand-set
    # exceptions (Superfiltering, SHED, Instruction-Mining). Expected ranks computed by hand with their rules.
    attrs = [
        _survey("AlpaGasus", 0, 2, False, True, True, False),
        _survey("InsTag", 0, 3, False, True, True, False),
        _survey("CaR", 0, 4, True, True, True, True),
        _survey("Nuggets", 0, 4, True, True, True, True),
        _survey("SelectIT", 0, 4, True, True, True, True),
        _survey("IFD", 1, 3, True, False, False, True),
        _survey("LESS", 1, 4, True, False, False, True),
        _survey("DEITA", 2, 5, True, False, False, False),
        _survey("InstructionGPT-4", 30, 4, True, False, True, False),
    ]
    rows = feasibility_table(attrs)
    assert [r["simplicity_penalty"] for r in rows] == [3, 4, 4, 4, 4, 5, 6, 9, 64]
    assert [r["flexibility_penalty"] for r in rows] == [1, 1, 0, 0, 0, 5, 5, 6, 4]
    assert [r["simplicity_rank"] for r in rows] == [1, 2, 2, 2, 2, 3, 4, 5, 6]
    assert [r["flexibility_rank"] for r in rows] == [2, 2, 1, 1, 1, 4, 4, 5, 3]
    assert [r["feasibility_rank"] for r in rows] == [1, 2, 1, 1, 1, 3, 4, 6, 5]


def test_feasibility_min_ties():
    attrs = [
        FeasibilityAttributes("a", 0, 1, True, False, False, False),
        FeasibilityAttributes("b", 0, 1, True, True, False, False),
        FeasibilityAttributes("c", 1, 1, False, False, True, True),
    ]
    rows = feasibility_table(attrs, ties="min")
    assert [r["simplicity_penalty"] for r in rows] == [1, 1, 4]
    assert [r["flexibility_penalty"] for r in rows] == [0, 3, 3]
    assert [r["simplicity_rank"] for r in rows] == [1, 1, 3]
    assert [r["flexibility_rank"] for r in rows] == [1, 2, 2]
    assert [r["feasibility_rank"] for r in rows] == [1, 2, 3]


def test_gradsift_methods_table():
    names = [a.method for a in GRADSIFT_METHODS]
    expected = "random full length loss perplexity ifd embed less prism bids tif lossdiff irm fusion".split()
    assert names == expected
    assert all(a.note for a in GRADSIFT_METHODS)
    assert all(a.code_released and not a.needs_llm_api for a in GRADSIFT_METHODS)
    less = next(a for a in GRADSIFT_METHODS if a.method == "less")
    assert (less.simplicity_penalty, less.flexibility_penalty) == (2 * 1 + 4, 3 + 2)
    rows = {r["method"]: r for r in gradsift_feasibility()}
    assert rows["full"]["feasibility_rank"] == 1 and rows["random"]["feasibility_rank"] == 2
    assert rows["fusion"]["feasibility_rank"] == max(r["feasibility_rank"] for r in rows.values())


def test_gradsift_feasibility_subset_and_extra():
    extra = FeasibilityAttributes("AlpaGasus", 0, 2, False, False, False, True)
    rows = gradsift_feasibility(["random", "less", "AlpaGasus"], extra=[extra])
    assert [r["method"] for r in rows] == ["random", "less", "AlpaGasus"]
    assert [r["simplicity_penalty"] for r in rows] == [1, 6, 3]
    with pytest.raises(ValueError, match="no feasibility attributes"):
        gradsift_feasibility(["nope"])
    with pytest.raises(ValueError, match="more than once"):
        feasibility_table([extra, extra])
    with pytest.raises(ValueError):
        FeasibilityAttributes("x", -1, 1, True, False, False, False)


# ---------------------------------------------------------------------------------------------------------------
# The feasibility table against what each recipe runs by default


DPO_FAST = {"use_cpu": True, "per_device_train_batch_size": 4, "learning_rate": 5e-2, "save_strategy": "no"}


@pytest.fixture(scope="module")
def selection_inputs(tmp_path_factory):
    """A tiny model, an SFT pool with targets, and preference pairs with validation pairs."""
    import json

    from testkit import make_tiny_model, make_tiny_tokenizer

    from gradsift.data.demo import write_demo_data

    d = tmp_path_factory.mktemp("feasibility")
    tok = make_tiny_tokenizer()
    make_tiny_model(len(tok)).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    pool, targets = write_demo_data(d / "sft", n_pool=16, n_targets=3, seed=2)
    pairs = [{"prompt": f"say {i}", "chosen": f"{i} ok", "rejected": f"no {i * 7}"} for i in range(12)]
    (d / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[:8]))
    (d / "val.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[8:]))
    return {"model": d / "model", "pool": pool, "targets": targets, "pairs": d / "pairs.jsonl", "val": d / "val.jsonl"}


def _trainings(inputs, method: str, tmp_path, monkeypatch, with_targets: bool = True) -> int:
    """Training runs `gradsift select` starts for `method` with its default options on a fresh cache."""
    import gradsift.training.common as common
    from gradsift.pipeline import SelectConfig, run_select

    started = []
    real = common.run_trainer

    def counting(trainer, out_dir, resume_from):
        started.append(out_dir)
        return real(trainer, out_dir, resume_from)

    monkeypatch.setattr(common, "run_trainer", counting)
    pair = method in ("tif", "lossdiff", "irm", "fusion")
    options = {"dpo_config": DPO_FAST} if pair else {"dim": 64, "warmup_epochs": 1}
    if pair and with_targets:
        options["validation"] = str(inputs["val"])
    run_select(
        SelectConfig(
            pool=str(inputs["pairs" if pair else "pool"]),
            targets=str(inputs["targets"]) if with_targets and not pair else None,
            out=str(tmp_path / f"{method}-{with_targets}"),
            methods=[method],
            kind="pair" if pair else "sft",
            model=str(inputs["model"]),
            device="cpu",
            max_length=64,
            batch_tokens=512,
            options=options,
        )
    )
    return len(started)


@pytest.mark.parametrize("attrs", [a for a in GRADSIFT_METHODS if a.method != "full"], ids=lambda a: a.method)
def test_feasibility_entries_match_what_runs_by_default(attrs, selection_inputs, tmp_path, monkeypatch):
    """models_trained is the number of training runs a method starts by default (PRISM scores the model given;
    LossDiff and fusion train the warm-up and theta_val; TIF and IRM only the warm-up), and needs_target_data
    is whether it refuses to run without targets or validation pairs."""
    import torch

    torch.set_num_threads(1)
    assert _trainings(selection_inputs, attrs.method, tmp_path, monkeypatch) == attrs.models_trained
    if attrs.needs_target_data:
        with pytest.raises(ValueError, match="targets|validation"):
            _trainings(selection_inputs, attrs.method, tmp_path, monkeypatch, with_targets=False)
    else:
        _trainings(selection_inputs, attrs.method, tmp_path, monkeypatch, with_targets=False)
