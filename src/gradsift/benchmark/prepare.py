"""Steps run once before selection, each a LoRA fine-tune merged into the model: ``align`` (e.g. SFT on
refusals mixed with general data, so a small model refuses harmful requests) and then ``harmful_finetune``
(SFT on harmful completions, which breaks those refusals). The model after the last step is the base model of
every selection, fine-tune and the ``base`` row; ``original`` is the model before the steps, ``aligned`` the
model after ``align``.

A step with `Until` trains in rounds until a metric on a held-out set crosses its threshold (refusal rate at
least 80% after aligning, at most 20% after breaking): the model given to the step is checked first (no round
when it already passes), then each round trains a fresh LoRA for the step's training settings on the previous
round's merged model, merges it and checks again, up to ``max_rounds``. The learning-rate schedule restarts in
each round. Every round's model, check and training run is kept under ``out/prepare/<step>/`` (only the
latest merged model, to save disk), so a killed run resumes at the round it was in; ``step.json`` records
the checks and whether the threshold was reached. A step without `Until` trains once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradsift.atomic import write_json_atomic
from gradsift.benchmark.dataspec import DataSpec, fields_of, from_mapping
from gradsift.benchmark.metrics import METRIC_DIRECTIONS, PRIMARY_METRICS
from gradsift.benchmark.sets import Record, as_example, build_set, fingerprint, read_set, record_row
from gradsift.data.load import write_jsonl
from gradsift.evaluation.run import EvaluateConfig
from gradsift.model.load import ModelSettings
from gradsift.settings import check_keys
from gradsift.training.run import TrainConfig

TRAIN_OWN = {"data", "out", "kind", "model", "dtype", "device", "resume", "overwrite", "progress"}
"""`TrainConfig` fields a bench sets itself."""
EVAL_OWN = {"task", "data", "out", "model", "adapter", "dtype", "device", "progress"}
"""`EvaluateConfig` fields a bench sets itself."""
STEPS = ("align", "harmful_finetune")
"""The prepare steps, in the order they run."""


def check_train(values: Any, kind: str, where: str) -> None:
    """Check a mapping of `TrainConfig` fields (those the bench sets itself refused).

    Raises:
        ValueError: Not a mapping, a field the bench sets, an unknown field or an invalid value.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of training settings")
    own = sorted(set(values) & TRAIN_OWN)
    if own:
        raise ValueError(f"{where}: the bench sets {own} itself")
    check_keys(values, fields_of(TrainConfig) - TRAIN_OWN, where)
    TrainConfig(data="-", out="-", kind=kind, **values)  # type: ignore[arg-type]


@dataclass
class Until:
    """Train a prepare step in rounds until a metric on a held-out set crosses a threshold.

    Attributes:
        data: Name of the set checked (a name in ``data.sets``, disjoint from the step's training data).
        task: Evaluation task of the check (default ``refusal``).
        metric: Metric compared with the threshold (default: the task's primary metric).
        at_least: Stop once the metric is at least this (set exactly one of `at_least`, `at_most`).
        at_most: Stop once the metric is at most this.
        max_rounds: Rounds at most; the step stops there even below its threshold (reported).
        settings: Further `EvaluateConfig` fields of the check (max_new_tokens, gen_batch_size, ...).
    """

    data: str
    task: str = "refusal"
    metric: str | None = None
    at_least: float | None = None
    at_most: float | None = None
    max_rounds: int = 4
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError("until: set exactly one of at_least and at_most")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise ValueError(f"until: max_rounds must be a positive integer, got {self.max_rounds!r}")
        if not isinstance(self.settings, dict):
            raise ValueError("until: settings must be a mapping of evaluation settings")
        own = sorted(set(self.settings) & EVAL_OWN)
        if own:
            raise ValueError(f"until: the bench sets {own} itself")
        check_keys(self.settings, fields_of(EvaluateConfig) - EVAL_OWN, "until")
        kind = self.eval_config("-").kind
        if self.metric is None:
            self.metric = PRIMARY_METRICS[kind][0]
        elif self.metric not in METRIC_DIRECTIONS:
            raise ValueError(f"until: unknown metric {self.metric!r}; choose from {', '.join(METRIC_DIRECTIONS)}")

    def eval_config(self, data: str) -> EvaluateConfig:
        return EvaluateConfig(task=self.task, data=data, **self.settings)

    def met(self, value: float) -> bool:
        """Whether `value` reaches the threshold."""
        return value >= self.at_least if self.at_least is not None else value <= float(self.at_most)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.at_least is not None else '<='} {self.at_least or self.at_most}"


