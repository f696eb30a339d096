import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from gradsift.data.demo import make_pool, write_demo_data
from gradsift.pipeline import SelectConfig, run_select


@pytest.fixture
def demo_data(tmp_path):
    return write_demo_data(tmp_path / "data", n_pool=40, n_targets=4, seed=3)


def _cfg(tmp_path, demo_data, tiny_model_dir, **kw):
    pool, targets = demo_data
    base = dict(
        pool=str(pool),
        targets=str(targets),
        out=str(tmp_path / "out"),
        model=str(tiny_model_dir),
        device="cpu",
        budget="25%",
        max_length=96,
        batch_tokens=512,
    )
    base.update(kw)
    return SelectConfig(**base)


def test_select_writes_complete_outputs(tmp_path, demo_data, tiny_model_dir):
    res = run_select(_cfg(tmp_path, demo_data, tiny_model_dir, methods=["loss", "random", "length", "ifd"]))
    out = res.out
    assert res.budget == 10
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 10
    # original records intact plus the score
    assert {"instruction", "input", "output", "task", "noisy", "gradsift_score"} <= set(selected[0])
    table = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(table) == 40
    for m in ("loss", "random", "length", "ifd"):
        assert table[f"selected_{m}"].sum() == 10
        assert (out / ("selected.jsonl" if m == "loss" else f"selected-{m}.jsonl")).exists()
    # loss selection = the 10 highest losses
    top = table.sort_values("score_loss", ascending=False).head(10)
    assert top["selected_loss"].all()
    assert np.allclose(table["score_loss"], table["loss_loss"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["pool"]["n"] == 40 and cfg["model"]["fingerprint"]
    assert cfg["settings"]["methods"] == ["loss", "random", "length", "ifd"]
    assert "score_loss" in cfg["timings_s"]


def test_loss_order_low_takes_the_easiest(tmp_path, demo_data, tiny_model_dir):
    res = run_select(_cfg(tmp_path, demo_data, tiny_model_dir, methods=["loss"], loss_order="low"))
    loss = res.scores["loss"].columns["loss"]
    assert set(res.selections["loss"]) == set(np.argsort(loss, kind="stable")[:10].tolist())


def test_rerun_with_other_settings_refuses_without_overwrite(tmp_path, demo_data, tiny_model_dir):
    run_select(_cfg(tmp_path, demo_data, tiny_model_dir, methods=["random"]))
    with pytest.raises(ValueError, match="overwrite"):
        run_select(_cfg(tmp_path, demo_data, tiny_model_dir, methods=["random"], seed=5))
    run_select(_cfg(tmp_path, demo_data, tiny_model_dir, methods=["random"], seed=5, overwrite=True))


def test_random_seeds_differ_and_repeat(tmp_path, demo_data, tiny_model_dir):
    a = run_select(_cfg(tmp_path, demo_data, tiny_model_dir, methods=["random"], out=str(tmp_path / "a")))
    b = run_select(_cfg(tmp_path, demo_data, tiny_model_dir, methods=["random"], out=str(tmp_path / "b")))
    c = run_select(_cfg(tmp_path, demo_data, tiny_model_dir, methods=["random"], seed=1, out=str(tmp_path / "c")))
    assert a.selections == b.selections != c.selections


def test_embed_prefers_the_target_skill(tmp_path, tiny_model_dir):
    pool, targets = write_demo_data(tmp_path / "d", n_pool=80, n_targets=6, seed=0)
    res = run_select(
        SelectConfig(
            pool=str(pool),
            targets=str(targets),
            out=str(tmp_path / "o"),
            methods=["embed"],
            budget="10",
            model=str(tiny_model_dir),
            device="cpu",
        )
    )
    share = res.summary["embed"]["arithmetic"]
    assert share["selected"] >= 0.8 > share["pool"]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown method"):
        SelectConfig(pool="p", out="o", methods=["magic"])
    with pytest.raises(ValueError, match="budget"):
        SelectConfig(pool="p", out="o", budget="-3")
    with pytest.raises(ValueError, match="max_length"):
        SelectConfig(pool="p", out="o", max_length=2)


def test_demo_pool_has_skills_and_noise():
    pool = make_pool(400, seed=0)
    skills = {r["task"] for r in pool}
    assert len(skills) == 8
    assert 0.08 < np.mean([r["noisy"] for r in pool]) < 0.25
    assert abs(np.mean([r["task"] == "arithmetic" for r in pool]) - 0.125) < 0.01


def _pairs(tmp_path) -> tuple[str, str]:
    rows = [
        {"prompt": f"Question {i}: is {i} even?", "chosen": "yes" if i % 2 == 0 else "no", "rejected": "maybe so"}
        for i in range(12)
    ]
    pool = tmp_path / "pairs.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    return str(pool), str(val)


def _pair_cfg(tmp_path, tiny_model_dir, **kw) -> SelectConfig:
    pool, val = _pairs(tmp_path)
    return SelectConfig(
        pool=pool,
        out=str(tmp_path / "o"),
        kind="pair",
        methods=["fusion", "irm", "random"],
        model=str(tiny_model_dir),
        device="cpu",
        max_length=64,
        options={"validation": val, "dpo_config": {"max_steps": 1, "per_device_train_batch_size": 4}},
        **kw,
    )


def test_pair_selection_with_fusion_through_the_pipeline(tmp_path, tiny_model_dir):
    res = run_select(_pair_cfg(tmp_path, tiny_model_dir, budget="3"))
    assert set(res.selections) == {"fusion", "irm", "random"}
    selected = [json.loads(line) for line in (res.out / "selected.jsonl").read_text().splitlines()]
    assert 0 < len(selected) <= 3
    assert {"prompt", "chosen", "rejected", "gradsift_score"} <= set(selected[0])
    table = pq.read_table(res.out / "scores.parquet").to_pandas()
    assert len(table) == 12 and "score_irm" in table
    # a budget given cuts every method to it, band methods included
    cfg = json.loads((res.out / "config.json").read_text())
    assert cfg["budget"] == res.budget == 3 and cfg["settings"]["budget"] == "3"
    assert cfg["n_selected"] == {m: len(rows) for m, rows in res.selections.items()}
    assert all(n <= 3 for n in cfg["n_selected"].values()) and cfg["n_selected"]["random"] == 3
    assert cfg["methods"]["irm"]["band_size"] > 3


def test_band_methods_keep_their_band_without_a_budget(tmp_path, tiny_model_dir):
    res = run_select(_pair_cfg(tmp_path, tiny_model_dir))
    cfg = json.loads((res.out / "config.json").read_text())
    assert cfg["settings"]["budget"] is None
    # the top-k methods keep the default 5% (of 12 pairs: 1), the band methods their whole band
    assert res.budget == cfg["budget"] == 1 and len(res.selections["random"]) == 1
    for m in ("fusion", "irm"):
        info = cfg["methods"][m]
        assert info["budget"] is None and len(res.selections[m]) == info["band_size"] == info["n_in_band"]["all"]
        assert info["band_size"] > 1
        in_band = np.flatnonzero(res.scores[m].columns["in_band" if m == "fusion" else "in_band_irm"])
        assert sorted(res.selections[m]) == in_band.tolist()
    assert cfg["n_selected"] == {m: len(rows) for m, rows in res.selections.items()}
    table = pq.read_table(res.out / "scores.parquet").to_pandas()
    assert table["selected_irm"].sum() == cfg["methods"]["irm"]["band_size"]


def test_budget_is_optional_and_checked_when_given():
    assert SelectConfig(pool="p", out="o").budget is None
    with pytest.raises(ValueError, match="budget"):
        SelectConfig(pool="p", out="o", budget="0%")
