"""Notebook 05's verdict: each statement of the method's claim checked against the numbers.

A difference counts only beyond the noise of the test set: the standard error of an accuracy
near p on n images is sqrt(p (1 - p) / n), at most sqrt(0.25 / n), and we ask for twice that, at
least 2 points (`noise_margin`). What pretraining is claimed to buy must be larger still: at
least 5 points (`gain_margin`).
"""
from __future__ import annotations

import math

CHANCE = 0.1  # 10 classes
PAIRS = (
    ("APL fine-tune", "BENCHMARK", "APL fine-tune beats BENCHMARK (same model, random init)"),
    ("APL linear probe", "BENCHMARK linear probe",
     "a linear probe on APL features beats one on random-init features"),
)


def noise_margin(test_images: int) -> float:
    """Two standard errors of an accuracy measured on `test_images` images, at least 2 points."""
    return max(0.02, 2 * math.sqrt(0.25 / test_images))


def gain_margin(test_images: int) -> float:
    return max(0.05, noise_margin(test_images))


def _check(statement: str, holds: bool, detail: str) -> dict:
    return {"statement": statement, "holds": "yes" if holds else "no", "measured": detail}


def claim_checks(accuracy: dict[tuple[str, int], float], knn: dict[str, float],
                 position_top1: float, positions: int, test_images: int) -> list[dict]:
    """One row (statement, holds: yes/no, measured) per statement of the claim.

    accuracy: test top-1 per (method, NPC); knn: {APL features: acc, random features: acc};
    position_top1: held-out position accuracy of pretraining with `positions` positions."""
    chance = 1 / positions
    margin, gain = noise_margin(test_images), gain_margin(test_images)
    npcs = sorted({n for _, n in accuracy})
    methods = list(dict.fromkeys(m for m, _ in accuracy))
    checks = [_check("the puzzle is learned: held-out position accuracy far above chance (> 3x)",
                     position_top1 > 3 * chance,
                     f"{position_top1:.1%} vs chance {chance:.1%} "
                     f"({position_top1 / chance:.1f}x)")]

    def gap(a: str, b: str, n: int) -> float:
        return accuracy.get((a, n), math.nan) - accuracy.get((b, n), math.nan)

    for n in npcs:
        best = max((m for m in methods if (m, n) in accuracy), key=lambda m: accuracy[(m, n)])
        checks.append(_check(f"the classes are learned at all at NPC {n}: the best method beats "
                             f"chance (10%) by more than {100 * margin:.0f} points",
                             accuracy[(best, n)] > CHANCE + margin,
                             f"best: {best}, {accuracy[(best, n)]:.1%}"))
    low = npcs[0]
    for a, b, what in PAIRS:
        if (a, low) in accuracy and (b, low) in accuracy:
            d = gap(a, b, low)
            checks.append(_check(f"with few labels (NPC {low}), {what} by {100 * gain:.0f} "
                                 f"points or more", d >= gain, f"{100 * d:+.1f} points"))
            wins = [n for n in npcs if gap(a, b, n) >= gain]
            margins = ", ".join(f"{100 * gap(a, b, n):+.1f}" for n in npcs)
            checks.append(_check("... and at every NPC of the sweep", wins == npcs,
                                 f"at NPC {wins} of {npcs}; margins {margins} points"))
    cnns = [m for m in ("S-CNN", "S-ResNet-18") if (m, low) in accuracy]
    if cnns and ("APL fine-tune", low) in accuracy:
        best = max(cnns, key=lambda m: accuracy[(m, low)])
        d = gap("APL fine-tune", best, low)
        learned = max(accuracy[(best, low)], accuracy[("APL fine-tune", low)]) > CHANCE + margin
        checks.append(_check(f"competitive with the CNN baselines at NPC {low} (within 5 points "
                             f"of the best, {best}, or better, with something above chance)",
                             d > -0.05 and learned, f"{100 * d:+.1f} points vs {best}"))
    if len(knn) == 2:
        (_, apl), (_, random) = list(knn.items())
        checks.append(_check(f"the features alone carry class information: kNN on APL features "
                             f"beats kNN on random features by {100 * gain:.0f} points or more",
                             apl - random >= gain, f"{apl:.1%} vs {random:.1%}"))
    return checks
