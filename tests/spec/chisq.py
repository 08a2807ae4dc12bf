"""Pearson's chi-square goodness of fit, without scipy: statistic, degrees of freedom and a
critical value (Wilson-Hilferty approximation of the chi-square quantile).
"""

from __future__ import annotations

import math
from collections import Counter


def chi_square(counts: Counter, probs: dict[int, float],
               min_expected: float = 5.0) -> tuple[float, int]:
    """Statistic and degrees of freedom; bins expected below min_expected are pooled."""
    n = sum(counts.values())
    assert all(t in probs and probs[t] > 0 for t in counts), "sampled a token of probability 0"
    stat, df = 0.0, -1
    pooled_obs, pooled_exp = 0, 0.0
    for tok, p in probs.items():
        exp = n * p
        if exp < min_expected:
            pooled_obs += counts.get(tok, 0)
            pooled_exp += exp
            continue
        stat += (counts.get(tok, 0) - exp) ** 2 / exp
        df += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        df += 1
    return stat, max(df, 1)


def critical(df: int, z: float = 3.09) -> float:
    """Upper quantile of chi-square(df); z = 3.09 is the 0.999 point of the standard normal."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def total_variation(counts: Counter, probs: dict[int, float]) -> float:
    n = sum(counts.values())
    keys = set(counts) | set(probs)
    return 0.5 * sum(abs(counts.get(k, 0) / n - probs.get(k, 0.0)) for k in keys)
