"""What the seeds and the test set can tell apart (apl_core.stats)."""
from __future__ import annotations

import math

import pytest

from apl_core.stats import (
    T_975, detectable_difference, mean_sd, seed_half_width, sampling_noise, verdict,
)


def test_mean_sd_in_percent_and_one_value_alone():
    assert mean_sd([0.2, 0.3]) == "25.0 ± 7.1"
    assert mean_sd([0.253]) == "25.3"
    assert mean_sd([2.0, 4.0], scale=1, digits=2) == "3.00 ± 1.41"


def test_sampling_noise_is_two_standard_errors_of_a_difference():
    # p = 0.5 on 1,000 images: SE sqrt(0.25 / 1000) = 1.58 points, x sqrt(2) x 2 = 4.47
    assert sampling_noise(0.5, 1000) == pytest.approx(0.04472, abs=1e-5)
    assert sampling_noise(0.1, 1000) < sampling_noise(0.5, 1000)
    assert sampling_noise(0.5, 4000) == pytest.approx(sampling_noise(0.5, 1000) / 2)
    assert sampling_noise(0.5, 1) == pytest.approx(2 * math.sqrt(0.5))  # one image is enough
    with pytest.raises(ValueError, match="images=0 is invalid"):
        sampling_noise(0.5, 0)


def test_seed_half_width_uses_students_t():
    # three seeds with sd 0.02: 4.303 x 0.02 / sqrt(3)
    assert seed_half_width([0.10, 0.12, 0.14]) == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert seed_half_width([0.1]) == math.inf  # one seed shows no spread
    assert seed_half_width([0.1, 0.3]) == pytest.approx(12.706 * 0.1)  # sd 0.141 / sqrt(2)
    with pytest.raises(ValueError, match="11 seeds: T_975 holds t for 2 to 10 seeds"):
        seed_half_width([0.1 * i for i in range(11)])
    assert T_975[2] == 4.303
    ten = [0.1 * (i % 2) for i in range(10)]  # the most seeds the table holds
    assert seed_half_width(ten) == pytest.approx(2.262 * 0.0527046 / math.sqrt(10), rel=1e-4)


def test_detectable_difference_is_the_larger_noise():
    steady = [0.10, 0.10, 0.10]  # no seed spread: the test set decides
    assert detectable_difference(steady, 0.5, 1000) == pytest.approx(sampling_noise(0.5, 1000))
    spread = [0.0, 0.1, 0.2]  # wide: the seeds decide
    assert detectable_difference(spread, 0.5, 1000) == pytest.approx(seed_half_width(spread))


@pytest.mark.parametrize("differences, expected", [
    ([0.10, 0.11, 0.12], "higher"),
    ([-0.10, -0.11, -0.12], "lower"),
    ([0.03, 0.03, 0.03], "no detectable difference"),  # under the test set's 4.5 points
    ([0.20, 0.01, 0.20], "no detectable difference"),  # the seeds spread too widely
    ([0.15, -0.01, 0.15], "no detectable difference"),  # a sign changes
])
def test_verdict_calls_a_difference_only_beyond_the_noise_on_every_seed(differences, expected):
    assert verdict(differences, 0.5, 1000) == expected


def test_a_zero_difference_on_one_seed_is_no_sign_and_beyond_means_strictly_beyond():
    ahead = [0.0] + [0.3] * 9  # beyond the noise on average, but one seed shows nothing
    assert verdict(ahead, 0.5, 1000) == "no detectable difference"
    assert verdict([-d for d in ahead], 0.5, 1000) == "no detectable difference"
    mixed = [-0.1] + [0.5] * 9  # one seed below, however far the rest are above
    assert verdict(mixed, 0.5, 1000) == "no detectable difference"
    edge = sampling_noise(0.5, 1000)
    assert verdict([edge] * 3, 0.5, 1000) == "no detectable difference"  # exactly at the noise
