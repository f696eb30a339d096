"""The method registry: every selection method with its one-line description, the kind of data it scores, and
the options it reads (``SelectConfig.options`` / ``--option key=value``), each with its type, default, check
and help.

This is the one place where an option's default and its check live. `gradsift.pipeline.SelectConfig` checks a
run's options here before anything is read or loaded (`check_options`: an unknown key names the closest valid
one, a bad value names the option), and the recipes read their options through `resolve`, which returns the
checked values with each method's defaults filled in. ``gradsift select --help`` and ``--help-options`` print
from here (`describe`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from gradsift.data.formats import Format
from gradsift.model.lora import parse_layers
from gradsift.score.base import Method
from gradsift.score.less import Aggregation
from gradsift.score.prism import Scoring
from gradsift.selection.band import BandOrder, PrefMode
from gradsift.settings import closest

log = logging.getLogger(__name__)


class ValInit(StrEnum):
    """Where ``theta_val`` starts its epoch of DPO on the validation set: the warm-up model (the TIF paper's text,
    default) or the base model (`gradsift.recipes.preference`)."""

    BASE = "base"
    WARMUP = "warmup"


# ---------------------------------------------------------------------------------------------------------------
# Checks: each takes a value and returns it normalised, or raises ValueError with what was expected.


Check = Callable[[Any], Any]


def integer(minimum: int = 1) -> Check:
    def check(value: Any) -> int:
        # int() would take True and truncate 2.5: neither is an integer the user meant; "8" from a Python caller is
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError("must be a positive integer" if minimum == 1 else f"must be an integer >= {minimum}")
        return value

    return check


def number(low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError("must be a number")
        if (low is not None and (value < low or (open_low and value == low))) or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if open_low else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise ValueError(f"must be a number {' and '.join(t for t in (lo, hi) if t)}")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    # bool("false") is True: strings from Python callers or config files are read, never cast
    text = str(value).lower()
    if isinstance(value, bool | int | str) and text in ("true", "yes", "1", "false", "no", "0"):
        return text in ("true", "yes", "1")
    raise ValueError("must be true or false")


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return check


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def directory(value: Any) -> str:
    if not isinstance(value, str | Path) or not Path(value).is_dir():
        raise ValueError("must be an existing directory")
    return str(value)


def modules(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, list | tuple) or not value or not all(isinstance(t, str) and t for t in value):
        raise ValueError("must be module names, comma-separated or a list (at least one)")
    return list(value)


def layers(value: Any) -> str:
    spec = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    try:
        parse_layers(spec)
    except ValueError:
        raise ValueError(
            "must be 'last:K' (K >= 1) or a list of distinct decoder layer indices such as 0,5,7"
        ) from None
    return spec


def mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping")
    return dict(value)


def validation_pairs(value: Any) -> Any:
    """A path (checked when it names a local file) or a list of `gradsift.data.records.Pair`."""
    from gradsift.data.records import Pair

    if isinstance(value, str | Path):
        path = Path(value)
        if not str(value).startswith("hf:") and path.suffix and not path.exists():
            raise ValueError("names no file")
        return value
    if isinstance(value, list | tuple) and all(isinstance(p, Pair) for p in value):
        return list(value)
    raise ValueError("must be a file path or a list of Pair records")


@dataclass(frozen=True)
class Option:
    """One method option.

    Attributes:
        name: The key (``--option name=value``).
        default: The default value (None: unset).
        help: One line for ``--help-options``.
        check: Normalises a given value or raises ValueError saying what was expected.
        form: How a value is written, for ``--help-options`` (``integer``, ``less | none``).
        method_defaults: Defaults of particular methods that differ from `default`.
    """

    name: str
    default: Any
    help: str
    check: Check
    form: str
    method_defaults: tuple[tuple[Method, Any], ...] = ()

    def default_for(self, method: Method) -> Any:
        return dict(self.method_defaults).get(method, self.default)

    def read(self, value: Any) -> Any:
        """The checked value.

        Raises:
            ValueError: ``option <name> <what was expected>, got <value>``.
        """
        if value is None and self.default is None:
            return None
        try:
            return self.check(value)
        except ValueError as e:
            raise ValueError(f"option {self.name} {e}, got {value!r}") from None


def _choice(name: str, default: str | None, choices: Iterable[str], help: str, **kw: Any) -> Option:
    choices = tuple(choices)
    return Option(name, default, help, one_of(*choices), " | ".join(choices), **kw)


# ---------------------------------------------------------------------------------------------------------------
# The options, by family

_WARMUP = (
    _choice(
        "warmup",
        "less",
        ("less", "none"),
        "less: LoRA warm-up on a seeded share of the pool, one checkpoint per epoch; none: the base model (or "
        "adapter) is the single checkpoint",
        method_defaults=((Method.PRISM, "none"),),
    ),
    Option("warmup_fraction", 0.05, "share of the pool the warm-up trains on", number(0, 1, open_low=True), "(0, 1]"),
    Option("warmup_epochs", 4, "warm-up epochs (one checkpoint each)", integer(), "integer"),
    Option("warmup_lr", 1e-4, "warm-up learning rate", number(0, open_low=True), "number"),
    Option("warmup_batch_size", 4, "warm-up examples per step", integer(), "integer"),
    Option("warmup_min_examples", 8, "fewest examples the warm-up trains on", integer(), "integer"),
    Option("adapter", None, "with warmup=none: a LoRA adapter directory as the checkpoint", directory, "directory"),
)
_LORA = (
    Option("lora_rank", 8, "LoRA rank", integer(), "integer"),
    Option("lora_alpha", 16, "LoRA alpha", integer(), "integer"),
    Option("lora_targets", ["q_proj", "v_proj"], "modules the LoRA adapts", modules, "names, comma-separated"),
)
_GRADIENT = (
    *_WARMUP,
    *_LORA,
    Option(
        "lora_layers",
        None,
        "LoRA (warm-up and features) on these decoder layers only (default all)",
        layers,
        "last:K | 0,5,7",
    ),
    _choice(
        "projector",
        "auto",
        ("auto", "dense", "factorized", "sparse"),
        "auto: factorized, or sparse where Adam preconditioning needs the full gradient",
    ),
    Option("dim", 8192, "sparse/dense projection dimension", integer(), "integer"),
    Option("sparse_s", 4, "sparse projection: non-zeros per gradient entry (divides dim)", integer(), "integer"),
    _choice("adam_eps", "inside", ("inside", "outside"), "Adam feature m'/sqrt(v'+eps) (LESS's code) or outside"),
    Option("k_in", 16, "factorized projection: input-side size per layer", integer(), "integer"),
    Option("k_out", 16, "factorized projection: output-side size per layer", integer(), "integer"),
    _choice("store_dtype", "float16", ("float16", "float32"), "feature rows on disk"),
)
_PREFERENCE = (
    Option("beta", 0.1, "DPO temperature of the DPO runs and every score", number(0, open_low=True), "number"),
    Option("band_lo", 20.0, "lower percentile of the middle band", number(0, 100), "[0, 100)"),
    Option("band_hi", 80.0, "upper percentile of the middle band", number(0, 100), "(band_lo, 100]"),
    _choice("pref_mode", PrefMode.BAND.value, [m.value for m in PrefMode], "keep the band, or the top scores"),
    _choice(
        "band_order", BandOrder.CENTRE.value, [m.value for m in BandOrder], "band members first when cut by a budget"
    ),
    *_LORA,
    Option("dpo_config", {}, "trl.DPOConfig fields for both DPO runs (not beta)", mapping, "mapping"),
)
_VALIDATION = (
    Option(
        "validation",
        None,
        "validation pairs V (a file); default: the targets, when all have a rejected response",
        validation_pairs,
        "path",
    ),
    _choice("validation_format", None, [f.value for f in Format], "force the validation file's format"),
)
_INFLUENCE = (
    _choice(
        "projector",
        "exact",
        ("exact", "factorized", "dense"),
        "IF exactly (one gradient pass), or from projected gradient features",
    ),
    Option("proj_dim", 8192, "dense projection dimension", integer(), "integer"),
    Option("k_in", 16, "factorized projection: input-side size per layer", integer(), "integer"),
    Option("k_out", 16, "factorized projection: output-side size per layer", integer(), "integer"),
    _choice("store_dtype", "float32", ("float32", "float16"), "projected feature rows on disk"),
)
_VAL_INIT = (
    _choice("val_init", ValInit.WARMUP.value, [v.value for v in ValInit], "where theta_val starts its DPO epoch"),
)
_COMPARE_TIF = (Option("compare_tif", True, "also compute TIF and report the overlap", boolean, "true | false"),)


# ---------------------------------------------------------------------------------------------------------------
# Cross-option checks


def _gradient_checks(method: Method, v: dict[str, Any]) -> None:
    if v["adapter"] is not None and v["warmup"] != "none":
        raise ValueError("option adapter is the checkpoint of warmup=none: add warmup=none or drop adapter to warm up")
    sparse = v["projector"] == "sparse" or (v["projector"] == "auto" and method is not Method.PRISM)
    if sparse and v["dim"] % v["sparse_s"]:
        raise ValueError(f"option sparse_s must divide dim ({v['dim']}), got {v['sparse_s']}")


def _preference_checks(method: Method, v: dict[str, Any]) -> None:
    if not v["band_lo"] < v["band_hi"]:
        raise ValueError(
            f"the band needs 0 <= band_lo < band_hi <= 100, got band_lo={v['band_lo']:g}, band_hi={v['band_hi']:g}"
        )
    for key in ("beta", "output_dir"):
        if key in v["dpo_config"]:
            raise ValueError(f"option dpo_config may not set {key!r}" + (": use option beta" * (key == "beta")))


# ---------------------------------------------------------------------------------------------------------------
# The methods


@dataclass(frozen=True)
class MethodSpec:
    """A selection method as the registry knows it.

    Attributes:
        method: The method.
        summary: One line for ``gradsift select --help``.
        kinds: The ``SelectConfig.kind`` values it scores (``sft`` examples, ``pair`` preference pairs).
        options: The options it reads.
        check: Checks across its options (after each is checked alone).
        needs_targets: It scores against target examples (``--targets``).
    """

    method: Method
    summary: str
    kinds: tuple[str, ...]
    options: tuple[Option, ...] = ()
    check: Callable[[Method, dict[str, Any]], None] | None = None
    needs_targets: bool = False

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


_SFT = ("sft",)
_PAIR = ("pair",)
_SPECS = (
    MethodSpec(Method.RANDOM, "seeded uniform draw (the baseline every selector should beat)", ("sft", "pair")),
    MethodSpec(Method.LENGTH, "response length in tokens (--length-order long | short)", _SFT),
    MethodSpec(Method.LOSS, "response loss under the model (--loss-order high | low)", _SFT),
    MethodSpec(Method.PERPLEXITY, "response perplexity under the model (--loss-order high | low)", _SFT),
    MethodSpec(
        Method.IFD,
        "instruction-following difficulty: loss with / without the instruction (IFD >= ifd_max dropped)",
        _SFT,
        (
            Option(
                "ifd_max", 1.0, "candidates with IFD at or above this are dropped", number(0, open_low=True), "number"
            ),
        ),
    ),
    MethodSpec(
        Method.EMBED,
        "cosine similarity of sentence embeddings to the nearest target (needs --targets)",
        _SFT,
        (
            Option(
                "embed_model",
                None,
                "sentence-transformers model or directory (default all-MiniLM-L6-v2)",
                text,
                "name",
            ),
            _choice("embed_reduce", "max", ("max", "mean"), "nearest target or mean over targets"),
        ),
        needs_targets=True,
    ),
    MethodSpec(
        Method.LESS,
        "LESS: Adam-preconditioned LoRA gradients vs target gradients over warm-up checkpoints (needs --targets)",
        _SFT,
        (
            *_GRADIENT,
            _choice("less_aggregation", Aggregation.TASK_MAX.value, [a.value for a in Aggregation], "over targets"),
        ),
        _gradient_checks,
        needs_targets=True,
    ),
    MethodSpec(
        Method.PRISM,
        "PRISM: candidate gradient vs the preference-weighted target direction y+ -> y- (needs --targets)",
        _SFT,
        (
            *_GRADIENT,
            _choice("prism_reduction", "sum", ("sum", "mean"), "candidate loss: summed (the source) or token mean"),
            _choice("prism_scoring", Scoring.RAW.value, [s.value for s in Scoring], "raw inner product or cosine"),
            Option("prism_uniform", False, "uniform target weights (ablation)", boolean, "true | false"),
            Option(
                "prism_max_new_tokens", 128, "length of the generated y- of targets without one", integer(), "integer"
            ),
        ),
        _gradient_checks,
        needs_targets=True,
    ),
    MethodSpec(
        Method.BIDS,
        "BIDS: LESS's influence matrix, z-scored per target, balanced selection over targets (needs --targets)",
        _SFT,
        (*_GRADIENT, Option("bids_normalize", True, "column z-scores before the selection", boolean, "true | false")),
        _gradient_checks,
        needs_targets=True,
    ),
    MethodSpec(
        Method.TIF,
        "TIF: influence of each pair's DPO gradient on the validation DPO loss, middle percentile band",
        _PAIR,
        (*_PREFERENCE, *_VALIDATION, *_INFLUENCE),
        _preference_checks,
    ),
    MethodSpec(
        Method.LOSSDIFF,
        "DPO loss under the warm-up model minus under theta_val, middle band",
        _PAIR,
        (*_PREFERENCE, *_VALIDATION, *_VAL_INIT),
        _preference_checks,
    ),
    MethodSpec(
        Method.IRM,
        "implicit reward margin under the warm-up model, middle band (no validation set)",
        _PAIR,
        _PREFERENCE,
        _preference_checks,
    ),
    MethodSpec(
        Method.FUSION,
        "pairs whose LossDiff and IRM both fall in their middle bands",
        _PAIR,
        (*_PREFERENCE, *_VALIDATION, *_VAL_INIT, *_INFLUENCE, *_COMPARE_TIF),
        _preference_checks,
    ),
)
METHODS: dict[Method, MethodSpec] = {s.method: s for s in _SPECS}
"""Every method's registry entry."""

