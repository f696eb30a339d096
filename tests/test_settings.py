"""Config fields with their help, values checked against their types, keys checked with the closest valid one,
and the one settings hash and "other settings" check every stage uses."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal

import pytest

import gradsift
from gradsift.settings import (
    check_fields,
    check_same_settings,
    closest,
    from_mapping,
    setting,
    settings_diff,
    settings_hash,
)


@dataclasses.dataclass
class Demo:
    name: str = setting(help="a name")
    n: int = setting(3, help="a count")
    rate: float = setting(0.5, help="a rate")
    on: bool = setting(False, help="a switch")
    mode: Literal["a", "b"] = setting("a", help="a mode")
    tag: str | None = setting(None, help="a tag", choices=("x", "y"))
    items: list[str] = setting(default_factory=lambda: ["p"], help="items")
    extra: dict[str, Any] = setting(default_factory=dict, help="a mapping")

    def __post_init__(self) -> None:
        check_fields(self)


def test_setting_keeps_its_help_choices_and_flag_in_the_field_metadata():
    f = {f.name: f for f in dataclasses.fields(Demo)}
    assert f["n"].default == 3 and f["n"].metadata["help"] == "a count"
    assert f["tag"].metadata["choices"] == ("x", "y")
    methods = {f.name: f for f in dataclasses.fields(gradsift.SelectConfig)}["methods"]
    assert methods.metadata["flag"] == "--method"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n": "abc"}, "n must be an integer, got 'abc'"),
        ({"n": 2.5}, "n must be an integer"),
        ({"n": True}, "n must be an integer"),
        ({"rate": "fast"}, "rate must be a number"),
        ({"rate": False}, "rate must be a number"),
        ({"on": "yes"}, "on must be true or false"),
        ({"mode": "c"}, "mode must be one of a, b, got 'c'"),
        ({"tag": "z"}, "tag must be one of x, y"),
        ({"items": [1, True]}, "items must be a list of strings"),
        ({"extra": [1]}, "extra must be a mapping"),
        ({"name": None}, "name may not be empty"),
        ({"name": ["a"]}, "name must be a string"),
    ],
)
def test_values_are_checked_against_the_field_types(values, message):
    with pytest.raises(ValueError, match=message):
        Demo(**{"name": "d", **values})


def test_values_are_normalised_where_the_meaning_is_plain():
    d = Demo(name=5, rate=1, items="a, b,", tag=None)  # type: ignore[arg-type]
    assert (d.name, d.rate, d.items) == ("5", 1.0, ["a", "b"]) and isinstance(d.rate, float)
    assert Demo(name="d", items=[25, "5%"]).items == ["25", "5%"]  # type: ignore[list-item]


def test_unknown_and_missing_keys_name_the_closest_valid_key():
    assert closest("budgte", ["budget", "pool"]) == "budget" and closest("zzz", ["budget"]) is None
    with pytest.raises(ValueError, match=r"run.yaml: unknown key 'budgte' \(did you mean 'budget'\?\)"):
        from_mapping(gradsift.SelectConfig, {"pool": "p", "out": "o", "budgte": 5}, "run.yaml")
    with pytest.raises(ValueError, match=r"unknown key 'qqqq' \(valid: .*pool"):
        from_mapping(gradsift.SelectConfig, {"pool": "p", "out": "o", "qqqq": 5}, "run.yaml")
    with pytest.raises(ValueError, match="run.yaml: missing key 'out'"):
        from_mapping(gradsift.SelectConfig, {"pool": "p"}, "run.yaml")
    with pytest.raises(ValueError, match="expected a mapping"):
        from_mapping(gradsift.SelectConfig, ["pool"], "run.yaml")
    cfg = from_mapping(gradsift.SelectConfig, {"pool": "p", "out": "o", "max-length": 64, "budget": 5}, "x")
    assert (cfg.max_length, cfg.budget) == (64, "5")


def test_every_stage_config_checks_its_field_types():
    for cls, required in [
        (gradsift.SelectConfig, {"pool": "p", "out": "o"}),
        (gradsift.FeatureConfig, {"data": "d", "out": "o"}),
        (gradsift.TrainConfig, {"data": "d", "out": "o"}),
        (gradsift.EvaluateConfig, {"task": "gsm8k", "data": "d"}),
    ]:
        with pytest.raises(ValueError, match="max_length must be an integer, got 'long'"):
            cls(**required, max_length="long")
        with pytest.raises(ValueError, match="dtype must be one of auto"):
            cls(**required, dtype="float8")


def test_settings_hash_is_the_sha256_of_sorted_json():
    obj = {"b": [1, 2], "a": {"z": None, "y": 0.5}, "p": object.__name__}
    want = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    assert settings_hash(obj) == want[:16] and settings_hash(obj, 10) == want[:10]
    assert settings_hash({"a": 1, "b": 2}) == settings_hash({"b": 2, "a": 1})


def test_settings_diff_names_every_dotted_key_with_both_values():
    old = {"seed": 0, "lora": {"rank": 8, "alpha": 16}, "gone": 1, "flag": 1}
    new = {"seed": 1, "lora": {"rank": 8, "alpha": 32}, "added": "x", "flag": True}
    assert settings_diff(old, new) == [
        'added (absent -> "x")',
        "flag (1 -> true)",
        "gone (1 -> absent)",
        "lora.alpha (16 -> 32)",
        "seed (0 -> 1)",
    ]
    check_same_settings("d", old, json.loads(json.dumps(old)), what="a run", elsewhere="x")
    with pytest.raises(
        ValueError, match=r"d holds a run made with different settings: .*seed \(0 -> 1\).*--overwrite"
    ):
        check_same_settings("d", old, new, what="a run", elsewhere="choose another --out")