@dataclass
class PrepareStep:
    """A LoRA fine-tune merged into the model before selection.

    Attributes:
        data: Its training examples (an sft set; e.g. HH-RLHF pairs with ``response: rejected``).
        train: `TrainConfig` fields of a round (max_steps, lr, batch_size, ...).
        until: Train in rounds until a check passes (see `Until`); without it one round.
    """

    data: DataSpec
    train: dict[str, Any] = field(default_factory=dict)
    until: Until | None = None

    def validate(self, where: str) -> None:
        if isinstance(self.data, dict):
            self.data = from_mapping(DataSpec, self.data, f"{where}.data")
        if self.data.kind != "sft":
            raise ValueError(f"{where}.data must be an sft set")
        check_train(self.train, "sft", f"{where}.train")
        if isinstance(self.until, dict):
            self.until = from_mapping(Until, self.until, f"{where}.until")


@dataclass
class PrepareConfig:
    """Steps run once before selection (module docstring).

    Attributes:
        align: Teach the model what a later step breaks (e.g. refusals).
        harmful_finetune: Break the model's refusals.
    """

    align: PrepareStep | None = None
    harmful_finetune: PrepareStep | None = None

    def __post_init__(self) -> None:
        for name in STEPS:
            step = getattr(self, name)
            if isinstance(step, dict):
                step = from_mapping(PrepareStep, step, f"prepare.{name}")
                setattr(self, name, step)
            if step is not None:
                step.validate(f"prepare.{name}")

    def steps(self) -> list[tuple[str, PrepareStep]]:
        """The configured steps, in the order they run."""
        return [(name, getattr(self, name)) for name in STEPS if getattr(self, name) is not None]


@dataclass
class PrepareResult:
    """The models the steps made and what their checks measured.

    Attributes:
        models: ``original`` (the model given), ``aligned`` (after ``align``, when configured) and ``base``
            (after every step): model paths or names.
        steps: Per step: the checks before and after each round, the threshold and whether it was reached.
    """

    models: dict[str, str]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_prepare(
    prepare: PrepareConfig | None,
    model: str,
    settings: Callable[[str], ModelSettings],
    out: Path,
    data_seed: int,
    sets: Mapping[str, Sequence[Record]],
    set_paths: Mapping[str, Path],
    say: Callable[[str], None],
) -> PrepareResult:
    """Run the prepare steps (each resumed or reused from ``out/prepare``).

    Args:
        prepare: The steps, or None.
        model: The model given to the bench.
        settings: The model settings of a model path or name (dtype and device of the bench).
        out: The bench's working directory.
        data_seed: Seed of the steps' data mixing; round r trains with seed ``data_seed + r - 1``.
        sets: The bench's data sets (the checks read theirs from here).
        set_paths: Their files.
        say: Prints a progress line.
    """
    result = PrepareResult(models={"original": model, "base": model})
    if prepare is None:
        return result
    current, upstream = model, None
    configured = dict(prepare.steps())
    for name in STEPS:
        if name not in configured and (out / "prepare" / name / "identity.json").exists():
            shutil.rmtree(out / "prepare" / name)  # a step the config no longer has
    for name, step in configured.items():
        state = _Step(name, step, out / "prepare" / name, settings, data_seed, sets, set_paths, say).run(
            current, upstream
        )
        current, upstream = state["model"], state["identity"]
        result.steps[name] = state
        if name == "align":
            result.models["aligned"] = current
    result.models["base"] = current
    return result


