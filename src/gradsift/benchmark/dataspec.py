"""A bench's data sets as configured: the `Source` files each set is mixed from, the `DataSpec` of a set and
the `DataConfig` of the whole bench (pool, targets with a held-out part, further named sets); and
`from_mapping`, which builds any of the bench's config dataclasses from a mapping and names the section at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gradsift.data.formats import FieldMap
from gradsift.data.load import OnInvalid
from gradsift.settings import field_names
from gradsift.settings import from_mapping as settings_from_mapping

SetKind = Literal["sft", "pair", "prompts", "mc"]
"""What a data set holds: examples, preference pairs, prompts only, or multiple-choice items."""


def fields_of(cls: type) -> set[str]:
    """The names a dataclass takes in its constructor."""
    return set(field_names(cls))


def from_mapping(cls: type, values: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping (``-`` in keys read as ``_``), naming an unknown key (with the
    closest valid one) and the config section `where` it is in (`gradsift.settings.from_mapping`).

    Raises:
        ValueError: Not a mapping, or an unknown key.
    """
    return settings_from_mapping(cls, values, where)


@dataclass
class Source:
    """One data file contributing records to a set.

    Attributes:
        path: File, saved dataset directory or ``hf:name`` (relative paths: from the config file's folder).
        name: Label of the source: prefix of its record ids (``name/id``) and its ``origin``; default the file
            name without suffixes.
        fmt: Force the record format (see `gradsift.data.formats.Format`).
        split: Part of a source with named parts.
        fields: Column names that differ from the format's defaults (`gradsift.data.formats.FieldMap`).
        task: Task label for every record (default: the record's own label; FLAN files: their file name).
        offset: Records skipped first (after `max_chars`), so two sets can take disjoint parts of one file.
        limit: Records taken (0: all), after `max_chars` and `offset`.
        take: ``random`` (a seeded sample; the bench's ``data_seed``) or ``first`` records.
        response: SFT sets only: ``rejected`` trains on a pair's rejected response (e.g. harmful completions);
            default ``chosen``.
        max_chars: Leave out records whose text (prompt and responses) is longer than this (0: no limit); keeps
            CPU runs short.
        prompt_field: Prompt sets: the prompt column when none of the usual names.
        on_invalid: ``raise`` at the first malformed record or ``skip`` them (public pools have a few).
    """

    path: str
    name: str | None = None
    fmt: str | None = None
    split: str | None = None
    fields: dict[str, str] | None = None
    task: str | None = None
    offset: int = 0
    limit: int = 0
    take: Literal["random", "first"] = "random"
    response: Literal["chosen", "rejected"] = "chosen"
    max_chars: int = 0
    prompt_field: str | None = None
    on_invalid: OnInvalid = "raise"

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError("a source needs a path")
        if self.name is None:
            base = Path(self.path).name
            for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"):
                base = base.removesuffix(suffix)
            self.name = base or self.path
        if "/" in self.name:
            raise ValueError(f"source name {self.name!r} must not contain '/' (it prefixes record ids)")
        if self.limit < 0 or self.max_chars < 0 or self.offset < 0:
            raise ValueError(f"source {self.name}: offset, limit and max_chars must be >= 0 (0: none)")
        if self.take not in ("random", "first"):
            raise ValueError(f"source {self.name}: take must be 'random' or 'first', got {self.take!r}")
        if self.response not in ("chosen", "rejected"):
            raise ValueError(f"source {self.name}: response must be 'chosen' or 'rejected', got {self.response!r}")
        if self.on_invalid not in ("raise", "skip"):
            raise ValueError(f"source {self.name}: on_invalid must be 'raise' or 'skip', got {self.on_invalid!r}")
        self.field_map()

    def field_map(self) -> FieldMap | None:
        return FieldMap(**self.fields) if self.fields else None


@dataclass
class DataSpec:
    """A set of records mixed from sources.

    Attributes:
        sources: Where the records come from.
        kind: ``sft`` (examples), ``pair`` (preference pairs), ``prompts`` (prompts only, e.g. harmful
            requests) or ``mc`` (multiple-choice items).
        shuffle: Shuffle the mixed records (seeded), so limits and the held-out split cut across sources.
        limit: Records kept after mixing (0: all).
        holdout: Targets only: this many records (taken from the end, after the shuffle) form the ``heldout``
            set for evaluation and are not given to the selectors.
    """

    sources: list[Source]
    kind: SetKind = "sft"
    shuffle: bool = True
    limit: int = 0
    holdout: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError("a data set needs at least one source")
        self.sources = [s if isinstance(s, Source) else from_mapping(Source, s, "source") for s in self.sources]
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names repeat ({names}); give each source a distinct name")
        if self.kind not in ("sft", "pair", "prompts", "mc"):
            raise ValueError(f"data set kind must be sft, pair, prompts or mc, got {self.kind!r}")
        if self.limit < 0 or self.holdout < 0:
            raise ValueError("limit and holdout must be >= 0")
        for s in self.sources:
            if s.response == "rejected" and self.kind != "sft":
                raise ValueError(f"source {s.name}: response 'rejected' applies to sft sets, not {self.kind}")


@dataclass
class DataConfig:
    """The bench's data.

    Attributes:
        pool: The candidate pool (kind ``sft`` or ``pair``, as the bench's `kind`).
        targets: Target examples given to target-aware selectors; `holdout` of them are kept for evaluation.
        sets: Further named sets for the benchmarks.
    """

    pool: DataSpec
    targets: DataSpec | None = None
    sets: dict[str, DataSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.pool, dict):
            self.pool = from_mapping(DataSpec, self.pool, "data.pool")
        if isinstance(self.targets, dict):
            self.targets = from_mapping(DataSpec, self.targets, "data.targets")
        if not isinstance(self.sets, dict):
            raise ValueError("data.sets must map set names to data sets")
        self.sets = {
            str(k): v if isinstance(v, DataSpec) else from_mapping(DataSpec, v, f"data.sets.{k}")
            for k, v in self.sets.items()
        }
        reserved = {"pool", "targets", "heldout"} & set(self.sets)
        if reserved:
            raise ValueError(f"data.sets may not be named {sorted(reserved)}: those names are the bench's own")
        if self.pool.holdout:
            raise ValueError("data.pool.holdout: only the targets have a held-out part")
        for name, spec in self.sets.items():
            if spec.holdout:
                raise ValueError(f"data.sets.{name}.holdout: only the targets have a held-out part")

    def names(self) -> dict[str, SetKind]:
        """Every set name a benchmark may use, with its kind."""
        out: dict[str, SetKind] = {"pool": self.pool.kind}
        if self.targets is not None:
            out["targets"] = self.targets.kind
            if self.targets.holdout:
                out["heldout"] = self.targets.kind
        out.update({k: v.kind for k, v in self.sets.items()})
        return out
