"""TIF, LossDiff, IRM and fusion on a tiny model: options, scores against per-pair gradients and `DPOTask`, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import make_tiny_model, make_tiny_tokenizer

from gradsift.data.load import write_jsonl
from gradsift.data.records import Example, Pair
from gradsift.data.tokenize import collate, encode_pairs
from gradsift.model.load import ModelSettings, load_model
from gradsift.model.lora import load_adapter
from gradsift.model.task import DPOTask, sequence_logps
from gradsift.recipes.base import ScoreContext
from gradsift.recipes.preference import (
    FusionScorer,
    IRMScorer,
    LossDiffScorer,
    PreferenceOptions,
    PreferenceSteps,
    TIFScorer,
)
from gradsift.score.preference import dpo_loss
from gradsift.selection.topk import top_k
from gradsift.stats import overlap, spearman

torch.set_num_threads(1)

BETA = 0.1
MAX_LENGTH = 64
# A few steps at a large learning rate: every DPO run takes well under a second on the tiny model.
FAST = {
    "use_cpu": True,
    "per_device_train_batch_size": 4,
    "learning_rate": 5e-2,
    "logging_steps": 1,
    "disable_tqdm": True,
    "save_strategy": "no",
}


def make_pairs(n: int, prefix: str = "p", salt: int = 7) -> list[Pair]:
    return [
        Pair(
            id=f"{prefix}{i}",
            prompt=[{"role": "user", "content": f"say {i * salt % 13} {'a' * (i % 4)}"}],
            chosen=f"{i} ok" + " yes" * (i % 3),
            rejected=f"no {i * salt}",
        )
        for i in range(n)
    ]


# The last pool pair's prompt fills max_length: TRL drops it from the warm-up, gradsift truncates it and scores it.
POOL = make_pairs(11) + [Pair(id="long", prompt=[{"role": "user", "content": "x" * 80}], chosen="1", rejected="2")]
VAL = make_pairs(5, prefix="v", salt=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = make_tiny_tokenizer()
    d = tmp_path_factory.mktemp("model") / "tiny"
    make_tiny_model(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_ctx(model_dir: Path, workdir: Path, budget: int | None = 4, pairs=None, **options) -> ScoreContext:
    return ScoreContext(
        pool=[],
        targets=[],
        pairs=POOL if pairs is None else pairs,
        workdir=workdir,
        max_length=MAX_LENGTH,
        batch_tokens=512,
        load_model=lambda: load_model(ModelSettings(model=str(model_dir), device="cpu")),
        options={"validation": VAL, "dpo_config": FAST, "beta": BETA, **options},
        budget=budget,
    )


@pytest.fixture(scope="module")
def scored(model_dir, tmp_path_factory):
    """Every scorer on one context, with the default options (exact IF)."""
    ctx = make_ctx(model_dir, tmp_path_factory.mktemp("work"))
    scorers = {"tif": TIFScorer, "lossdiff": LossDiffScorer, "irm": IRMScorer, "fusion": FusionScorer}
    return ctx, {name: cls().score(ctx) for name, cls in scorers.items()}


def base_model(model_dir: Path):
    return load_model(ModelSettings(model=str(model_dir), device="cpu"))


def chain_model(model, adapters: list[Path]):
    """`model` with `adapters` merged in order, the last one loaded (how theta_val is built), in eval mode."""
    for adapter in adapters[:-1]:
        model = load_adapter(model, adapter, trainable=False).merge_and_unload()
    model = load_adapter(model, adapters[-1], trainable=False)
    model.eval()
    return model


def pair_batch(tokenizer, pairs: list[Pair]) -> dict[str, torch.Tensor]:
    encoded, _ = encode_pairs(tokenizer, pairs, MAX_LENGTH)
    return collate([c for c, _ in encoded] + [r for _, r in encoded], tokenizer.pad_token_id)


def chain_losses(model_dir: Path, adapters: list[Path]) -> np.ndarray:
    """DPO losses [N] of the pool under `chain_model(base, adapters)`, with the base model as reference (DPOTask's
    adapter-disabled reference would be the merged adapters here)."""
    lm = base_model(model_dir)
    model = chain_model(lm.model, adapters)
    batch = pair_batch(lm.tokenizer, POOL)
    with torch.no_grad():
        pol = sequence_logps(model, batch)[0]
        ref = sequence_logps(base_model(model_dir).model, batch)[0]
    n = len(POOL)
    return dpo_loss(((pol[:n] - ref[:n]) - (pol[n:] - ref[n:])).double().numpy(), BETA)


# ---------------------------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"band_lo": 80, "band_hi": 20}, "band_lo < band_hi"),
        ({"band_hi": 120}, "band_hi must be a number >= 0 and <= 100"),
        ({"band_lo": "low"}, "band_lo must be a number"),
        ({"pref_mode": "middle"}, "pref_mode must be one of band, topk"),
        ({"band_order": "low"}, "band_order must be one of centre, high"),
        ({"val_init": "scratch"}, "val_init must be one of base, warmup"),
        ({"beta": 0}, "beta must be a number > 0"),
        ({"beta": True}, "beta must be a number"),
        ({"projector": "sparse"}, "projector must be one of exact, factorized, dense"),
        ({"store_dtype": "int8"}, "store_dtype"),
        ({"k_in": 0}, "k_in must be a positive integer"),
        ({"proj_dim": 2.5}, "proj_dim must be a positive integer"),
        ({"lora_rank": 0}, "lora_rank must be a positive integer"),
        ({"lora_targets": []}, "lora_targets must be module names"),
        ({"dpo_config": "fast"}, "dpo_config must be a mapping"),
        ({"dpo_config": {"beta": 0.3}}, "use option beta"),
        ({"validation": 5}, "validation must be a file path or a list of Pair"),
        ({"validation": [{"prompt": "x"}]}, "validation must be a file path or a list of Pair"),
        ({"compare_tif": "sometimes"}, "compare_tif must be true or false"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PreferenceOptions.from_options(options)


def test_options_of_other_methods_are_ignored():
    opts = PreferenceOptions.from_options({"loss_order": "high", "band_lo": 10, "lora_targets": "q_proj, k_proj"})
    assert opts.band_lo == 10.0 and opts.band_hi == 80.0 and opts.lora.target_modules == ["q_proj", "k_proj"]


def test_scorers_refuse_a_context_without_pairs_or_validation(model_dir, tmp_path):
    with pytest.raises(ValueError, match="--kind pair"):
        TIFScorer().score(make_ctx(model_dir, tmp_path, pairs=[]))
    no_val = make_ctx(model_dir, tmp_path)
    no_val.options.pop("validation")
    for scorer in (TIFScorer, LossDiffScorer, FusionScorer):
        with pytest.raises(ValueError, match="validation=PATH"):
            scorer().score(no_val)
    assert not (tmp_path / "preference").exists()  # refused before any training
    with pytest.raises(ValueError, match="holds no pairs"):
        TIFScorer().score(make_ctx(model_dir, tmp_path, validation=[]))


def test_validation_from_a_file_or_from_targets(model_dir, tmp_path):
    path = tmp_path / "val.jsonl"
    write_jsonl(
        path, [{"id": p.id, "prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected} for p in VAL]
    )
    ctx = make_ctx(model_dir, tmp_path, validation=str(path))
    steps = PreferenceSteps(ctx, PreferenceOptions.from_options(ctx.options), "tif")
    got = steps.validation
    assert [(p.prompt, p.chosen, p.rejected) for p in got] == [(p.prompt, p.chosen, p.rejected) for p in VAL]
    assert steps.info["validation"]["source"] == str(path)

    targets = [
        Example(id=p.id, messages=[*p.prompt, {"role": "assistant", "content": p.chosen}], rejected=p.rejected)
        for p in VAL
    ]
    ctx = make_ctx(model_dir, tmp_path)
    ctx.options.pop("validation")
    ctx.targets = targets
    steps = PreferenceSteps(ctx, PreferenceOptions.from_options(ctx.options), "tif")
    assert [(p.id, p.prompt, p.chosen, p.rejected) for p in steps.validation] == [
        (p.id, p.prompt, p.chosen, p.rejected) for p in VAL
    ]


# ---------------------------------------------------------------------------------------------------------------
# The scorers on a tiny model


def test_every_scorer_selects_inside_its_band(scored):
    ctx, out = scored
    bands = {"tif": "in_band_if", "lossdiff": "in_band_lossdiff", "irm": "in_band_irm", "fusion": "in_band"}
    for name, s in out.items():
        assert s.score.shape == (len(POOL),)
        band = s.columns[bands[name]]
        assert s.selected is not None and all(band[i] for i in s.selected)
        assert len(s.selected) == min(ctx.budget, int(band.sum()))
        assert top_k(s.score, len(s.selected)).indices == s.selected
        assert s.info["band"]["lo"] == 20.0 and s.info["band"]["hi"] == 80.0
        # The long pair: dropped by TRL from the warm-up, truncated (and still scored) by gradsift.
        assert s.info["dpo_pool"]["trl_counts"]["dropped_ids"] == ["long"]
        assert s.info["truncated_by_max_length"]["pool"]["truncated_ids"] == ["long"]
        assert np.isfinite(s.columns[{"tif": "if", "fusion": "lossdiff"}.get(name, name)]).all()
        # each pair's position in each band: the percentile rank of the value the band is taken on
        for col in {"tif": ["if"], "fusion": ["lossdiff", "irm"]}.get(name, [name]):
            pct, values = s.columns[f"pct_{col}"], s.columns[col]
            assert ((pct > 0) & (pct < 100)).all()
            assert np.argsort(pct, kind="stable").tolist() == np.argsort(values, kind="stable").tolist()
    fusion = out["fusion"].columns
    np.testing.assert_array_equal(fusion["in_band"], fusion["in_band_lossdiff"] & fusion["in_band_irm"])
    np.testing.assert_array_equal(fusion["lossdiff"], out["lossdiff"].columns["lossdiff"])
    np.testing.assert_array_equal(fusion["irm"], out["irm"].columns["irm"])
    np.testing.assert_array_equal(fusion["if"], out["tif"].columns["if"])
    assert out["fusion"].info["tif"]["selection_overlap"] == overlap(out["fusion"].selected, out["tif"].selected)
    assert set(out["fusion"].info["spearman"]) == {"lossdiff_irm", "lossdiff_if", "irm_if"}
    json.dumps([s.info for s in out.values()])  # config.json material


def test_band_methods_keep_their_whole_band_without_a_budget(scored, model_dir):
    ctx, out = scored
    unbudgeted = make_ctx(model_dir, ctx.workdir, budget=None)
    bands = {"tif": "in_band_if", "lossdiff": "in_band_lossdiff", "irm": "in_band_irm", "fusion": "in_band"}
    scorers = {"tif": TIFScorer, "lossdiff": LossDiffScorer, "irm": IRMScorer, "fusion": FusionScorer}
    for name, cls in scorers.items():
        s = cls().score(unbudgeted)
        band = np.flatnonzero(s.columns[bands[name]])
        # the whole band, not the 5% of a top-k method
        assert sorted(s.selected) == band.tolist() and len(band) > unbudgeted.top_k_budget
        assert s.info["band_size"] == s.info["n_selected"] == len(band) and s.info["budget"] is None
        # the budget given (4, the `scored` context's) cuts the same band, centre first
        assert out[name].info["band_size"] == len(band) and out[name].selected == s.selected[: ctx.budget]
    # top-k mode has no band to keep: without a budget it keeps the default share of the pool
    top = IRMScorer().score(make_ctx(model_dir, ctx.workdir, budget=None, pref_mode="topk"))
    assert len(top.selected) == unbudgeted.top_k_budget == 1  # 5% of 12 pairs


@pytest.fixture(scope="module")
def exact_gradients(scored, model_dir) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference: each pool pair's flat DPO gradient [N, P] and the summed validation gradient [P] at the
    warm-up checkpoint, one autograd backward per pair."""
    ctx, _ = scored
    steps = PreferenceSteps(ctx, PreferenceOptions.from_options(ctx.options), "tif")
    lm = base_model(model_dir)
    model = load_adapter(lm.model, steps.warmup, trainable=True)
    model.eval()
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    task = DPOTask(beta=BETA)

    def grad(pair: Pair) -> np.ndarray:
        loss = task.losses(model, pair_batch(lm.tokenizer, [pair])).sum()
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).double().numpy()

    return np.stack([grad(p) for p in POOL]), sum(grad(v) for v in VAL)


