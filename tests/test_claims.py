"""The claim (apl_core.claims): on one seed a margin counts only beyond the test set's noise
and the 5-point bar; over seeds a gain is a paired difference beyond the detectable difference
and "competitive" an equivalence test, each row naming its test, a margin whose side was still
rising is a bound, and too few seeds say so."""
from __future__ import annotations

import pytest

from apl_core import claims
from apl_core.claims import (
    EQUIVALENCE, ONE_RUN, ONE_SEED_BAR, ONE_SEED_NOISE, PAIRED_DIFFERENCE, claim_checks,
    claim_table, claim_tests, gain_margin, margin_table, noise_margin,
)
from apl_core.tables import markdown_table


def sweep(apl, benchmark, npcs=(10, 30, 100)):
    accuracy = {}
    for n in npcs:
        accuracy.update({("APL fine-tune", n): apl, ("BENCHMARK", n): benchmark,
                         ("BENCHMARK + positions", n): benchmark,
                         ("S-CNN", n): 0.2, ("S-ResNet-18", n): 0.25})
    return accuracy


def features(apl_knn, random_knn, apl_probe=0.4, random_probe=0.1, npc=100):
    return [{"npc": npc, "features": {
        "APL-pretrained features": {"knn_top1": apl_knn, "probe_top1": apl_probe},
        "random-init features": {"knn_top1": random_knn, "probe_top1": random_probe}}}]


def verdict(checks, words):
    rows = [c for c in checks if all(w in c["statement"] for w in words)]
    assert len(rows) == 1, (words, [c["statement"] for c in checks])
    return rows[0]["holds"]


def seeds_results(margins=(0.15, 0.12, 0.03), cnn=0.3):
    """A seed per margin: APL fine-tune ahead of both BENCHMARKs by `margins` at every NPC, the
    CNNs at `cnn` and `cnn - 0.1`, APL's features ahead by 20 - seed points (kNN); every run
    scored on 1,000 test images."""
    rows = []
    for seed, margin in enumerate(margins):
        for npc in (10, 100):
            for method, acc in (("APL fine-tune", 0.3 + margin), ("BENCHMARK", 0.3),
                                ("BENCHMARK + positions", 0.3), ("S-CNN", cnn - 0.1),
                                ("S-ResNet-18", cnn)):
                rows.append({"method": method, "npc": npc, "seed": seed, "test_top1": acc,
                             "test_images": 1000, "run": f"{method}-{npc}-{seed}"})
            rows.append({"run": f"features-seed{seed}-npc{npc}", "seed": seed, "npc": npc,
                         "features": features(0.3, 0.1 + 0.01 * seed, 0.4, 0.1)[0]["features"]})
    return {"profile": "quick", "command": "python experiments/converged_seeds.py",
            "trials": rows}


def test_margins_follow_the_test_set_size():
    assert noise_margin(1000) == pytest.approx(2 * (0.25 / 1000) ** 0.5)  # 3.2 points
    assert noise_margin(100_000) == 0.02  # never below 2 points
    assert gain_margin(1000) == 0.05 and gain_margin(100) == pytest.approx(0.1)


def test_a_clear_gain_holds_and_a_flat_comparison_does_not():
    good = claim_checks(sweep(0.30, 0.12), features(0.35, 0.1), 0.7, 16, 1000)
    assert verdict(good, ["APL fine-tune beats BENCHMARK", "few labels"]) == "yes"
    assert verdict(good, ["linear probe on APL"]) == "yes"
    assert verdict(good, ["kNN on APL"]) == "yes"
    assert all(c["holds"] == "yes" for c in good)
    flat = claim_checks(sweep(0.114, 0.115), features(0.11, 0.1, 0.09, 0.1), 0.3, 16, 1000)
    assert verdict(flat, ["APL fine-tune beats BENCHMARK", "few labels"]) == "no"
    assert verdict(flat, ["kNN on APL"]) == "no" and verdict(flat, ["linear probe"]) == "no"


