"""How many seeds a paired comparison needs: the power of the two-sided paired t-test over seeds.

With n seeds the test's statistic follows a noncentral t with n - 1 degrees of freedom and noncentrality
d * sqrt(n), d the standardised difference (mean difference / SD of the per-seed differences); its power is the
chance of landing beyond the critical value on either side (as statsmodels' TTestPower computes it, which
tests/test_stats.py checks to 1e-6). From it: the smallest difference n seeds detect with 80 % power at the 5 %
level, and the number of seeds a difference of the observed size would need.
"""

from __future__ import annotations

import math

from scipy.optimize import brentq
from scipy.stats import nct
from scipy.stats import t as student_t

ALPHA = 0.05
POWER = 0.8
MOST_SEEDS = 100_000  # beyond this a difference counts as undetectable (inf)


def power(effect: float, n: float, alpha: float = ALPHA) -> float:
    """The power of the two-sided paired t-test at level `alpha` over n pairs, at standardised effect `effect`."""
    df = n - 1
    critical = student_t.isf(alpha / 2, df)
    shift = effect * math.sqrt(n)
    # the lower tail as the upper tail of the mirrored statistic: nct.cdf far out in it gives NaN, not ~0
    return float(nct.sf(critical, df, shift) + nct.sf(critical, df, -shift))


def detectable_effect(n: int, target: float = POWER, alpha: float = ALPHA) -> float:
    """The standardised difference the test over n >= 2 pairs detects with power `target`."""
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {n}")
    high = 1.0
    while power(high, n, alpha) < target:  # bracket the root: power grows with the effect
        high *= 2
    return float(brentq(lambda d: power(d, n, alpha) - target, 0.0, high, xtol=1e-14, rtol=1e-14))


def seeds_needed(effect: float, target: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest whole number of pairs (>= 2) at which the test detects `effect` with power `target`; inf past
    MOST_SEEDS (a difference of 0 is never detected)."""
    effect = abs(effect)
    if effect == 0 or power(effect, MOST_SEEDS, alpha) < target:
        return math.inf
    low, high = 1, 2  # power(low) < target <= power(high), once bracketed
    while power(effect, high, alpha) < target:
        low, high = high, high * 2
    while high - low > 1:  # power grows with n
        middle = (low + high) // 2
        low, high = (middle, high) if power(effect, middle, alpha) < target else (low, middle)
    return float(high)
