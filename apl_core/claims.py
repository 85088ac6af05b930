"""The method's claim, as the tests it passed: on one seed, each statement checked against a
bar the test set's noise sets; over seeds, each paired margin tested.

    noise_margin, gain_margin   the bars of one seed: the test set's noise, and a gain
    claim_checks          each statement of the claim on one seed, yes or no, with the
                          measured margin and the bar it is held to
    top1_by_seed          the seeds' test top-1 per (method, NPC) and their frozen features'
                          per (measure, NPC), seed by seed
    seed_margins, margin_table, margin_test, claim_tests
                          the margins the claim rests on, paired seed by seed (the two sides
                          of a seed share its labelled images and pretraining), and the claim
                          as tests over the seeds: "APL beats X" a paired difference beyond
                          the detectable difference, "competitive" an equivalence test
    claim_table           the claim as the report states it: the tests over seeds after the
                          checks of one seed they do not restate

On one seed, a difference counts only beyond the noise of the test set: the standard error of
an accuracy near p on n images is sqrt(p (1 - p) / n), at most sqrt(0.25 / n), and we ask for
twice that, at least 2 points (`noise_margin`). What pretraining is claimed to buy must be
larger still: at least 5 points (`gain_margin`); being competitive means at most 5 points
behind. Over seeds the claim is a test (apl_core.stats): a gain holds when the seeds' paired
difference is beyond the difference they and the test set can detect, with the same sign on
every seed (`stats.verdict`); "competitive" is equivalence within 5 points either way by two
one-sided t-tests (`stats.equivalence`), over at least EQUIVALENCE_SEEDS label draws.
"""
from __future__ import annotations

import math
import statistics

from .comparison import FEATURES
from .stats import detectable_difference, equivalence, mean_sd, verdict

CHANCE = 0.1  # 10 classes
PAIRS = (
    ("APL fine-tune", "BENCHMARK", "APL fine-tune beats BENCHMARK (same model, random init)"),
    ("APL fine-tune", "BENCHMARK + positions", "APL fine-tune, without positions, beats the "
     "same transformer with positional embeddings from scratch (a ViT)"),
)
CNNS = ("S-CNN", "S-ResNet-18")
# the frozen features' measures: (key in a feature row, what it is called)
MEASURES = (("probe_top1", "linear probe"), ("knn_top1", "kNN"))
COMPETITIVE = 0.05  # "competitive": at most this far behind; over seeds, equivalent within it
# An equivalence test over fewer label draws has an interval so wide that it shows nothing
# but a gross difference: five draws at least, as the claim's margins are smallest at NPC 10.
EQUIVALENCE_SEEDS = 5
# The test each row of the claim table used.
ONE_RUN = "one run: > 3x chance"
ONE_SEED_NOISE = "one seed: beyond the test set's noise"
ONE_SEED_BAR = "one seed: its margin against the bar"
PAIRED_DIFFERENCE = "paired difference over seeds, beyond the detectable difference"
EQUIVALENCE = "equivalence over seeds: two one-sided t-tests at ±5 points"


def noise_margin(test_images: int) -> float:
    """Two standard errors of an accuracy measured on `test_images` images, at least 2 points."""
    return max(0.02, 2 * math.sqrt(0.25 / test_images))


def gain_margin(test_images: int) -> float:
    return max(0.05, noise_margin(test_images))


def _at_least(difference: float, bar: float) -> bool:
    """difference >= bar, for differences of accuracies counted in whole test images: 0.353 -
    0.303 is 0.04999999999999999 in floating point, and a margin shown as +5.0 must reach a
    5-point bar."""
    return round(difference - bar, 9) >= 0


def _points(share: float) -> str:
    """A threshold in points as the check uses it: 5, 3.16, 12.5 (never rounded below it)."""
    return f"{100 * share:.3g}"


def _check(statement: str, test: str, holds: bool, detail: str) -> dict:
    return {"statement": statement, "test": test, "holds": "yes" if holds else "no",
            "measured": detail}


