"""Canonical records every reader produces and every later stage consumes.

A candidate or target example is a chat (`messages`, loss on the assistant turns);
a preference pair is a prompt chat plus a chosen and a rejected assistant response.
The original record is kept intact in `raw` so outputs can be written in the user's format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What a data file holds."""

    SFT = "sft"
    TARGET = "target"
    PAIR = "pair"


ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One SFT candidate or target example.

    Attributes:
        id: Stable id: the record's own `id` field when given, else a content hash.
        messages: Chat turns `{"role": "system"|"user"|"assistant", "content": str}`; at least one
            assistant turn. The loss covers the assistant turns.
        task: Optional task/skill label (targets: the target task; pools: a known source label).
        rejected: Optional unwanted response to the last prompt (PRISM's `y-`).
        raw: The original record, unchanged.
        source: File the record came from.
        line: 1-based line (JSONL/CSV) or record index (JSON, Parquet) in `source`.
    """

    id: str
    messages: list[dict[str, str]]
    task: str | None = None
    rejected: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int = 0

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Turns before the last assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def response(self) -> str:
        """Content of the last assistant turn."""
        return [m for m in self.messages if m["role"] == "assistant"][-1]["content"]


@dataclass
class Pair:
    """One preference pair `(x, y_w, y_l)`.

    Attributes:
        id: Stable id: the record's own `id` field when given, else a content hash.
        prompt: Chat turns up to and including the last user turn.
        chosen: The preferred assistant response `y_w`.
        rejected: The dispreferred assistant response `y_l`.
        task: Optional label.
        raw: The original record, unchanged.
        source: File the record came from.
        line: 1-based line or record index in `source`.
    """

    id: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    task: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int = 0


def content_id(payload: Any) -> str:
    """Stable 16-hex-digit id from JSON-serialisable content (sorted keys, UTF-8)."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def fingerprint(records: list[Example] | list[Pair]) -> str:
    """Fingerprint of a data set: hash of ids and contents, in order."""
    h = hashlib.sha256()
    for r in records:
        if isinstance(r, Pair):
            payload: Any = [r.id, r.prompt, r.chosen, r.rejected]
        else:
            payload = [r.id, r.messages, r.rejected]
        h.update(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:16]