PREFERENCE_FAMILY = (Method.TIF, Method.LOSSDIFF, Method.IRM, Method.FUSION)
"""The preference methods; they share one set of DPO runs and read their options together."""


def resolve(method: Method | str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option `method` reads: the value given, checked and normalised, else the method's default.

    Keys the method does not read are ignored (`check_options` refuses unknown ones).

    Raises:
        ValueError: A bad value, naming the option.
    """
    spec = METHODS[Method(method)]
    values = {
        o.name: o.read(options[o.name]) if o.name in options else _copy(o.default_for(spec.method))
        for o in spec.options
    }
    if spec.check is not None:
        spec.check(spec.method, values)
    return values


def resolve_family(methods: Sequence[Method], options: Mapping[str, Any]) -> dict[str, Any]:
    """The union of what `resolve` gives for each of `methods` (their shared options agree)."""
    out: dict[str, Any] = {}
    for m in methods:
        out.update(resolve(m, options))
    return out


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def readers(name: str) -> list[str]:
    """The methods that read option `name`."""
    return [m.value for m, s in METHODS.items() if s.option(name) is not None]


def check_options(methods: Sequence[Method | str], options: Mapping[str, Any], kind: str) -> None:
    """Check a run's methods against its kind, and its options against the registry, before any work.

    An option no method knows is refused with the closest key (first among the run's methods' options); an
    option only other methods read is named in a warning; every value is checked by each method that reads it.

    Raises:
        ValueError: A method that does not score `kind`, an unknown option or a bad value.
    """
    specs = [METHODS[Method(m)] for m in methods]
    for s in specs:
        if kind not in s.kinds:
            need = "preference pairs: add --kind pair" if s.kinds == _PAIR else "SFT examples, not preference pairs"
            raise ValueError(f"method {s.method.value} scores {need}")
    here = {o.name for s in specs for o in s.options}
    known = {o.name for s in METHODS.values() for o in s.options}
    names = ", ".join(s.method.value for s in specs)
    for key in options:
        if key not in known:
            near = closest(key, here) or closest(key, known)
            hint = f"did you mean {near!r}?" if near else "valid: " + (", ".join(sorted(here)) or "none")
            raise ValueError(
                f"unknown option {key!r} for {names} ({hint}); `gradsift select --method {specs[0].method.value} "
                "--help-options` lists the options"
            )
    unused = sorted(set(options) - here)
    if unused:
        log.warning(
            "option(s) %s not read by %s (%s)",
            ", ".join(unused),
            names,
            "; ".join(f"{k}: {', '.join(readers(k))}" for k in unused),
        )
    for s in specs:
        resolve(s.method, options)


def applicable(methods: Sequence[Method | str], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options some method of `methods` reads (a shared option set cut down to one run's methods)."""
    here = {o.name for m in methods for o in METHODS[Method(m)].options}
    return {k: v for k, v in options.items() if k in here}


def describe(methods: Sequence[Method | str], options: bool = False) -> str:
    """Text for ``--help``: one line per method, or with `options` each method's options."""
    specs = [METHODS[Method(m)] for m in methods]
    if not options:
        width = max(len(s.method.value) for s in specs)
        return "\n".join(f"  {s.method.value:<{width}}  {s.summary}" for s in specs)
    blocks = []
    for s in specs:
        lines = [f"{s.method.value}: {s.summary}"]
        if not s.options:
            lines.append("  (no options)")
        for o in s.options:
            default = o.default_for(s.method)
            shown = "-" if default is None else ",".join(default) if isinstance(default, list) else default
            lines.append(f"  {o.name} = {o.form}  (default {shown})\n      {o.help}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