def test_if_equals_the_inner_product_of_exact_per_pair_gradients(scored, exact_gradients, model_dir):
    ctx, out = scored
    pool, direction = exact_gradients
    expected = pool @ direction
    assert out["tif"].info["features"]["mode"] == "exact"
    np.testing.assert_allclose(out["tif"].columns["if"], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    # k_in = k_out = 64 exceed every LoRA side of the tiny model: the factorized projection is the identity.
    identity = TIFScorer().score(make_ctx(model_dir, ctx.workdir, projector="factorized", k_in=64, k_out=64))
    assert identity.info["features"]["pool"]["dim"] == pool.shape[1] and identity.info["dpo_pool"]["reused"]
    np.testing.assert_allclose(identity.columns["if"], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_lossdiff_and_irm_match_dpo_task_with_the_adapters(scored, model_dir):
    ctx, out = scored
    steps = PreferenceSteps(ctx, PreferenceOptions.from_options(ctx.options), "lossdiff")
    task = DPOTask(beta=BETA)

    def losses_and_margins(adapter: Path) -> tuple[np.ndarray, np.ndarray]:
        lm = base_model(model_dir)
        model = load_adapter(lm.model, adapter, trainable=False)
        model.eval()
        with torch.no_grad():
            batch = pair_batch(lm.tokenizer, POOL)
            return task.losses(model, batch).double().numpy(), task.margins(model, batch).double().numpy()

    loss_w, m_w = losses_and_margins(steps.warmup)
    loss_v = chain_losses(model_dir, steps.theta_val_chain)
    assert steps.theta_val_chain[0] == steps.warmup  # val_init=warmup (default): theta_val starts from the warm-up
    np.testing.assert_allclose(out["irm"].columns["irm"], BETA * m_w, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out["lossdiff"].columns["loss_warmup"], loss_w, rtol=1e-5)
    np.testing.assert_allclose(out["lossdiff"].columns["lossdiff"], loss_w - loss_v, rtol=1e-4, atol=1e-7)
    # The warm-up moved the model: margins are no longer zero (the reference would give exactly zero).
    assert np.abs(m_w).max() > 1e-3


def test_second_run_reuses_every_cached_step(scored, model_dir):
    ctx, out = scored
    root = ctx.workdir / "preference"
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = make_ctx(model_dir, ctx.workdir)
    fusion = FusionScorer().score(again)
    info = fusion.info
    assert info["dpo_pool"]["reused"] and info["dpo_val"]["reused"]
    assert info["features"]["pool"]["reused"]
    assert all(v["reused"] for v in info["logps"].values())
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.suffix in (".npy", ".npz")}
    assert after and all(before[p] == t for p, t in after.items())
    assert fusion.selected == out["fusion"].selected
    np.testing.assert_array_equal(fusion.columns["lossdiff"], out["fusion"].columns["lossdiff"])

    # Other settings get their own cache entries beside the old ones, never mixed with them.
    IRMScorer().score(make_ctx(model_dir, ctx.workdir, dpo_config={**FAST, "learning_rate": 1e-2}))
    assert len(list(root.glob("dpo-pool-*"))) == 2


def test_theta_val_from_the_base(model_dir, tmp_path):
    ctx = make_ctx(model_dir, tmp_path, val_init="base", pref_mode="topk")
    out = LossDiffScorer().score(ctx)
    steps = PreferenceSteps(ctx, PreferenceOptions.from_options(ctx.options), "lossdiff")
    chain = steps.theta_val_chain
    assert len(chain) == 1 and chain[0] != steps.warmup
    assert out.info["dpo_val"]["init"] == [] and out.info["val_init"] == "base"
    # Reference: theta_val's adapter on the base model, the base model as reference.
    np.testing.assert_allclose(out.columns["loss_val"], chain_losses(model_dir, chain), rtol=1e-5)
    # Top-k mode: the highest LossDiff values.
    assert out.selected == top_k(out.columns["lossdiff"], ctx.budget).indices
    np.testing.assert_array_equal(out.score, out.columns["lossdiff"])


def test_theta_val_from_the_warmup_by_default(scored, model_dir):
    ctx, out = scored
    steps = PreferenceSteps(ctx, PreferenceOptions.from_options(ctx.options), "lossdiff")
    chain = steps.theta_val_chain
    assert chain[0] == steps.warmup and len(chain) == 2
    lossdiff = out["lossdiff"]
    assert lossdiff.info["dpo_val"]["init"] == [str(steps.warmup)] and lossdiff.info["val_init"] == "warmup"
    # Reference: the warm-up merged into the base, theta_val's adapter on top, the base model as reference.
    np.testing.assert_allclose(lossdiff.columns["loss_val"], chain_losses(model_dir, chain), rtol=1e-5)


# One plain SGD step of DPO on all of V for theta_val (and on the pool for the warm-up): the first-order regime.
SMALL_STEP = {**FAST, "optim": "sgd", "learning_rate": 1e-2, "per_device_train_batch_size": 32}
RANK_POOL = make_pairs(24, salt=5)
RANK_VAL = make_pairs(6, prefix="v", salt=3)


def lossdiff_and_influence(model_dir: Path, workdir: Path, **options) -> tuple[np.ndarray, np.ndarray]:
    ctx = make_ctx(model_dir, workdir, pairs=RANK_POOL, validation=RANK_VAL, dpo_config=SMALL_STEP, **options)
    fusion = FusionScorer().score(ctx)
    return fusion.columns["lossdiff"], fusion.columns["if"]


def test_lossdiff_ranks_pairs_like_the_influence(model_dir, tmp_path):
    # theta_val = theta_w - eta * grad L(V; theta_w) to first order, so LossDiff(d) = l(theta_w; d) -
    # l(theta_val; d) = eta * <g(d), grad L(V)> = eta * IF(d) / |V| (the paper: positively correlated with IF).
    lossdiff, influence = lossdiff_and_influence(model_dir, tmp_path)
    assert spearman(lossdiff, influence) >= 0.9


def test_lossdiff_from_the_base_does_not_rank_like_the_influence(model_dir, tmp_path):
    # From the base model theta_val hardly moves at this step: l(theta_val; d) is about log 2 for every pair and
    # LossDiff about softplus(-IRM(d)), a decreasing function of IRM, whatever the validation set.
    lossdiff, influence = lossdiff_and_influence(model_dir, tmp_path, val_init="base")
    assert spearman(lossdiff, influence) < 0.5


def test_dense_projection_stays_within_the_johnson_lindenstrauss_bound(scored, exact_gradients, model_dir):
    ctx, out = scored
    pool, direction = exact_gradients
    dense = TIFScorer().score(make_ctx(model_dir, ctx.workdir, projector="dense", proj_dim=4096))
    assert dense.info["dpo_pool"]["reused"] and dense.info["features"]["pool"]["dim"] == 4096
    # IF = <P g_d, P G> with G the summed validation gradient (projection is linear); its error has a standard
    # deviation of about ||g_d|| ||G|| / sqrt(k).
    bound = 4 * np.linalg.norm(pool, axis=1) * np.linalg.norm(direction) / np.sqrt(4096)
    error = np.abs(dense.columns["if"] - out["tif"].columns["if"])
    assert np.all(error <= bound) and error.max() > 0


def test_fusion_without_tif(scored, model_dir):
    ctx, out = scored
    fusion = FusionScorer().score(make_ctx(model_dir, ctx.workdir, compare_tif=False))
    assert "tif" not in fusion.info and "if" not in fusion.columns and "features" not in fusion.info
    assert fusion.selected == out["fusion"].selected