def test_a_gain_below_five_points_or_at_one_npc_only_is_not_enough():
    accuracy = sweep(0.30, 0.12)
    accuracy[("APL fine-tune", 100)] = 0.15  # +3 points at NPC 100
    checks = claim_checks(accuracy, [], 0.7, 16, 1000)
    every = [c for c in checks if c["statement"] == "... and at every NPC of the sweep"]
    assert [c["holds"] for c in every] == ["no", "no"]
    assert "+3.0" in every[0]["measured"]


def test_the_puzzle_check_compares_with_three_times_chance():
    assert verdict(claim_checks(sweep(0.3, 0.1), [], 0.19, 16, 1000), ["puzzle"]) == "yes"
    assert verdict(claim_checks(sweep(0.3, 0.1), [], 0.18, 16, 1000), ["puzzle"]) == "no"


# 64 test images: both margins are 1 / sqrt(64) = 12.5 points,
# exact in binary like every accuracy below, so the margins can sit exactly on the thresholds.
AT_THRESHOLD = {("APL fine-tune", 10): 0.5, ("BENCHMARK", 10): 0.375,
                ("BENCHMARK + positions", 10): 0.4375, ("S-CNN", 10): 0.5625,
                ("S-ResNet-18", 10): 0.25, ("APL fine-tune", 30): 0.75, ("BENCHMARK", 30): 0.625,
                ("S-CNN", 30): 0.75}


def test_claim_rows_state_each_threshold_and_a_margin_exactly_at_it_holds():
    checks = claim_checks(AT_THRESHOLD, features(0.5, 0.375, 0.25, 0.125, npc=30),
                          position_top1=3 / 16, positions=16, test_images=64)
    by = "by 12.5 points or more"
    assert checks == [
        {"statement": "the puzzle is learned: held-out position accuracy far above chance (> 3x)",
         "test": ONE_RUN, "holds": "no", "measured": "18.8% vs chance 6.2% (3.0x)"},
        {"statement": "the classes are learned at all at NPC 10: the best method beats chance "
                      "(10%) by more than 12.5 points", "test": ONE_SEED_NOISE, "holds": "yes",
         "measured": "best: S-CNN, 56.2%"},
        {"statement": "the classes are learned at all at NPC 30: the best method beats chance "
                      "(10%) by more than 12.5 points", "test": ONE_SEED_NOISE, "holds": "yes",
         "measured": "best: APL fine-tune, 75.0%"},
        {"statement": f"with few labels (NPC 10), APL fine-tune beats BENCHMARK (same model, "
                      f"random init) {by}", "test": ONE_SEED_BAR, "holds": "yes",
         "measured": "+12.5 points"},
        {"statement": "... and at every NPC of the sweep", "test": ONE_SEED_BAR, "holds": "yes",
         "measured": "at NPC [10, 30] of [10, 30]; margins +12.5, +12.5 points"},
        {"statement": f"with few labels (NPC 10), APL fine-tune, without positions, beats the "
                      f"same transformer with positional embeddings from scratch (a ViT) {by}",
         "test": ONE_SEED_BAR, "holds": "no", "measured": "+6.2 points"},
        # BENCHMARK + positions did not run at NPC 30: no margin there, so no win
        {"statement": "... and at every NPC of the sweep", "test": ONE_SEED_BAR, "holds": "no",
         "measured": "at NPC [] of [10, 30]; margins +6.2, – points"},
        {"statement": "competitive with the CNN baselines at NPC 10 (within 5 points of the best, "
                      "S-CNN, or better, with something above chance)", "test": ONE_SEED_BAR,
         "holds": "no", "measured": "-6.2 points vs S-CNN"},
        {"statement": "competitive with the CNN baselines at NPC 30 (within 5 points of the best, "
                      "S-CNN, or better, with something above chance)", "test": ONE_SEED_BAR,
         "holds": "yes", "measured": "+0.0 points vs S-CNN"},
        {"statement": f"the features alone carry class information: the linear probe on APL "
                      f"features beats it on random-init features {by} (NPC 30)",
         "test": ONE_SEED_BAR, "holds": "yes", "measured": "25.0% vs 12.5%"},
        {"statement": f"the features alone carry class information: the kNN on APL features "
                      f"beats it on random-init features {by} (NPC 30)",
         "test": ONE_SEED_BAR, "holds": "yes", "measured": "50.0% vs 37.5%"},
    ]