class _Step:
    """One prepare step's rounds (module docstring)."""

    def __init__(
        self,
        name: str,
        step: PrepareStep,
        d: Path,
        settings: Callable[[str], ModelSettings],
        data_seed: int,
        sets: Mapping[str, Sequence[Record]],
        set_paths: Mapping[str, Path],
        say: Callable[[str], None],
    ) -> None:
        self.name, self.step, self.d, self.settings = name, step, d, settings
        self.data_seed, self.sets, self.set_paths, self.say = data_seed, sets, set_paths, say

    def run(self, model_in: str, upstream: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run (or reuse) the step on `model_in`; `upstream` is the identity of the step that made it.

        The identity covers the model given (its path and the step that wrote it, so a redone ``align`` redoes
        the break), the step's settings and the records of its check set; a stored step with another identity
        is redone.
        """
        state_path = self.d / "step.json"
        until = self.step.until
        identity = {
            "input": model_in,
            "after": upstream,
            "check_set": fingerprint(self.sets[until.data]) if until is not None else None,
            "step": json.loads(json.dumps(asdict(self.step), default=str)),
        }
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state.get("identity") == identity:
                return state
            shutil.rmtree(self.d)
        elif self.d.exists() and _read_json(self.d / "identity.json") != identity:
            # an unfinished step with other data or settings: its rounds' models and checks are stale
            shutil.rmtree(self.d)
        self.d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.d / "identity.json", identity)
        t0 = time.perf_counter()
        records, _ = build_set(self.step.data, self.name, self.data_seed)
        data_path = self.d / "train.jsonl"
        write_jsonl(data_path, [record_row(r) for r in records])
        checks: list[float] = []
        if until is not None:
            checks.append(self.check(model_in, self.d / "check-0.json"))
            self.say(f"prepare {self.name}: before training, {until.metric} {checks[0]:.3f} ({until.describe()})")
        current, rounds = model_in, 0
        max_rounds = until.max_rounds if until is not None else 1
        while rounds < max_rounds and not (until is not None and until.met(checks[-1])):
            rounds += 1
            current = self.train_round(rounds, current, data_path)
            if until is not None:
                checks.append(self.check(current, self.d / f"round-{rounds}" / "check.json"))
                self.say(f"prepare {self.name}: round {rounds}, {until.metric} {checks[-1]:.3f} ({until.describe()})")
        state = {
            "identity": identity,
            "model": current,
            "n_train": len(records),
            "rounds": rounds,
            "train": self.step.train,
            "until": asdict(until) if until is not None else None,
            "checks": checks,
            "met": until.met(checks[-1]) if until is not None else None,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_json_atomic(state_path, state)
        if until is not None and not state["met"]:
            self.say(f"prepare {self.name}: {until.describe()} not reached in {max_rounds} rounds ({checks[-1]:.3f})")
        return state

    def train_round(self, r: int, model_in: str, data_path: Path) -> str:
        """Train round `r` on `model_in`, merge, save; returns the merged model's path (reused when saved)."""
        from gradsift.model.load import load_model
        from gradsift.training.run import run_train

        rd = self.d / f"round-{r}"
        merged = rd / "model"
        if not (merged / "config.json").exists():
            tc = TrainConfig(
                data=str(data_path),
                out=str(rd / "train"),
                kind="sft",
                model=model_in,
                dtype=self.settings(model_in).dtype,
                device=self.settings(model_in).device,
                progress=True,
                **{"seed": self.data_seed + r - 1, **self.step.train},
            )
            lm = load_model(self.settings(model_in))
            result = run_train(tc, records=list(read_set(data_path, "sft")), loaded=lm)  # type: ignore[arg-type]
            tmp = rd / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            result.model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
            lm.tokenizer.save_pretrained(tmp)
            os.replace(tmp, merged)
        previous = self.d / f"round-{r - 1}" / "model"
        if r > 1 and previous.exists():
            shutil.rmtree(previous)  # only the latest merged model is needed to go on
        return str(merged)

    def check(self, model: str, path: Path) -> float:
        """The `Until` metric of `model` on its set (cached in `path`)."""
        from gradsift.evaluation.run import run_evaluate
        from gradsift.evaluation.tasks import write_results
        from gradsift.model.load import load_model

        until = self.step.until
        assert until is not None and until.metric is not None
        identity = {"model": model, "until": asdict(until)}
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("check_identity") == identity:
                return float(stored["metrics"][until.metric])
        records = [as_example(r) for r in self.sets[until.data]]
        lm = load_model(self.settings(model))
        result = run_evaluate(until.eval_config(str(self.set_paths[until.data])), records=records, loaded=lm)  # type: ignore[arg-type]
        result["check_identity"] = identity
        write_results(path, result)
        return float(result["metrics"][until.metric])


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
