"""How large a difference the seeds and the test set can tell apart.

Every comparison in the course is paired: two models of the same seed share its pretraining
and its labels and are scored on the same test images, so the difference is taken seed by
seed. Two sources of noise bound what such differences can show:

- the test set: an accuracy near p measured on n images has a standard error of
  sqrt(p (1 - p) / n); the difference of two such accuracies, taken as independent (an upper
  bound: paired models err on many of the same images), has sqrt(2) times that;
- the seeds: their paired differences spread by a standard deviation s, so their mean is
  known to within t(0.975, n - 1) s / sqrt(n) (Student's t, 95 %, two-sided).

`detectable_difference` is the larger of the two (two standard errors of the test set, the
seeds' half-width); `verdict` calls a difference only when the mean is beyond it and every
seed's difference has the same sign.

Two tests ask sharper questions of paired data:

- `mcnemar_p`: is one run better than another on the same images? Exact McNemar, one-sided:
  only the images the two runs disagree on carry information, and under "no difference" each
  of them is equally likely to go either way (a fair coin over the discordant images). The
  search adopts a longer run only when it wins this test (`longer_wins`); two recipes'
  choices are compared with its two-sided form (`mcnemar_two_sided_p`).
- `equivalence`: are two methods within a margin of each other over seeds? Two one-sided
  t-tests (TOST) on the paired differences: equivalence is *shown* when the mean is above
  -margin and below +margin, each at one-sided alpha (the 90 % interval inside the margin);
  *refuted* when it is beyond a margin by a one-sided test; *not shown* otherwise (too few
  seeds, or too much spread, to tell).
"""
from __future__ import annotations

import math
import statistics

from scipy import stats as scipy_stats

# Student's t at 0.975 by degrees of freedom (n seeds - 1): scipy.stats.t.ppf(0.975, df)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}


def mean_sd(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± sd' of values times scale (percent by default); one value alone."""
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def sampling_noise(accuracy: float, images: int) -> float:
    """Two standard errors of a difference between two accuracies near `accuracy`, each
    measured on the same `images` test images, taken as independent (an upper bound)."""
    if images < 1:
        raise ValueError(f"images={images} is invalid: at least one test image")
    return 2 * math.sqrt(2 * accuracy * (1 - accuracy) / images)


def seed_half_width(differences: list[float]) -> float:
    """The 95 % half-width of the mean of paired differences over seeds (Student's t)."""
    n = len(differences)
    if n < 2:
        return math.inf
    if n - 1 not in T_975:
        raise ValueError(f"{n} seeds: T_975 holds t for 2 to {max(T_975) + 1} seeds")
    return T_975[n - 1] * statistics.stdev(differences) / math.sqrt(n)


def detectable_difference(differences: list[float], accuracy: float, images: int) -> float:
    """The smallest mean difference these seeds and this test set can show: the larger of the
    test set's two standard errors and the seeds' 95 % half-width."""
    return max(sampling_noise(accuracy, images), seed_half_width(differences))


def verdict(differences: list[float], accuracy: float, images: int) -> str:
    """'higher' or 'lower' when the mean paired difference is beyond `detectable_difference`
    and every seed's difference has its sign; otherwise 'no detectable difference'."""
    mean = statistics.mean(differences)
    same_sign = all(d > 0 for d in differences) or all(d < 0 for d in differences)
    if same_sign and abs(mean) > detectable_difference(differences, accuracy, images):
        return "higher" if mean > 0 else "lower"
    return "no detectable difference"


def mcnemar_p(wins: int, losses: int) -> float:
    """Exact one-sided McNemar p-value that a run is better than another on the same images:
    it gets `wins` images right that the other gets wrong, and `losses` the other way round.
    Under no difference the wins are Binomial(wins + losses, 1/2); the p-value is the chance
    of `wins` or more. No discordant image: 1."""
    if wins < 0 or losses < 0:
        raise ValueError(f"wins={wins}, losses={losses}: counts of images cannot be negative")
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def decode_mask(mask: str, images: int) -> list[bool]:
    """Which of `images` images a hex bitmask (`train.correct_mask`: bit i is image i) marks."""
    value = int(mask, 16)
    if value >> images:
        raise ValueError(f"the mask {mask[:16]}... marks an image past the {images} it covers")
    return [bool(value >> i & 1) for i in range(images)]


def mcnemar_two_sided_p(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value that two runs differ on the same images: twice the
    one-sided p-value of the side with more discordant images, at most 1."""
    return min(1.0, 2 * mcnemar_p(max(wins, losses), min(wins, losses)))


def paired_counts(first: dict, second: dict) -> tuple[int, int]:
    """(images `second` gets right and `first` wrong, images `first` gets right and `second`
    wrong): the discordant images of two search rows scored on the same validation images,
    each with `val_correct` (the hex bitmask of its best epoch's right answers) and
    `val_images`."""
    if first["val_images"] != second["val_images"]:
        raise ValueError(f"runs scored on {first['val_images']} and {second['val_images']} "
                         f"validation images cannot be paired")
    before = decode_mask(first["val_correct"], first["val_images"])
    after = decode_mask(second["val_correct"], second["val_images"])
    return (sum(a and not b for a, b in zip(after, before)),
            sum(b and not a for a, b in zip(after, before)))


def longer_wins(shorter: dict, longer: dict, alpha: float = 0.05) -> dict:
    """Is `longer` (a run of more steps) better on validation than `shorter`, by the exact
    one-sided McNemar test at `alpha` on the same validation images (`paired_counts`)?
    {"wins", "losses", "p", "better"}."""
    wins, losses = paired_counts(shorter, longer)
    p = mcnemar_p(wins, losses)
    return {"wins": wins, "losses": losses, "p": p, "better": p < alpha}


EQUIVALENCE = ("shown", "not shown", "refuted")


def equivalence(differences: list[float], margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided t-tests (TOST) on paired differences over seeds, at `margin` (> 0):
    "shown" when the mean is above -margin and below +margin, each by a one-sided t-test at
    `alpha`; "refuted" when it is below -margin or above +margin by a one-sided t-test at
    `alpha`; "not shown" otherwise. {"verdict", "mean", "margin", "seeds", "p_within" (the
    larger TOST p-value), "p_beyond" (the smaller of the two beyond-the-margin p-values),
    "interval" (the mean's 1 - 2 alpha confidence interval: equivalence is shown exactly when
    it lies inside the margins)}."""
    n = len(differences)
    if n < 2:
        raise ValueError(f"{n} difference(s): an equivalence test needs two seeds or more")
    if not margin > 0:
        raise ValueError(f"margin={margin} is invalid: the margin must be > 0")
    mean = statistics.mean(differences)
    se = statistics.stdev(differences) / math.sqrt(n)

    def above(bound: float) -> float:
        """One-sided p-value that the mean difference is above `bound`."""
        if se == 0:
            return 0.0 if mean > bound else 1.0 if mean < bound else 0.5
        return float(scipy_stats.t.sf((mean - bound) / se, n - 1))

    p_within = max(above(-margin), 1 - above(margin))
    p_beyond = min(1 - above(-margin), above(margin))
    verdict = "shown" if p_within < alpha else "refuted" if p_beyond < alpha else "not shown"
    half = float(scipy_stats.t.ppf(1 - alpha, n - 1)) * se
    return {"verdict": verdict, "mean": mean, "margin": margin, "seeds": n,
            "p_within": p_within, "p_beyond": p_beyond, "interval": (mean - half, mean + half)}
