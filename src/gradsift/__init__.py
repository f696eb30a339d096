"""gradsift: pick the fine-tuning data worth training on.

The public API: one function per stage, with its config dataclass and result type.

| stage | function | config | result |
| --- | --- | --- | --- |
| select a budget of a pool | `select` | `SelectConfig` | `SelectResult` |
| per-example gradient features | `features` | `FeatureConfig` | `FeatureStore` |
| LoRA fine-tuning (SFT, DPO) | `train` | `TrainConfig` | `TrainResult` |
| task metrics | `evaluate` | `EvaluateConfig` | a results dict |
| compare selectors | `bench` | `BenchConfig` | `BenchResult` |

plus `demo_data`, the demo's generated pool and targets, `config_from` (a stage's config from a mapping such as
a YAML file), `methods_help` and `method_options` (the method registry), `rebuild_report` (rebuild a selection's
``report.html``) and `set_progress` (progress bars or log lines). The functions live in `gradsift.api`.

Names are resolved on first use (PEP 562), so ``import gradsift`` stays light: torch and the stages load
when a function or config is first touched.
"""

from gradsift.version import __version__

# No other imports at run time, not even `typing` or `importlib`: they would be most of this module's import
# time. Type checkers treat TYPE_CHECKING as True whatever its origin.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from gradsift.api import (
        bench,
        config_from,
        demo_data,
        evaluate,
        features,
        method_options,
        methods_help,
        rebuild_report,
        select,
        set_progress,
        train,
    )
    from gradsift.benchmark.config import BenchConfig
    from gradsift.benchmark.run import BenchResult
    from gradsift.evaluation.run import EvaluateConfig
    from gradsift.gradients.extract import FeatureConfig
    from gradsift.pipeline import SelectConfig, SelectResult
    from gradsift.store.features import FeatureStore
    from gradsift.training.common import TrainResult
    from gradsift.training.run import TrainConfig

# Public name -> the module that defines it.
_HOMES = {
    "select": "gradsift.api",
    "features": "gradsift.api",
    "train": "gradsift.api",
    "evaluate": "gradsift.api",
    "bench": "gradsift.api",
    "demo_data": "gradsift.api",
    "config_from": "gradsift.api",
    "methods_help": "gradsift.api",
    "method_options": "gradsift.api",
    "rebuild_report": "gradsift.api",
    "set_progress": "gradsift.api",
    "SelectConfig": "gradsift.pipeline",
    "SelectResult": "gradsift.pipeline",
    "FeatureConfig": "gradsift.gradients.extract",
    "FeatureStore": "gradsift.store.features",
    "TrainConfig": "gradsift.training.run",
    "TrainResult": "gradsift.training.common",
    "EvaluateConfig": "gradsift.evaluation.run",
    "BenchConfig": "gradsift.benchmark.config",
    "BenchResult": "gradsift.benchmark.run",
}

__all__ = [
    "BenchConfig",
    "BenchResult",
    "EvaluateConfig",
    "FeatureConfig",
    "FeatureStore",
    "SelectConfig",
    "SelectResult",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "bench",
    "config_from",
    "demo_data",
    "evaluate",
    "features",
    "method_options",
    "methods_help",
    "rebuild_report",
    "select",
    "set_progress",
    "train",
]


def __getattr__(name: str) -> "Any":
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gradsift' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