COMPETITIVE = ("competitive with the CNN baselines at NPC 10 (within 5 points of the best, {}, "
               "or better, with something above chance)")
LEARNED = ("the classes are learned at all at NPC 10: the best method beats chance (10%) by more "
           "than 3.16 points")
AT_CHANCE_MARGIN = claims.CHANCE + noise_margin(1000)  # 13.2%: not above it


@pytest.mark.parametrize("apl, cnn, resnet, expected", [
    (0.12, 0.11, 0.16, [(LEARNED, "yes", "best: S-ResNet-18, 16.0%"),
                        (COMPETITIVE.format("S-ResNet-18"), "yes", "-4.0 points vs S-ResNet-18")]),
    # 5 points behind is within 5 points; 5.1 is not
    (0.11, 0.12, 0.16, [(LEARNED, "yes", "best: S-ResNet-18, 16.0%"),
                        (COMPETITIVE.format("S-ResNet-18"), "yes", "-5.0 points vs S-ResNet-18")]),
    (0.109, 0.12, 0.16, [(LEARNED, "yes", "best: S-ResNet-18, 16.0%"),
                         (COMPETITIVE.format("S-ResNet-18"), "no", "-5.1 points vs S-ResNet-18")]),
    (AT_CHANCE_MARGIN, 0.12, 0.11, [(LEARNED, "no", "best: APL fine-tune, 13.2%"),
                                    (COMPETITIVE.format("S-CNN"), "no", "+1.2 points vs S-CNN")]),
    (0.3, None, None, [(LEARNED, "yes", "best: APL fine-tune, 30.0%")]),
])
def test_apl_is_competitive_within_five_points_of_the_best_cnn_when_something_is_learned(
        apl, cnn, resnet, expected):
    accuracy = {("APL fine-tune", 10): apl}
    accuracy.update({(m, 10): acc for m, acc in [("S-CNN", cnn), ("S-ResNet-18", resnet)] if acc})
    rows = claim_checks(accuracy, [], 0.7, 16, 1000)[1:]  # after the puzzle's row
    assert [(r["statement"], r["holds"], r["measured"]) for r in rows] == expected


def test_margin_table_gives_every_paired_margin_per_seed():
    margins = markdown_table(margin_table(seeds_results()))
    assert margins.splitlines()[0] == ("| margin (points) | NPC | per seed | mean ± sd | smallest "
                                       "| converged |")
    assert ("| APL fine-tune - BENCHMARK | 10 | +15.0 (seed 0), +12.0 (seed 1), +3.0 (seed 2) "
            "| 10.0 ± 6.2 | +3.0 | yes |") in margins
    assert ("| APL fine-tune - the better CNN | 100 | +15.0 (seed 0), +12.0 (seed 1), "
            "+3.0 (seed 2) | 10.0 ± 6.2 | +3.0 | yes |") in margins
    assert margins.splitlines()[-1] == ("| kNN: APL - random-init features | 100 | +20.0 (seed 0), "
                                        "+19.0 (seed 1), +18.0 (seed 2) | 19.0 ± 1.0 | +18.0 "
                                        "| – |")  # no search behind the frozen features


def choice(convergence="shown"):
    """A search's choice (search.choose) as the seeds file's header keeps it."""
    return {"val_top1": 0.5, "convergence": convergence}


