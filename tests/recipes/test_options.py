"""The method registry: every method with its description, kinds and options; options checked (unknown keys
with the closest valid one) before any work, and the recipes reading their defaults from it."""

from __future__ import annotations

import logging

import pytest

from gradsift.pipeline import SelectConfig
from gradsift.recipes.options import METHODS, applicable, check_options, describe, readers, resolve
from gradsift.recipes.preference import PreferenceOptions
from gradsift.score.base import Method


def test_every_method_is_in_the_registry_with_a_one_line_summary():
    assert set(METHODS) == set(Method)
    for spec in METHODS.values():
        assert spec.summary and "\n" not in spec.summary
        names = [o.name for o in spec.options]
        assert len(names) == len(set(names)), spec.method
    lines = describe(list(Method)).splitlines()
    assert [line.split()[0] for line in lines] == [m.value for m in Method]


def test_defaults_come_from_the_registry_per_method():
    assert resolve("less", {})["warmup"] == "less" and resolve("bids", {})["warmup"] == "less"
    assert resolve("prism", {})["warmup"] == "none"  # the paper's "current model"
    assert resolve("less", {})["projector"] == "auto" and resolve("tif", {})["projector"] == "exact"
    assert resolve("less", {})["store_dtype"] == "float16" and resolve("tif", {})["store_dtype"] == "float32"
    assert resolve("lossdiff", {})["val_init"] == "warmup"
    v = resolve("less", {"lora_layers": [0, 5], "lora_targets": "q_proj, k_proj", "dim": "64", "warmup_lr": "1e-3"})
    assert (v["lora_layers"], v["lora_targets"], v["dim"], v["warmup_lr"]) == ("0,5", ["q_proj", "k_proj"], 64, 1e-3)
    assert resolve("less", {})["lora_targets"] is not resolve("less", {})["lora_targets"]  # no shared default list
    opts = PreferenceOptions.from_options({"band_lo": 10, "pref_mode": "topk"})
    assert opts.band_lo == 10.0 and opts.band_hi == 80.0 and opts.pref_mode.value == "topk"
    assert resolve("prism", {})["prism_max_new_tokens"] == 128 and resolve("ifd", {})["ifd_max"] == 1.0


@pytest.mark.parametrize(
    ("methods", "options", "message"),
    [
        (["less"], {"warmpu": "none"}, r"unknown option 'warmpu' for less \(did you mean 'warmup'\?\)"),
        (["tif"], {"band_low": 10}, r"did you mean 'band_lo'\?"),
        (["loss"], {"qqq": 1}, r"unknown option 'qqq' for loss \(valid: none\)"),
        (["less"], {"dim": -3}, "option dim must be a positive integer, got -3"),
        (["less"], {"warmup_fraction": 0}, r"option warmup_fraction must be a number > 0 and <= 1, got 0"),
        (["less"], {"sparse_s": 3}, r"option sparse_s must divide dim \(8192\), got 3"),
        (["less"], {"lora_layers": "first:2"}, "option lora_layers must be 'last:K'"),
        (["prism"], {"prism_uniform": "sometimes"}, "option prism_uniform must be true or false"),
        (["embed"], {"embed_reduce": "min"}, "option embed_reduce must be one of max, mean"),
        (["less"], {"warmup": "none", "adapter": 5}, "option adapter must be an existing directory"),
        (["tif"], {"validation": "nowhere/val.jsonl"}, "option validation names no file"),
        (["tif"], {"band_lo": 80, "band_hi": 20}, "band_lo < band_hi"),
        (["tif"], {"dpo_config": {"beta": 0.3}}, "use option beta"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(methods, options, message):
    kind = "pair" if methods[0] in ("tif", "lossdiff", "irm", "fusion") else "sft"
    with pytest.raises(ValueError, match=message):
        check_options(methods, options, kind)


def test_an_adapter_asks_for_warmup_none(tmp_path):
    with pytest.raises(ValueError, match="adapter is the checkpoint of warmup=none"):
        check_options(["less"], {"adapter": str(tmp_path)}, "sft")
    check_options(["prism"], {"adapter": str(tmp_path)}, "sft")  # PRISM's default is warmup=none


def test_methods_must_fit_the_kind_and_other_methods_options_are_named(caplog):
    with pytest.raises(ValueError, match="method tif scores preference pairs: add --kind pair"):
        check_options(["tif"], {}, "sft")
    with pytest.raises(ValueError, match="method less scores SFT examples"):
        check_options(["less"], {}, "pair")
    with caplog.at_level(logging.WARNING):
        check_options(["loss"], {"warmup": "none"}, "sft")
    assert "option(s) warmup not read by loss (warmup: less, prism, bids)" in caplog.text
    assert readers("compare_tif") == ["fusion"]
    assert applicable(["random"], {"warmup": "none", "dim": 4}) == {}
    assert applicable(["prism"], {"warmup": "none", "bids_normalize": True}) == {"warmup": "none"}


def test_select_config_checks_options_before_anything_is_read(tmp_path):
    pool = tmp_path / "missing.jsonl"  # never read: the options fail first
    with pytest.raises(ValueError, match="did you mean 'warmup'"):
        SelectConfig(pool=str(pool), out=str(tmp_path / "o"), methods=["less"], targets="t", options={"warmpu": 1})
    with pytest.raises(ValueError, match="the prism method needs --targets"):
        SelectConfig(pool=str(pool), out=str(tmp_path / "o"), methods=["prism"])
    with pytest.raises(ValueError, match="option loss_order is a setting of its own: use --loss-order"):
        SelectConfig(pool=str(pool), out=str(tmp_path / "o"), methods=["loss"], options={"loss_order": "low"})
    assert not (tmp_path / "o").exists()


def test_help_lists_each_methods_options_with_default():
    text = describe(["less", "prism", "random"], options=True)
    assert "less: LESS" in text and "  warmup = less | none  (default less)" in text
    assert "  warmup = less | none  (default none)" in text  # PRISM's block
    assert "random: seeded uniform draw" in text and "(no options)" in text
