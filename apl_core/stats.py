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
"""
from __future__ import annotations

import math
import statistics

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
