"""Statistics of results over seeds: mean, sample std and a t confidence interval per variant, and
tests of the difference between two variants (Welch's t-test, and the paired t-test over the seeds
both ran), all computed by :mod:`scipy.stats`.

The 95% confidence interval of a mean over ``n`` seeds is ``mean ± t(0.975, n - 1) * std / sqrt(n)``
(``scipy.stats.t.interval``); it needs ``n >= 2``. Welch's test does not assume equal variances and
needs two seeds in each variant; the paired test pairs runs by seed (the same seed gives the same
initialisation and data order wherever the variants share them) and needs two common seeds. A value
that cannot be computed (too few seeds, or no variance at all) is ``None``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Confidence level of every interval kdframe reports.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """A sample of accuracies over seeds.

    Attributes:
        n: Number of values.
        mean: Their mean (``None`` when ``n`` is 0).
        std: Sample standard deviation, ``n - 1`` in the denominator (``None`` below two values).
        ci_low: Lower end of the 95% confidence interval of the mean (``None`` below two values).
        ci_high: Upper end of it.
    """

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Comparison:
    """The difference ``variant - baseline`` of two variants' accuracies.

    Attributes:
        variant: The variant compared.
        baseline: The variant it is compared with.
        n_variant: Seeds of ``variant``.
        n_baseline: Seeds of ``baseline``.
        difference: Difference of the means (``None`` when a side has no value).
        ci_low: Lower end of the 95% confidence interval of the difference (Welch).
        ci_high: Upper end of it.
        welch_t: Welch's t statistic.
        welch_p: Its two-sided p-value.
        paired_n: Seeds both variants ran.
        paired_t: The paired t statistic over those seeds.
        paired_p: Its two-sided p-value.
    """

    variant: str
    baseline: str
    n_variant: int
    n_baseline: int
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    welch_t: float | None
    welch_p: float | None
    paired_n: int
    paired_t: float | None
    paired_p: float | None


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(values: Sequence[float]) -> Summary:
    """n, mean, sample std and the 95% t confidence interval of ``values``."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = statistics.stdev(values)
    if std == 0.0:
        return Summary(n, mean, 0.0, mean, mean)
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Summary(n, mean, std, float(low), float(high))


def compare(variant: str, values: Mapping[int, float], baseline: str, baseline_values: Mapping[int, float]) -> Comparison:
    """Compare two variants' accuracies by seed (``{seed: accuracy}``): the difference of the means
    with Welch's confidence interval and test, and the paired test over the seeds both have."""
    from scipy import stats

    a, b = list(values.values()), list(baseline_values.values())
    difference = statistics.fmean(a) - statistics.fmean(b) if a and b else None
    ci_low = ci_high = welch_t = welch_p = None
    if len(a) >= 2 and len(b) >= 2 and (statistics.stdev(a) > 0 or statistics.stdev(b) > 0):
        welch = stats.ttest_ind(a, b, equal_var=False)
        welch_t, welch_p = _finite(welch.statistic), _finite(welch.pvalue)
        interval = welch.confidence_interval(CONFIDENCE)
        ci_low, ci_high = _finite(interval.low), _finite(interval.high)
    common = sorted(set(values) & set(baseline_values))
    paired_t = paired_p = None
    if len(common) >= 2:
        pairs_a, pairs_b = [values[seed] for seed in common], [baseline_values[seed] for seed in common]
        if statistics.stdev([x - y for x, y in zip(pairs_a, pairs_b)]) > 0:
            paired = stats.ttest_rel(pairs_a, pairs_b)
            paired_t, paired_p = _finite(paired.statistic), _finite(paired.pvalue)
    return Comparison(variant, baseline, len(a), len(b), difference, ci_low, ci_high, welch_t, welch_p, len(common), paired_t, paired_p)


def format_p(value: float | None) -> str:
    """A p-value for a table: ``n/a``, ``< 0.001`` or three decimals."""
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


__all__ = ["CONFIDENCE", "Comparison", "Summary", "compare", "format_p", "summarize"]
