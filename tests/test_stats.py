"""kdframe.stats against known values and scipy."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from kdframe.stats import compare, format_p, summarize


def test_summary_of_known_values() -> None:
    summary = summarize([1.0, 2.0, 3.0])
    assert (summary.n, summary.mean, summary.std) == (3, 2.0, 1.0)
    # mean ± t(0.975, 2) / sqrt(3), t(0.975, 2) = 4.302653
    assert summary.ci_low == pytest.approx(2.0 - 4.302653 / 3**0.5, abs=1e-5)
    assert summary.ci_high == pytest.approx(2.0 + 4.302653 / 3**0.5, abs=1e-5)


def test_too_few_values_and_no_variance() -> None:
    assert summarize([]).mean is None
    one = summarize([5.0])
    assert one.mean == 5.0 and one.std is None and one.ci_low is None
    flat = summarize([5.0, 5.0])
    assert (flat.std, flat.ci_low, flat.ci_high) == (0.0, 5.0, 5.0)


def test_welch_and_paired_tests_match_scipy() -> None:
    a = {0: 2.0, 1: 4.0, 2: 6.0, 3: 8.0}
    b = {0: 1.0, 1: 2.0, 2: 3.0, 4: 4.0}  # seed 3 of a has no partner: three pairs
    result = compare("a", a, "b", b)
    welch = scipy_stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    paired = scipy_stats.ttest_rel([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert result.difference == pytest.approx(2.5)
    assert result.welch_t == pytest.approx(welch.statistic) and result.welch_p == pytest.approx(welch.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx(tuple(welch.confidence_interval(0.95)))
    assert result.paired_n == 3 and result.paired_p == pytest.approx(paired.pvalue)


def test_comparisons_that_cannot_be_computed_are_none() -> None:
    single = compare("a", {0: 1.0}, "b", {0: 2.0, 1: 3.0})
    assert single.difference == pytest.approx(-1.5) and single.welch_p is None and single.paired_p is None
    constant = compare("a", {0: 1.0, 1: 2.0}, "b", {0: 0.0, 1: 1.0})  # every pair differs by exactly 1
    assert constant.paired_p is None and constant.welch_p is not None


def test_p_values_are_formatted() -> None:
    assert (format_p(None), format_p(0.0001), format_p(0.04321)) == ("n/a", "< 0.001", "0.043")
