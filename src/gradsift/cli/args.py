"""What every subcommand's flags share: the ``--config`` YAML file, ``--option key=value``, the model flags,
and turning flags into a config dataclass's keyword arguments."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_yaml(path: str) -> dict[str, Any]:
    """A ``--config`` file's options, with dashes in their names turned into underscores.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file does not hold a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a config file must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``--option key=value`` items as a mapping; values are read as YAML (``3``, ``true``, ``[a, b]``).

    Raises:
        ValueError: An item without ``=``.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Add the ``--model``, ``--dtype`` and ``--device`` flags to `p`."""
    g = p.add_argument_group("model")
    g.add_argument("--model", help="'builtin' (SmolLM2-135M-Instruct), a local HF directory, a .gguf file or a hub id")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="model dtype (default auto)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")


def comma_list(value: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [t.strip() for t in value.split(",") if t.strip()]


def flag_values(args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    """The ``--config`` file's settings overridden by the flags given (those of `keys` that are not None)."""
    values: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    for key in keys:
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    return values


def require(values: dict[str, Any], keys: Sequence[str]) -> None:
    """Refuse settings that lack one of `keys`, naming the flags to give.

    Raises:
        ValueError: A key missing or empty.
    """
    missing = [k for k in keys if not values.get(k)]
    if missing:
        raise ValueError("missing " + " and ".join("--" + m.replace("_", "-") for m in missing))