def test_a_margin_whose_side_was_still_rising_is_marked_as_a_bound():
    seeds = seeds_results()
    rising = choice("still improving at the cap")
    seeds["chosen"] = {  # still improving at the longest run, or converged (or not yet)
        "BENCHMARK + positions|100": rising, "BENCHMARK|100": choice("pending"),
        "APL fine-tune|10": rising, "BENCHMARK + positions|10": rising,
        "S-ResNet-18|10": rising, "S-CNN|100": choice(), "S-CNN|10": {"val_top1": 0.5}}
    assert claims.still_rising(seeds) == {("BENCHMARK + positions", 100), ("APL fine-tune", 10),
                                          ("BENCHMARK + positions", 10), ("S-ResNet-18", 10)}
    converged = {(row["margin (points)"], row["NPC"]): row["converged"]
                 for row in margin_table(seeds)}
    assert converged[("APL fine-tune - BENCHMARK + positions", 100)] == (
        "no: BENCHMARK + positions still rising, so an upper bound")
    assert converged[("APL fine-tune - BENCHMARK", 100)] == "yes"  # not shown rising
    assert converged[("APL fine-tune - BENCHMARK", 10)] == (
        "no: APL fine-tune still rising, so a lower bound")
    assert converged[("APL fine-tune - BENCHMARK + positions", 10)] == (
        "no: APL fine-tune, BENCHMARK + positions still rising, so no bound either way")
    assert converged[("APL fine-tune - the better CNN", 10)] == (
        "no: APL fine-tune, S-ResNet-18 still rising, so no bound either way")
    assert converged[("APL fine-tune - the better CNN", 100)] == "yes"
    assert converged[("kNN: APL - random-init features", 10)] == "–"
    tests = {c["statement"]: c for c in claim_tests(seeds, 1000)}
    vit = ("APL fine-tune, without positions, beats the same transformer with positional "
           "embeddings from scratch (a ViT)")
    assert tests[f"{vit} at NPC 100"]["measured"] == (
        "10.0 ± 6.2 points over 3 seeds, smallest +3.0; detectable 15.5; BENCHMARK + positions "
        "still rising, so an upper bound")
    assert tests[f"{vit} at NPC 10"]["measured"].endswith(
        "; APL fine-tune, BENCHMARK + positions still rising, so no bound either way")
    assert claims.still_rising(seeds_results()) == set()  # no search behind the seeds


def test_a_seed_that_lacks_a_run_is_left_out_of_its_margins():
    seeds = seeds_results()
    seeds["trials"] = [r for r in seeds["trials"]
                       if (r.get("method"), r["npc"], r["seed"]) != ("BENCHMARK", 10, 2)]
    assert ("| APL fine-tune - BENCHMARK | 10 | +15.0 (seed 0), +12.0 (seed 1) | 13.5 ± 2.1 "
            "| +12.0 |") in markdown_table(margin_table(seeds))


BEATS = "APL fine-tune beats BENCHMARK (same model, random init) at NPC 10"
COMPETES = "APL fine-tune is competitive with the better CNN of each seed at NPC 10"


def test_a_gain_over_seeds_holds_beyond_the_detectable_difference_and_names_its_test():
    # 15, 14, 16 points: the seeds' 95 % half-width 2.5, the test set's noise 4.3 points
    tests = {c["statement"]: c for c in claim_tests(seeds_results((0.15, 0.14, 0.16)), 1000)}
    assert tests[BEATS] == {"statement": BEATS, "test": PAIRED_DIFFERENCE, "holds": "yes",
                            "measured": "15.0 ± 1.0 points over 3 seeds, smallest +14.0; "
                                        "detectable 4.3"}
    # the mean is 10 points in both, the spread decides: 3, 12, 15 cannot show it
    spread = {c["statement"]: c for c in claim_tests(seeds_results((0.15, 0.12, 0.03)), 1000)}
    assert spread[BEATS]["holds"] == "no"
    assert spread[BEATS]["measured"] == ("10.0 ± 6.2 points over 3 seeds, smallest +3.0; "
                                         "detectable 15.5")
    assert [c["test"] for c in tests.values()] == (
        [PAIRED_DIFFERENCE] * 4 + [EQUIVALENCE] * 2 + [PAIRED_DIFFERENCE] * 4)
    assert [c["statement"].rsplit(" at NPC ", 1)[1] for c in tests.values()] == ["10", "100"] * 5


