"""Shared fixtures: tiny models and tokenizers from tests/testkit.py, saved model directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from testkit import make_tiny_model, make_tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_tiny_model(len(tiny_tokenizer))


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tiny_tokenizer, tiny_model) -> Path:
    """A tiny model and tokenizer saved as a local Hugging Face directory."""
    d = tmp_path / "tiny-model"
    tiny_model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d