def claim_checks(accuracy: dict[tuple[str, int], float], features: list[dict],
                 position_top1: float, positions: int, test_images: int) -> list[dict]:
    """One row (statement, test, holds: yes/no, measured) per statement of the claim, on one
    seed's runs.

    accuracy: test top-1 per (method, NPC); features: one row per NPC, {"npc", "features":
    comparison.feature_comparison's result}; position_top1: held-out position accuracy of
    pretraining with `positions` positions."""
    chance = 1 / positions
    margin, gain = noise_margin(test_images), gain_margin(test_images)
    npcs = sorted({n for _, n in accuracy})
    methods = list(dict.fromkeys(m for m, _ in accuracy))
    checks = [_check("the puzzle is learned: held-out position accuracy far above chance (> 3x)",
                     ONE_RUN, position_top1 > 3 * chance,
                     f"{position_top1:.1%} vs chance {chance:.1%} "
                     f"({position_top1 / chance:.1f}x)")]

    def gap(a: str, b: str, n: int) -> float:
        return accuracy.get((a, n), math.nan) - accuracy.get((b, n), math.nan)

    for n in npcs:
        best = max((m for m in methods if (m, n) in accuracy), key=lambda m: accuracy[(m, n)])
        checks.append(_check(f"the classes are learned at all at NPC {n}: the best method beats "
                             f"chance (10%) by more than {_points(margin)} points",
                             ONE_SEED_NOISE, accuracy[(best, n)] > CHANCE + margin,
                             f"best: {best}, {accuracy[(best, n)]:.1%}"))
    low = npcs[0] if npcs else None
    for a, b, what in PAIRS:
        if (a, low) in accuracy and (b, low) in accuracy:
            gaps = {n: gap(a, b, n) for n in npcs}
            d = gaps[low]
            checks.append(_check(f"with few labels (NPC {low}), {what} by {_points(gain)} "
                                 f"points or more", ONE_SEED_BAR, _at_least(d, gain),
                                 f"{100 * d:+.1f} points"))
            wins = [n for n in npcs if _at_least(gaps[n], gain)]
            margins = ", ".join("–" if math.isnan(g) else f"{100 * g:+.1f}"
                                for g in gaps.values())  # – where a side did not run there
            checks.append(_check("... and at every NPC of the sweep", ONE_SEED_BAR, wins == npcs,
                                 f"at NPC {wins} of {npcs}; margins {margins} points"))
    for n in npcs:
        cnns = [m for m in CNNS if (m, n) in accuracy]
        if cnns and ("APL fine-tune", n) in accuracy:
            best = max(cnns, key=lambda m: accuracy[(m, n)])
            d = gap("APL fine-tune", best, n)
            learned = max(accuracy[(best, n)], accuracy[("APL fine-tune", n)]) > CHANCE + margin
            checks.append(_check(
                f"competitive with the CNN baselines at NPC {n} (within "
                f"{_points(COMPETITIVE)} points of the best, {best}, or better, with something "
                f"above chance)", ONE_SEED_BAR, _at_least(d, -COMPETITIVE) and learned,
                f"{100 * d:+.1f} points vs {best}"))
    if features:
        row = max(features, key=lambda r: r["npc"])
        apl, random = (row["features"][name] for name in FEATURES)
        for key, measure in MEASURES:
            d = apl[key] - random[key]
            checks.append(_check(
                f"the features alone carry class information: the {measure} on APL features "
                f"beats it on random-init features by {_points(gain)} points or more (NPC "
                f"{row['npc']})", ONE_SEED_BAR, _at_least(d, gain),
                f"{apl[key]:.1%} vs {random[key]:.1%}"))
    return checks


# ---------------------------------------------------------------- over seeds