def test_competitive_is_an_equivalence_test_over_at_least_five_label_draws():
    level = (0.01, -0.01, 0.0, 0.02, -0.01)  # the CNN at 0.3: APL - the better CNN = margin
    shown = {c["statement"]: c for c in claim_tests(seeds_results(level), 1000)}[COMPETES]
    assert (shown["test"], shown["holds"]) == (EQUIVALENCE, "shown")
    assert shown["measured"] == "0.2 ± 1.3 points over 5 seeds; 90 % interval -1.0 .. +1.4"
    behind = {c["statement"]: c for c in claim_tests(seeds_results(level, cnn=0.45),
                                                      1000)}[COMPETES]
    assert behind["holds"] == "refuted" and behind["measured"].startswith("-14.8 ± 1.3")
    wide = (0.04, -0.06, 0.0, 0.05, -0.07)  # within 5 on average, too spread to show it
    assert {c["statement"]: c for c in claim_tests(seeds_results(wide), 1000)}[
        COMPETES]["holds"] == "not shown"
    three = {c["statement"]: c for c in claim_tests(seeds_results(level[:3]), 1000)}[COMPETES]
    assert three == {"statement": COMPETES, "test": EQUIVALENCE, "holds": "not tested",
                     "measured": "0.0 ± 1.0 points over 3 seeds: the test needs 5 or more"}


def test_a_margin_of_exactly_the_bar_in_whole_test_images_meets_it():
    # 0.300 - 0.250 is 0.04999999999999999 and 0.344 - 0.394 is -0.050000000000000044 in floats
    competitive = ("competitive with the CNN baselines at NPC 10 (within 5 points of the best, "
                   "S-ResNet-18, or better, with something above chance)")
    accuracy = {("APL fine-tune", 10): 0.300, ("BENCHMARK", 10): 0.250, ("S-CNN", 10): 0.1,
                ("S-ResNet-18", 10): 0.350}
    checks = {c["statement"]: c["holds"] for c in claim_checks(accuracy, [], 0.5, 16, 1000)}
    assert checks["with few labels (NPC 10), APL fine-tune beats BENCHMARK (same model, random "
                  "init) by 5 points or more"] == "yes"
    assert checks[competitive] == "yes"  # 5.0 points behind
    accuracy.update({("APL fine-tune", 10): 0.344, ("S-ResNet-18", 10): 0.394})
    checks = {c["statement"]: c["holds"] for c in claim_checks(accuracy, [], 0.5, 16, 1000)}
    assert checks[competitive] == "yes"
    accuracy[("S-ResNet-18", 10)] = 0.395
    checks = {c["statement"]: c["holds"] for c in claim_checks(accuracy, [], 0.5, 16, 1000)}
    assert checks[competitive] == "no"


def test_a_margin_that_one_seed_measures_says_it_is_not_tested():
    seeds = seeds_results((0.15, 0.12))
    seeds["trials"] = [row for row in seeds["trials"] if row["npc"] == 10
                       and not (row.get("method") == "BENCHMARK" and row["seed"] == 1)]
    tests = {c["statement"]: c for c in claim_tests(seeds, 1000)}
    assert len(tests) == 5 and tests[BEATS] == {
        "statement": BEATS, "test": PAIRED_DIFFERENCE, "holds": "not tested",
        "measured": "15.0 points over 1 seed: the test needs 2 or more"}
    two_seeds = tests["APL fine-tune, without positions, beats the same transformer with "
                      "positional embeddings from scratch (a ViT) at NPC 10"]
    assert two_seeds["holds"] in ("yes", "no")
    assert two_seeds["measured"].startswith("13.5 ± 2.1 points over 2 seeds, smallest +12.0;")


