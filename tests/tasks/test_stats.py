"""Multi-seed statistics on hand-made numbers, checked against the textbook formulas."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from msaflow.tasks.stats import (
    bootstrap_mean_ci,
    cell_summaries,
    compare_to_baseline,
    paired,
    summarize,
)

# Five "seeds": mean 0.8, sample std sqrt(0.00025) (deviations -0.02, -0.01, 0, 0.01, 0.02).
VALUES = [0.78, 0.79, 0.80, 0.81, 0.82]


def test_summary_mean_std_and_t_interval():
    s = summarize(VALUES)
    assert s.n == 5
    assert s.mean == pytest.approx(0.8)
    assert s.std == pytest.approx(math.sqrt(0.001 / 4))
    t975_df4 = 2.7764451051977987  # t_{0.975, 4} from tables
    half = t975_df4 * math.sqrt(0.001 / 4) / math.sqrt(5)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.8 - half, 0.8 + half))
    assert s.half_width == pytest.approx(half)


def test_single_seed_has_no_spread_and_nans_are_dropped():
    one = summarize([0.7])
    assert one.n == 1 and one.mean == 0.7
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    with_nan = summarize([0.7, float("nan"), 0.9])
    assert with_nan.n == 2 and with_nan.mean == pytest.approx(0.8)
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_identical_values_give_a_zero_width_interval():
    s = summarize([0.5, 0.5, 0.5])
    assert s.std == 0 and s.ci_low == s.ci_high == 0.5


def test_paired_t_test_p_value_and_effect_size_by_hand():
    base = {1: 0.70, 2: 0.72, 3: 0.69, 4: 0.71, 5: 0.73}
    cell = {1: 0.74, 2: 0.73, 3: 0.72, 4: 0.75, 5: 0.74, 6: 0.99}  # seed 6 has no partner: ignored
    r = paired(cell, base)
    diff = np.array([0.04, 0.01, 0.03, 0.04, 0.01])
    mean, sd, n = diff.mean(), diff.std(ddof=1), 5
    t = mean / (sd / math.sqrt(n))
    p = 2 * sps.t.sf(abs(t), n - 1)  # the two-sided p-value from the t distribution by hand
    assert r.n == 5
    assert r.mean_diff == pytest.approx(mean)
    assert r.t == pytest.approx(t)
    assert r.p_value == pytest.approx(p)
    assert r.d_z == pytest.approx(mean / sd)
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert (r.ci_low, r.ci_high) == pytest.approx((mean - half, mean + half))
    assert math.isnan(r.boot_low)  # only when asked for


def test_paired_degenerate_cases():
    same = paired({1: 0.5, 2: 0.6}, {1: 0.5, 2: 0.6})
    assert same.mean_diff == 0 and same.p_value == 1.0 and same.d_z == 0.0
    shifted = paired({1: 0.6, 2: 0.7, 3: 0.8}, {1: 0.5, 2: 0.6, 3: 0.7})
    assert (
        shifted.mean_diff == pytest.approx(0.1)
        and shifted.p_value == 0.0
        and shifted.d_z == math.inf
    )
    single = paired({1: 0.6}, {1: 0.5})
    assert single.n == 1 and single.mean_diff == pytest.approx(0.1)
    assert math.isnan(single.p_value) and math.isnan(single.d_z) and math.isnan(single.ci_low)
    none = paired({1: 0.6}, {2: 0.5})
    assert none.n == 0 and math.isnan(none.mean_diff)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    diff = [0.04, 0.01, 0.03, 0.04, 0.01]
    a = bootstrap_mean_ci(diff, n_boot=2000, seed=3)
    assert a == bootstrap_mean_ci(diff, n_boot=2000, seed=3)
    assert 0.01 <= a[0] <= np.mean(diff) <= a[1] <= 0.04
    r = paired(
        {i: 1 + d for i, d in enumerate(diff)}, {i: 1.0 for i in range(5)}, n_boot=2000, seed=3
    )
    assert (r.boot_low, r.boot_high) == pytest.approx(a)
    assert all(math.isnan(x) for x in bootstrap_mean_ci([0.1], n_boot=100))


def test_cell_tables():
    values = {
        "none": {1: {"mae": 0.9, "acc7": 0.2}, 2: {"mae": 0.8, "acc7": 0.3}},
        "full": {1: {"mae": 0.7, "acc7": 0.3}, 2: {"mae": 0.7, "acc7": 0.4}},
    }
    summaries = cell_summaries(values, ["mae", "acc7"])
    assert summaries["none"]["mae"].mean == pytest.approx(0.85)
    comps = compare_to_baseline(values, ["mae", "acc7"], {"none": "none", "full": "none"})
    assert set(comps) == {"full"}
    assert comps["full"]["mae"].mean_diff == pytest.approx(-0.15)
    assert (
        comps["full"]["acc7"].mean_diff == pytest.approx(0.1)
        and comps["full"]["acc7"].p_value == 0.0
    )


def test_holm_step_down_by_hand():
    from msaflow.tasks.stats import holm

    # sorted: 0.01 (x4 = 0.04), 0.03 (x3 = 0.09), 0.04 (x2 = 0.08 -> monotone 0.09), 0.2 (x1)
    assert holm([0.04, 0.01, 0.2, 0.03]) == pytest.approx([0.09, 0.04, 0.2, 0.09])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.01, float("nan"), 0.02])  # NaN is not counted: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_benjamini_hochberg_by_hand():
    from msaflow.tasks.stats import benjamini_hochberg

    # m = 4: 0.01*4/1 = 0.04; 0.03*4/2 = 0.06, 0.04*4/3 = 0.0533 -> min over later ranks 0.0533
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.2]) == pytest.approx(
        [0.04, 0.05333333, 0.05333333, 0.2]
    )
    assert math.isnan(benjamini_hochberg([float("nan"), 0.5])[0])


def test_adjusted_p_is_one_family_per_metric_over_the_cells():
    from msaflow.tasks.stats import adjust_comparisons

    values = {
        "base": {1: {"mae": 1.0}, 2: {"mae": 1.1}, 3: {"mae": 0.9}},
        "a": {1: {"mae": 0.8}, 2: {"mae": 0.95}, 3: {"mae": 0.7}},
        "b": {1: {"mae": 1.05}, 2: {"mae": 1.0}, 3: {"mae": 0.95}},
    }
    comp = compare_to_baseline(values, ["mae"], {"base": "base", "a": "base", "b": "base"})
    adj = adjust_comparisons(comp)
    raw = [comp["a"]["mae"].p_value, comp["b"]["mae"].p_value]
    lo, hi = sorted(raw)
    expect = {c: (2 * lo if comp[c]["mae"].p_value == lo else max(2 * lo, hi)) for c in ("a", "b")}
    assert adj["a"]["mae"] == pytest.approx(min(1, expect["a"]))
    assert adj["b"]["mae"] == pytest.approx(min(1, expect["b"]))
