"""The comparison statistics (utils/stats.py) against numbers worked out by hand."""
import math

import pytest

from utils.stats import gap_recovered, mean_std, paired_bootstrap


def test_mean_and_sample_std():
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3: sqrt(5/3)
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))  # 1.2910, not the population 1.1180
    assert mean_std([80.0, 82.0, 84.0]) == (82.0, 2.0)
    assert math.isnan(mean_std([7.0])[1])
    with pytest.raises(ValueError):
        mean_std([])


def test_gap_recovered():
    assert gap_recovered(60.0, 40.0, 80.0) == 0.5
    assert gap_recovered(40.0, 40.0, 80.0) == 0.0
    assert gap_recovered(80.0, 40.0, 80.0) == 1.0
    assert gap_recovered(30.0, 40.0, 80.0) == -0.25  # below linear probing
    assert gap_recovered(50.0, 60.0, 60.0) is None  # no gap to recover


def test_paired_bootstrap_interval_worked_out_by_hand():
    # Four videos, the first right for A only: difference 25 points. A resample's difference is
    # 25 k with k ~ Binomial(4, 1/4) right-for-A videos: P(k=0) = 0.316 > 2.5%, so the lower
    # bound is 0; P(k>=3) = 0.0508 > 2.5% > P(k=4) = 0.0039, so the upper bound is 75.
    d = paired_bootstrap([1, 0, 0, 0], [0, 0, 0, 0], resamples=20000, seed=0)
    assert d.diff == 25.0
    assert (d.low, d.high) == (0.0, 75.0)
    assert (d.videos, d.resamples, d.level) == (4, 20000, 0.95)


def test_paired_bootstrap_pairs_the_videos():
    # B is A shifted by one video in every pair: per-video differences are all +50 points, so
    # every resample gives exactly 50 (unpaired resampling would spread it).
    a = [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]
    b = [0.5, 0.0, 0.5, 0.0, 0.5, 0.0]
    d = paired_bootstrap(a, b, resamples=500, seed=3)
    assert (d.diff, d.low, d.high) == pytest.approx((50.0, 50.0, 50.0))
    # The same seed gives the same interval; the interval holds the point estimate.
    x = [1, 1, 0, 1, 0, 0, 1, 1, 0, 1]
    y = [0, 1, 0, 0, 0, 1, 1, 0, 0, 0]
    first, again = (paired_bootstrap(x, y, 2000, seed=7) for _ in range(2))
    assert first == again
    assert first.low <= first.diff == 30.0 <= first.high
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1], 10, 0)