def top1_by_seed(seeds: dict) -> tuple[dict, dict]:
    """The seeds' rows by what they measured: ({(method, npc): {seed: test top-1}},
    {(measure, npc): {seed: (APL features', random-init features' top-1)}})."""
    tests: dict[tuple[str, int], dict[int, float]] = {}
    features: dict[tuple[str, int], dict[int, tuple[float, float]]] = {}
    for row in seeds["trials"]:
        if "features" in row:
            for key, measure in MEASURES:
                features.setdefault((measure, row["npc"]), {})[row["seed"]] = tuple(
                    row["features"][name][key] for name in FEATURES)
        elif "test_top1" in row:
            tests.setdefault((row["method"], row["npc"]), {})[row["seed"]] = row["test_top1"]
    return tests, features


def still_rising(seeds: dict) -> set[tuple[str, int]]:
    """The (method, NPC) choices of the search behind `seeds` (its header's `chosen`) whose
    longer runs still won the paired test at search.LONGEST times the searched steps:
    measured before they converged."""
    return {(key.rsplit("|", 1)[0], int(key.rsplit("|", 1)[1]))
            for key, pick in (seeds.get("chosen") or {}).items()
            if pick.get("convergence") == "still improving at the cap"}


def _bound(ours_rising: bool, theirs_rising: bool) -> str | None:
    """What a margin ours - theirs is when a side was still rising: the side could still gain."""
    if ours_rising and theirs_rising:
        return "no bound either way"
    return "a lower bound" if ours_rising else "an upper bound" if theirs_rising else None


def seed_margins(seeds: dict) -> list[dict]:
    """Each margin the claim rests on, per NPC and per seed, paired (the two sides of a seed
    share its labelled images and pretraining), over the seeds that have both sides: APL
    fine-tune against each BENCHMARK and against the better CNN of the seed, and APL
    features against random-init features for each measure. {"margin", "claim", "npc",
    "bar", "per_seed": {seed: difference}, "level", "trained", "still_rising": [methods],
    "bound"}; claim: what the margin is claimed to show, in words; bar: 'gain' (a gain is
    claimed) or 'competitive'; level: the mean accuracy of both sides over those seeds (the
    test set's noise depends on it); trained: whether its sides are trained runs of the
    search (the frozen features' are not); still_rising: the sides whose choice was still
    improving at its longest run (`still_rising`), and bound what that makes the margin (None
    where every side converged)."""
    tests, features = top1_by_seed(seeds)
    npcs = sorted({n for _, n in tests} | {n for _, n in features})
    rising = still_rising(seeds)
    margins = []

    def add(margin: str, claim: str, npc: int, bar: str, sides: dict, ours_sides=(),
            theirs_sides=()) -> None:
        """sides: {seed: (ours, theirs)} top-1 of the seeds that have both."""
        ours, theirs = ([m for m in side if (m, npc) in rising]
                        for side in (ours_sides, theirs_sides))
        if sides:
            margins.append({"margin": margin, "claim": claim, "npc": npc, "bar": bar,
                            "per_seed": {s: a - b for s, (a, b) in sides.items()},
                            "level": statistics.mean(v for pair in sides.values() for v in pair),
                            "trained": bool(ours_sides), "still_rising": ours + theirs,
                            "bound": _bound(bool(ours), bool(theirs))})

    for a, b, what in PAIRS:
        for npc in npcs:
            ours, theirs = tests.get((a, npc), {}), tests.get((b, npc), {})
            add(f"{a} - {b}", what, npc, "gain",
                {s: (ours[s], theirs[s]) for s in sorted(ours) if s in theirs}, [a], [b])
    for npc in npcs:
        ours = tests.get(("APL fine-tune", npc), {})
        cnns = [tests.get((m, npc), {}) for m in CNNS]
        add("APL fine-tune - the better CNN", "APL fine-tune is competitive with the better CNN "
            "of each seed", npc, "competitive",
            {s: (ours[s], max(cnn[s] for cnn in cnns)) for s in sorted(ours)
             if all(s in cnn for cnn in cnns)}, ["APL fine-tune"], CNNS)
    for _, measure in MEASURES:
        for npc in npcs:
            add(f"{measure}: APL - random-init features", f"the features alone carry class "
                f"information: the {measure} on APL features beats it on random-init features",
                npc, "gain", dict(sorted(features.get((measure, npc), {}).items())))
    return margins


