"""What the seeds and the test set can tell apart (apl_core.stats)."""
from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from apl_core.stats import (
    T_975, decode_mask, detectable_difference, equivalence, longer_wins, mcnemar_p,
    mcnemar_two_sided_p, mean_sd, paired_counts, seed_half_width, sampling_noise, verdict,
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


# ---------------------------------------------------------------- McNemar's exact test

@pytest.mark.parametrize("wins, losses, p", [
    (8, 2, 56 / 1024),  # P(X >= 8), X ~ Binomial(10, 1/2): (45 + 10 + 1) / 2^10
    (9, 1, 11 / 1024),
    (2, 8, 1013 / 1024),  # losing is no evidence of winning
    (5, 5, 638 / 1024),
    (1, 0, 0.5),
    (0, 0, 1.0),  # no image tells the runs apart
    (0, 3, 1.0),
])
def test_mcnemar_p_is_the_binomial_tail_of_the_discordant_images(wins, losses, p):
    assert mcnemar_p(wins, losses) == pytest.approx(p, abs=1e-12)


def test_mcnemar_p_matches_scipys_binomial_test_and_refuses_negative_counts():
    for wins, losses in ((30, 12), (12, 30), (60, 41), (3, 250)):
        expected = scipy_stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
        assert mcnemar_p(wins, losses) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="wins=-1, losses=2: counts of images cannot be negative"):
        mcnemar_p(-1, 2)
    with pytest.raises(ValueError, match="cannot be negative"):
        mcnemar_p(2, -1)


def test_decode_mask_reads_bit_i_as_image_i():
    assert decode_mask("5", 3) == [True, False, True]
    assert decode_mask("0a", 8) == [False, True, False, True, False, False, False, False]
    assert decode_mask("0", 2) == [False, False]
    with pytest.raises(ValueError, match="marks an image past the 2 it covers"):
        decode_mask("4", 2)


def mask(correct: list[bool]) -> str:
    return f"{sum(1 << i for i, c in enumerate(correct) if c):x}"


def test_a_longer_run_wins_only_by_the_paired_test_on_the_same_images():
    # 10 images: the longer run gets images 0-8 right, the shorter 0 and 9: 8 wins, 1 loss
    shorter = {"val_correct": mask([i in (0, 9) for i in range(10)]), "val_images": 10}
    longer = {"val_correct": mask([i < 9 for i in range(10)]), "val_images": 10}
    result = longer_wins(shorter, longer)
    assert (result["wins"], result["losses"]) == (8, 1)
    assert result["p"] == pytest.approx(10 / 512) and result["better"]
    assert not longer_wins(longer, shorter)["better"]
    assert not longer_wins(shorter, longer, alpha=0.01)["better"]  # p = 0.0195
    # the same accuracy gain on images both runs share is no evidence: 2 wins, 0 losses
    close = {"val_correct": mask([i in (0, 1, 9) for i in range(10)]), "val_images": 10}
    tie = {"val_correct": mask([i in (0, 1, 2, 3, 9) for i in range(10)]), "val_images": 10}
    assert longer_wins(close, tie) == {"wins": 2, "losses": 0, "p": 0.25, "better": False}
    with pytest.raises(ValueError, match="10 and 12 validation images cannot be paired"):
        longer_wins(shorter, {**longer, "val_images": 12})


def test_two_runs_differ_by_the_two_sided_test_whichever_side_won():
    assert mcnemar_two_sided_p(8, 1) == pytest.approx(2 * 10 / 512)
    assert mcnemar_two_sided_p(1, 8) == mcnemar_two_sided_p(8, 1)
    for wins, losses in ((8, 1), (3, 5), (12, 4)):
        expected = scipy_stats.binomtest(wins, wins + losses, 0.5).pvalue
        assert mcnemar_two_sided_p(wins, losses) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_two_sided_p(3, 3) == 1.0 and mcnemar_two_sided_p(0, 0) == 1.0  # never above 1
    first = {"val_correct": mask([i in (0, 9) for i in range(10)]), "val_images": 10}
    second = {"val_correct": mask([i < 9 for i in range(10)]), "val_images": 10}
    assert paired_counts(first, second) == (8, 1) and paired_counts(second, first) == (1, 8)


# ---------------------------------------------------------------- equivalence (TOST)

def test_equivalence_is_shown_when_both_one_sided_tests_reject_the_margin():
    differences = [0.01, -0.01, 0.02, 0.0, 0.01]
    result = equivalence(differences, 0.05)
    lower = scipy_stats.ttest_1samp(differences, -0.05, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(differences, 0.05, alternative="less").pvalue
    assert result["verdict"] == "shown"
    assert result["p_within"] == pytest.approx(max(lower, upper))
    assert result["mean"] == pytest.approx(0.006) and result["seeds"] == 5
    assert result["margin"] == 0.05
    # the 90 % interval: inside the margins exactly when both one-sided tests reject them
    half = scipy_stats.t.ppf(0.95, 4) * scipy_stats.sem(differences)
    assert result["interval"] == pytest.approx((0.006 - half, 0.006 + half))
    assert -0.05 < result["interval"][0] and result["interval"][1] < 0.05
    # the same differences against a margin they do not clear
    assert equivalence(differences, 0.015)["verdict"] == "not shown"


def test_equivalence_is_refuted_beyond_the_margin_on_either_side():
    below = [-0.09, -0.08, -0.10, -0.085, -0.095]
    result = equivalence(below, 0.05)
    assert result["verdict"] == "refuted"
    expected = scipy_stats.ttest_1samp(below, -0.05, alternative="less").pvalue
    assert result["p_beyond"] == pytest.approx(expected)
    assert equivalence([-d for d in below], 0.05)["verdict"] == "refuted"  # far above too


def test_equivalence_not_shown_when_the_seeds_spread_too_wide_to_tell():
    # the mean (-1 point) is within 5, but three draws that spread by 3 points cannot show
    # it: the 90 % interval reaches past -5
    wide = [-0.04, 0.02, -0.01]
    result = equivalence(wide, 0.05)
    assert result["verdict"] == "not shown"
    assert 0.05 < result["p_within"] < 1 and result["p_beyond"] > 0.05
    assert equivalence(wide * 2, 0.05)["verdict"] == "shown"  # six draws of the same spread


def test_equivalence_of_identical_differences_and_its_refusals():
    assert equivalence([0.01, 0.01, 0.01], 0.05)["verdict"] == "shown"
    assert equivalence([0.01, 0.01, 0.01], 0.05)["interval"] == pytest.approx((0.01, 0.01))
    assert equivalence([0.06, 0.06], 0.05)["verdict"] == "refuted"
    exactly = equivalence([0.05, 0.05], 0.05)
    assert (exactly["verdict"], exactly["p_within"], exactly["p_beyond"]) == ("not shown", 0.5, 0.5)
    with pytest.raises(ValueError, match="1 difference\\(s\\): an equivalence test needs two"):
        equivalence([0.01], 0.05)
    with pytest.raises(ValueError, match="margin=0 is invalid"):
        equivalence([0.01, 0.02], 0)
