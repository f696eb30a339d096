"""Generated bad input for ``gradsift select``: malformed records, bad option keys and values, bad YAML. Every case
exits 2 with one line naming the file and line, or the key, and writes nothing into ``--out``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradsift.cli.main import main
from gradsift.pipeline import SelectConfig
from gradsift.recipes.options import METHODS
from gradsift.score.base import Method
from gradsift.settings import field_names

GOOD = [{"instruction": f"What is {i} plus 1?", "output": str(i + 1)} for i in range(6)]
OPTIONS = {o.name for s in METHODS.values() for o in s.options}
FIELDS = set(field_names(SelectConfig))
TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)

BAD_LINES = st.one_of(
    st.sampled_from(['{"instruction": "q", "output": ', "{not json", "[1, 2]", '"a string"', "42", "{}"]),
    st.builds(lambda t: json.dumps({"instruction": t}), TEXT),  # no response
    st.builds(lambda t: json.dumps({"instruction": "q", "output": t}), st.sampled_from(["", "   ", "\n"])),
    st.builds(lambda n: json.dumps({"instruction": "q", "output": n}), st.integers() | st.lists(st.integers())),
    st.builds(lambda t: "{" + t, TEXT),
)

INTEGER_OPTIONS = ["dim", "k_in", "k_out", "lora_rank", "lora_alpha", "warmup_epochs", "warmup_batch_size"]
CHOICE_OPTIONS = {
    o.name: o.form.split(" | ") for o in METHODS[Method.LESS].options if " | " in o.form and o.name != "lora_layers"
}
BAD_VALUES = st.one_of(
    st.tuples(st.sampled_from(INTEGER_OPTIONS), st.integers(max_value=0).map(str)),
    st.tuples(st.sampled_from(INTEGER_OPTIONS), st.sampled_from(["2.5", "many", "true", "[1]", "{a: 1}"])),
    st.tuples(st.sampled_from(sorted(CHOICE_OPTIONS)), TEXT.filter(lambda v: v.strip() != "")).filter(
        lambda kv: kv[1].strip() not in CHOICE_OPTIONS[kv[0]]
    ),
    st.tuples(st.sampled_from(["warmup_lr", "warmup_fraction"]), st.sampled_from(["-1", "0", "fast", "nan", "[]"])),
)

BROKEN_YAML = st.sampled_from(
    ["seed: [1, 2", "seed: {a: 1", "\tseed: 1", "seed: 'open", "- item", "@seed: 1", "a: b: c"]
)
BAD_YAML_VALUES = st.sampled_from(
    [("max_length", "abc"), ("seed", "1.5"), ("kind", "chat"), ("overwrite", "maybe"), ("pool_limit", "-1")]
)
# capsys is read (and so emptied) in every example
CASES = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return code, err.splitlines()[-1] if err else ""


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


@CASES
@given(bad=BAD_LINES, position=st.integers(0, len(GOOD)))
def test_malformed_records_name_file_and_line(capsys, bad, position):
    with tempfile.TemporaryDirectory() as d:
        lines = [json.dumps(r) for r in GOOD]
        lines.insert(position, bad)
        pool = Path(d) / "pool.jsonl"
        pool.write_text("\n".join(lines) + "\n")
        out = Path(d) / "out"
        code, line = _run(["select", "--pool", str(pool), "--out", str(out), "--method", "random"], capsys)
        assert code == 2
        assert str(pool) in line and f"line {position + 1}" in line, line
        assert _files(out) == []


@CASES
@given(key=st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True).filter(lambda k: k not in OPTIONS))
def test_unknown_option_keys_are_named(capsys, key):
    with tempfile.TemporaryDirectory() as d:
        pool = Path(d) / "pool.jsonl"
        pool.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
        out = Path(d) / "out"
        # the model does not exist: the options must fail before it is looked for
        args = ["select", "--pool", str(pool), "--targets", str(pool), "--out", str(out), "--method", "less"]
        args += ["--model", str(Path(d) / "no-model")]
        code, line = _run([*args, "--option", f"{key}=1"], capsys)
        assert code == 2 and (f"option {key!r}" in line or f"option {key} is a setting" in line), line
        assert _files(out) == []


@CASES
@given(kv=BAD_VALUES)
def test_bad_option_values_are_named(capsys, kv):
    key, value = kv
    with tempfile.TemporaryDirectory() as d:
        pool = Path(d) / "pool.jsonl"
        pool.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
        out = Path(d) / "out"
        # the model does not exist: the options must fail before it is looked for
        args = ["select", "--pool", str(pool), "--targets", str(pool), "--out", str(out), "--method", "less"]
        args += ["--model", str(Path(d) / "no-model")]
        code, line = _run([*args, "--option", f"{key}={value}"], capsys)
        assert code == 2 and f"option {key}" in line, line
        assert _files(out) == []


@CASES
@given(
    broken=st.one_of(BROKEN_YAML.map(lambda b: ("syntax", b)), BAD_YAML_VALUES.map(lambda kv: ("value", kv))),
    typo=st.sampled_from(sorted(FIELDS)).flatmap(
        lambda f: st.integers(0, len(f)).map(lambda i: f[:i] + "x" + f[i:]).filter(lambda k: k not in FIELDS)
    ),
    position=st.integers(0, 2),
    use_typo=st.booleans(),
)
def test_bad_yaml_names_file_and_line_or_key(capsys, broken, typo, position, use_typo):
    with tempfile.TemporaryDirectory() as d:
        pool = Path(d) / "pool.jsonl"
        pool.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
        out = Path(d) / "out"
        lines = [f"pool: {pool}", f"out: {out}", "methods: [random]"]
        kind, bad = broken
        if use_typo:
            lines.insert(position, f"{typo}: 1")
            expected = [f"unknown key {typo!r}"]
        elif kind == "syntax":
            lines.insert(position, bad)
            expected = ["line ", "not valid YAML"]
        else:
            lines.insert(position, f"{bad[0]}: {bad[1]}")
            expected = [bad[0]]
        config = Path(d) / "run.yaml"
        config.write_text("\n".join(lines) + "\n")
        code, line = _run(["select", "--config", str(config)], capsys)
        assert code == 2, line
        assert all(e in line for e in expected), line
        if kind == "syntax" or use_typo:
            assert str(config) in line, line
        assert _files(out) == []
