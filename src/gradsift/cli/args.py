"""What every subcommand's flags share: flags generated from the stage's config dataclass, the ``--config`` YAML
file, ``--option key=value``, and turning both into the config.

A config field declared with ``gradsift.settings.setting`` carries its help line, its choices (or a `Literal`
annotation) and, when it differs from ``--<name>``, its flag in its metadata: `add_config_flags` makes one flag
per field from them, so the flags, their help and the YAML keys (the field names) come from one declaration.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import gradsift

C = TypeVar("C")


def load_yaml(path: str) -> dict[str, Any]:
    """A ``--config`` file's settings, with dashes in their names turned into underscores.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not valid YAML (one line naming the file and line), or not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{p}{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a config file must hold a mapping of setting names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``--option key=value`` items as a mapping; values are read as YAML (``3``, ``true``, ``[a, b]``).

    Raises:
        ValueError: An item without ``=``, or a value that is not valid YAML.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ValueError(f"--option {k.strip()}: the value {v!r} is not valid YAML") from None
    return out


def comma_list(value: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [t.strip() for t in value.split(",") if t.strip()]


def _strip_none(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _cli_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init and "help" in f.metadata and f.metadata.get("cli", True)]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_config_flags(p: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one flag per field of config dataclass `cls` (those declared with ``setting``), with its help, type,
    choices and default.

    Booleans become switches (``--overwrite``; ``--no-progress`` for a field that defaults to True), lists of
    strings take comma-separated values and add up when repeated (``--method less --method prism``), a mapping
    field takes repeatable ``KEY=VALUE`` items. Every flag defaults to None, so a flag left out keeps the
    ``--config`` file's value, then the field's default.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in _cli_fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        group = meta.get("group")
        target = p if group is None else groups.setdefault(group, p.add_argument_group(group))
        hint, default = _strip_none(hints[f.name]), _default(f)
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        text = str(meta["help"])
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
        if hint is bool:
            kwargs.update(action="store_const", const=not default)
        elif get_origin(hint) is dict or hint is dict:
            kwargs.update(action="append", metavar="KEY=VALUE")
        else:
            if get_origin(hint) is list:
                # repeated flags add up rather than the last one silently winning
                kwargs.update(type=comma_list, metavar="A,B", action="extend")
                shown = ",".join(map(str, default or []))
            else:
                kwargs["type"] = hint if hint in (int, float) else str
                choices = meta.get("choices") or (get_args(hint) if get_origin(hint) is Literal else None)
                if choices:
                    kwargs["choices"] = list(choices)
                shown = "" if default is None else str(default)
            if shown:
                text += f" (default {shown})"
        target.add_argument(flag, help=text.replace("%", "%%"), **kwargs)


def config_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The ``--config`` file's settings overridden by the flags given (`add_config_flags`'s, not None); items
    of a mapping flag (``--option``) are added to the file's mapping.

    Raises:
        ValueError: A bad ``--config`` file or ``--option`` item.
    """
    source = getattr(args, "config", None)
    values: dict[str, Any] = load_yaml(source) if source else {}
    for f in _cli_fields(cls):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        if f.metadata.get("flag") == "--option":
            given = values.get(f.name) or {}
            if not isinstance(given, dict):
                raise ValueError(f"{source}: {f.name} must be a mapping of names to values")
            v = {**given, **parse_options(v)}
        values[f.name] = v
    return values


def build_config(args: argparse.Namespace, cls: type[C], required: Sequence[str]) -> C:
    """The config `cls` the flags and ``--config`` file describe.

    Raises:
        ValueError: A required setting missing (naming its flag), an unknown key in the file (naming the closest
            valid one) or a bad value.
    """
    values = config_values(args, cls)
    require(values, required)
    return gradsift.config_from(cls, values, getattr(args, "config", None) or "the flags")


def require(values: dict[str, Any], keys: Sequence[str]) -> None:
    """Refuse settings that lack one of `keys`, naming the flags to give.

    Raises:
        ValueError: A key missing or empty.
    """
    missing = [k for k in keys if not values.get(k)]
    if missing:
        raise ValueError("missing " + " and ".join("--" + m.replace("_", "-") for m in missing))
