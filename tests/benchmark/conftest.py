"""The bench tests' demo data."""

from __future__ import annotations

import pytest
from benchkit import demo_data


@pytest.fixture
def demo(tmp_path):
    return demo_data(tmp_path)
