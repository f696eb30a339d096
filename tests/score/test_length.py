"""Length scores (score/length.py)."""

import numpy as np
import pytest

from gradsift.score.length import length_scores


def test_long_keeps_the_longest_and_short_the_shortest():
    lengths = [3, 10, 1]
    np.testing.assert_array_equal(length_scores(lengths), [3.0, 10.0, 1.0])
    np.testing.assert_array_equal(length_scores(lengths, order="short"), [-3.0, -10.0, -1.0])
    assert length_scores(lengths).dtype == np.float64


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="length_order must be 'long' or 'short'"):
        length_scores([1], order="tall")  # type: ignore[arg-type]
