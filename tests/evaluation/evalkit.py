"""Records shared by the task tests."""

from __future__ import annotations

from gradsift.data.records import Example


def ex(i, question, answer, task=None):
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example(id=f"e{i}", messages=msgs, task=task, source="mem.jsonl", line=i + 1)
