"""IFD ratio and its drop rule (score/ifd.py)."""

import numpy as np

from gradsift.score.ifd import ifd_ratio, ifd_scores


def test_ratio_is_conditioned_over_alone_without_warnings():
    with np.errstate(all="raise"):
        ifd = ifd_ratio([1.0, 3.0, np.nan, 1.0], [2.0, 2.0, 1.0, 0.0])
    np.testing.assert_array_equal(ifd, [0.5, 1.5, np.nan, np.inf])


def test_ifd_at_or_above_the_limit_and_undefined_ifd_are_never_selected():
    ifd = np.array([0.5, 1.0, 1.5, np.nan, np.inf, 0.99])
    np.testing.assert_array_equal(ifd_scores(ifd), [0.5, np.nan, np.nan, np.nan, np.nan, 0.99])
    np.testing.assert_array_equal(ifd_scores(ifd, ifd_max=2.0), [0.5, 1.0, 1.5, np.nan, np.nan, 0.99])
