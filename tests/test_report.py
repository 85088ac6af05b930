"""Notebook 05's claim checks: a margin counts only beyond the test set's noise and the 5-point
bar, at every NPC, and a flat comparison is reported as 'no'."""
from __future__ import annotations

import pytest

from apl_core.report import claim_checks, gain_margin, noise_margin


def sweep(apl, benchmark, probe=0.3, random_probe=0.1, npcs=(10, 30, 100)):
    accuracy = {}
    for n in npcs:
        accuracy.update({("APL fine-tune", n): apl, ("BENCHMARK", n): benchmark,
                         ("APL linear probe", n): probe,
                         ("BENCHMARK linear probe", n): random_probe,
                         ("S-CNN", n): 0.2, ("S-ResNet-18", n): 0.25})
    return accuracy


def verdict(checks, words):
    rows = [c for c in checks if all(w in c["statement"] for w in words)]
    assert len(rows) == 1, (words, [c["statement"] for c in checks])
    return rows[0]["holds"]


def test_margins_follow_the_test_set_size():
    assert noise_margin(1000) == pytest.approx(2 * (0.25 / 1000) ** 0.5)  # 3.2 points
    assert noise_margin(100_000) == 0.02  # never below 2 points
    assert gain_margin(1000) == 0.05 and gain_margin(100) == pytest.approx(0.1)


def test_a_clear_gain_holds_and_a_flat_comparison_does_not():
    knn = {"APL": 0.35, "random": 0.1}
    good = claim_checks(sweep(0.30, 0.12), knn, 0.7, 16, 1000)
    assert verdict(good, ["APL fine-tune beats BENCHMARK", "few labels"]) == "yes"
    assert verdict(good, ["linear probe on APL", "few labels"]) == "yes"
    assert verdict(good, ["kNN"]) == "yes"
    assert all(c["holds"] == "yes" for c in good)
    flat = claim_checks(sweep(0.114, 0.115, probe=0.09, random_probe=0.1), {"a": 0.11, "r": 0.1},
                        0.3, 16, 1000)
    assert verdict(flat, ["APL fine-tune beats BENCHMARK", "few labels"]) == "no"
    assert verdict(flat, ["kNN"]) == "no"


def test_a_gain_below_five_points_or_at_one_npc_only_is_not_enough():
    accuracy = sweep(0.30, 0.12)
    accuracy[("APL fine-tune", 100)] = 0.15  # +3 points at NPC 100
    checks = claim_checks(accuracy, {}, 0.7, 16, 1000)
    every = [c for c in checks if c["statement"] == "... and at every NPC of the sweep"]
    assert [c["holds"] for c in every] == ["no", "yes"]
    assert "+3.0" in every[0]["measured"]


def test_the_puzzle_check_compares_with_three_times_chance():
    assert verdict(claim_checks(sweep(0.3, 0.1), {}, 0.19, 16, 1000), ["puzzle"]) == "yes"
    assert verdict(claim_checks(sweep(0.3, 0.1), {}, 0.18, 16, 1000), ["puzzle"]) == "no"