def test_seed_margins_skip_a_side_that_did_not_run_and_say_what_each_claims():
    seeds = seeds_results()
    seeds["trials"] = [row for row in seeds["trials"] if (row.get("method"), row["npc"]) not in {
        ("BENCHMARK", 10), ("S-ResNet-18", 10), ("APL fine-tune", 100), (None, 100)}]
    assert [(m["margin"], m["npc"], m["bar"]) for m in claims.seed_margins(seeds)] == [
        ("APL fine-tune - BENCHMARK + positions", 10, "gain"),
        ("linear probe: APL - random-init features", 10, "gain"),
        ("kNN: APL - random-init features", 10, "gain")]
    seeds = seeds_results()
    seeds["trials"] = [row for row in seeds["trials"] if "features" not in row
                       or row["npc"] == 10]
    margins = claims.seed_margins(seeds)
    assert [(m["margin"], m["npc"], m["bar"]) for m in margins] == [
        ("APL fine-tune - BENCHMARK", 10, "gain"), ("APL fine-tune - BENCHMARK", 100, "gain"),
        ("APL fine-tune - BENCHMARK + positions", 10, "gain"),
        ("APL fine-tune - BENCHMARK + positions", 100, "gain"),
        ("APL fine-tune - the better CNN", 10, "competitive"),
        ("APL fine-tune - the better CNN", 100, "competitive"),
        ("linear probe: APL - random-init features", 10, "gain"),
        ("kNN: APL - random-init features", 10, "gain")]
    assert {(m["trained"], m["still_rising"] == [], m["bound"]) for m in margins} == {
        (True, True, None), (False, True, None)}


def test_the_features_are_judged_at_the_largest_npc_and_a_method_missing_at_an_npc_loses_it():
    accuracy = {("APL fine-tune", 10): 0.3, ("BENCHMARK", 10): 0.1, ("BENCHMARK", 30): 0.2}
    judged = features(0.2, 0.19, npc=10) + features(0.5, 0.1, npc=30)
    checks = {c["statement"]: c for c in claim_checks(accuracy, judged, 0.5, 16, 1000)}
    assert checks["the features alone carry class information: the kNN on APL features beats "
                  "it on random-init features by 5 points or more (NPC 30)"]["holds"] == "yes"
    every = [c for c in checks.values() if c["statement"] == "... and at every NPC of the sweep"]
    assert every == [{"statement": "... and at every NPC of the sweep", "test": ONE_SEED_BAR,
                      "holds": "no", "measured": "at NPC [10] of [10, 30]; margins +20.0, – "
                                                 "points"}]
    assert [c["statement"] for c in claim_checks({}, [], 0.5, 16, 1000)] == [
        "the puzzle is learned: held-out position accuracy far above chance (> 3x)"]


def test_one_seed_is_no_claim_over_seeds():
    seeds = seeds_results((0.15,))
    assert {c["holds"] for c in claim_tests(seeds, 1000)} == {"not tested"}


def test_the_claim_table_keeps_the_one_seed_checks_the_tests_do_not_restate():
    checks = claim_checks(sweep(0.30, 0.12), features(0.35, 0.1), 0.7, 16, 1000)
    tests = claim_tests(seeds_results((0.15, 0.14, 0.16)), 1000)
    table = claim_table(checks, tests)
    assert [c["test"] for c in table[:4]] == [ONE_RUN] + [ONE_SEED_NOISE] * 3
    assert table[4:] == tests
    assert claim_table(checks, []) == checks  # no seeds: the one seed is the claim