def unconverged(margin: dict) -> str:
    """A margin's sides that were still rising (some were), and what that makes it."""
    return f"{', '.join(margin['still_rising'])} still rising, so {margin['bound']}"


def margin_table(seeds: dict) -> list[dict]:
    """Every paired margin (points) per seed, its mean ± sd and the smallest seed's, and
    whether both sides converged (a side still improving at its longest run makes it a
    bound)."""
    rows = []
    for m in seed_margins(seeds):
        values = list(m["per_seed"].values())
        rows.append({"margin (points)": m["margin"], "NPC": m["npc"],
                     "per seed": ", ".join(f"{100 * v:+.1f} (seed {s})"
                                           for s, v in m["per_seed"].items()),
                     "mean ± sd": mean_sd(values), "smallest": f"{100 * min(values):+.1f}",
                     "converged": (f"no: {unconverged(m)}" if m["still_rising"] else
                                   "yes" if m["trained"] else "–")})
    return rows


def margin_test(margin: dict, test_images: int) -> dict:
    """The test of one margin's claim (seed_margins) on its seeds and `test_images` test
    images: {"test", "holds", "measured"}. A gain holds ('yes') when the mean paired difference
    is beyond the detectable difference with the same sign on every seed (`stats.verdict`);
    'competitive' is the equivalence test within COMPETITIVE either way ('shown', 'not shown'
    or 'refuted'). With fewer seeds than the test needs (two; EQUIVALENCE_SEEDS) it is 'not
    tested', and `measured` says so beside the mean."""
    differences = list(margin["per_seed"].values())
    n = len(differences)
    spread = f"{mean_sd(differences)} points over {n} seed{'s' * (n > 1)}"
    if margin["bar"] == "gain":
        if n < 2:
            holds, detail = "not tested", f"{spread}: the test needs 2 or more"
        else:
            detectable = detectable_difference(differences, margin["level"], test_images)
            holds = "yes" if verdict(differences, margin["level"], test_images) == "higher" \
                else "no"
            detail = (f"{spread}, smallest {100 * min(differences):+.1f}; detectable "
                      f"{100 * detectable:.1f}")
        test = PAIRED_DIFFERENCE
    else:
        if n < EQUIVALENCE_SEEDS:
            holds, detail = "not tested", (f"{spread}: the test needs {EQUIVALENCE_SEEDS} or "
                                           f"more")
        else:
            result = equivalence(differences, COMPETITIVE)
            low, high = result["interval"]
            holds, detail = result["verdict"], (f"{spread}; 90 % interval {100 * low:+.1f} .. "
                                                f"{100 * high:+.1f}")
        test = EQUIVALENCE
    if margin["still_rising"]:
        detail += f"; {unconverged(margin)}"
    return {"test": test, "holds": holds, "measured": detail}


def claim_tests(seeds: dict, test_images: int) -> list[dict]:
    """The claim over seeds, one row (statement, test, holds, measured) per margin and NPC
    (seed_margins, margin_test): "APL beats X" as a paired difference over seeds beyond the
    detectable difference, "competitive" as an equivalence test at 5 points; a row whose
    seeds are too few says so instead of a verdict."""
    return [{"statement": f"{margin['claim']} at NPC {margin['npc']}",
             **margin_test(margin, test_images)} for margin in seed_margins(seeds)]


def claim_table(checks: list[dict], tests: list[dict]) -> list[dict]:
    """The claim as the report states it: the tests over seeds (claim_tests) after the checks
    of one seed (claim_checks) that they do not restate (the puzzle, the classes learned at
    all); without tests over seeds, every check of the one seed."""
    if not tests:
        return checks
    return [check for check in checks if check["test"] != ONE_SEED_BAR] + tests
