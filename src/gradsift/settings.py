"""What every stage's settings share: fields that carry their own help, values checked against their types,
keys checked with the closest valid one named, one settings hash and one "other settings" check.

Each stage's config dataclass declares its fields with `setting` (a default, a help line, optionally the
choices and the command-line flag), so the command line, the ``--config`` YAML files and the Python API read
one declaration: the flags and their help are generated from the fields, a file's keys are the field names.
`check_fields` checks the values against the field types in ``__post_init__``, before anything else runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")

_MISSING: Any = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    default_factory: Any = _MISSING,
    choices: Iterable[str] | None = None,
    flag: str | None = None,
    group: str | None = None,
    cli: bool = True,
) -> Any:
    """A config dataclass field with its help line (a `dataclasses.field` with metadata).

    Args:
        default: The default value (none: a required field).
        help: One line for ``--help``; the default is added to it.
        default_factory: Makes the default (lists, dicts).
        choices: The values allowed when the annotation does not say (a `Literal` does).
        flag: The command-line flag when it is not ``--<name with dashes>`` (e.g. ``--method``; a field whose
            default is True gets ``--no-<name>``).
        group: Help section of the flag (e.g. ``model``).
        cli: False: the field is set in config files and the API only, with no flag.
    """
    metadata: dict[str, Any] = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag}
    metadata.update(group=group, cli=cli)
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to `name` (difflib's ratio at least 0.6), or None."""
    found = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key_message(key: str, valid: Iterable[str], what: str = "key") -> str:
    """``unknown key 'budgte' (did you mean 'budget'?)``, or the valid keys when none is close."""
    valid = sorted(valid)
    near = closest(key, valid)
    hint = f"did you mean {near!r}?" if near else "valid: " + ", ".join(valid)
    return f"unknown {what} {key!r} ({hint})"


def check_keys(keys: Iterable[str], valid: Iterable[str], where: str, what: str = "key") -> None:
    """Refuse keys that are not in `valid`, naming the first unknown one and the closest valid key.

    Raises:
        ValueError: ``<where>: unknown key 'x' (did you mean 'y'?)``.
    """
    valid = set(valid)
    unknown = [k for k in keys if k not in valid]
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ValueError(prefix + unknown_key_message(unknown[0], valid, what))


def field_names(cls: type) -> list[str]:
    """The init fields of a config dataclass, in order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def from_mapping(cls: type[T], values: Any, where: str) -> T:
    """Build config dataclass `cls` from a mapping (a YAML section): dashes in keys read as underscores, unknown
    and missing keys named with `where`.

    Raises:
        ValueError: Not a mapping, an unknown key (the closest valid one named) or a required key missing.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    check_keys(values, field_names(cls), where)
    required = [f.name for f in dataclasses.fields(cls) if f.init and _required(f)]  # type: ignore[arg-type]
    missing = [k for k in required if k not in values]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}")
    return cls(**values)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is _MISSING and f.default_factory is _MISSING


def check_fields(obj: Any) -> None:
    """Check (and normalise) every field of a config dataclass against its annotation; call first in
    ``__post_init__``.

    Ints are not floats' truncations and booleans are not numbers: ``2.5`` for an int field and ``true`` for a
    number are refused. Numbers given for a string field (``budget: 10`` in YAML) become strings; a comma
    string given for a list of strings is split, and numbers in such a list become strings. Annotations other
    than str, int, float, bool, `Literal`, ``list[str]``, ``dict`` and their ``| None`` are left to the
    dataclass's own checks.

    Raises:
        ValueError: A value of the wrong type or outside its choices, naming the field.
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init or f.name not in hints:
            continue
        value = getattr(obj, f.name)
        checked = _check(f.name, value, hints[f.name], f.metadata.get("choices"))
        if checked is not value:
            setattr(obj, f.name, checked)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def field_type(cls: type, name: str) -> tuple[Any, bool]:
    """The annotation of field `name` without its ``| None``, and whether None is allowed."""
    return _strip_none(_hints(cls)[name])


def _strip_none(hint: Any) -> tuple[Any, bool]:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) < len(get_args(hint)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007
    return hint, False


def literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The values of a `Literal` annotation, or None."""
    return get_args(hint) if get_origin(hint) is Literal else None


def _check(name: str, value: Any, hint: Any, choices: tuple[str, ...] | None) -> Any:
    hint, optional = _strip_none(hint)
    if value is None:
        if optional:
            return value
        raise ValueError(f"{name} may not be empty (null)")
    allowed = literal_choices(hint) or choices
    if allowed:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    elif hint is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    elif get_origin(hint) is list and get_args(hint) == (str,):
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"{name} must be a list of strings, got {value!r}")
        return [str(v) for v in value]
    elif get_origin(hint) is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# One settings hash, one "other settings" check


def settings_hash(settings: Any, length: int = 16) -> str:
    """Hex digest (first `length` digits of SHA-256) of settings as sorted JSON; values JSON cannot hold are
    taken as their ``str``. Names caches and identifies runs."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:length]


def settings_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two JSON values differ, each with both values: ``seed (0 -> 1)``.

    ``true`` and ``1`` differ (JSON keeps them apart, Python's ``==`` does not).
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(old.keys() | new.keys(), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name} (absent -> {_short(new[key])})")
            elif key not in new:
                out.append(f"{name} ({_short(old[key])} -> absent)")
            else:
                out.extend(settings_diff(old[key], new[key], name))
        return out
    if old != new or isinstance(old, bool) != isinstance(new, bool):
        return [f"{prefix or 'value'} ({_short(old)} -> {_short(new)})"]
    return []


def check_same_settings(place: str, old: Any, new: Any, *, what: str, elsewhere: str) -> None:
    """Refuse to mix runs: raise when `old` (what `place` holds) and `new` settings differ.

    Args:
        place: The directory or store, as the user named it.
        old: The settings found there (JSON values).
        new: This run's settings.
        what: What `place` holds, e.g. ``"a selection"``.
        elsewhere: The other way out, e.g. ``"choose another --out"``.

    Raises:
        ValueError: ``<place> holds <what> made with different settings: <key (old -> new)>, ...; pass --overwrite
            (overwrite=True) to replace it, or <elsewhere>``.
    """
    diff = settings_diff(json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str)))
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ValueError(
            f"{place} holds {what} made with different settings: {shown}. "
            f"Pass --overwrite (overwrite=True) to replace it, or {elsewhere}"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
