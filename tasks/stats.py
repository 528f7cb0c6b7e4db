"""Multi-seed statistics: per-cell mean ± std with a t confidence interval, and paired comparisons.

Conventions (documented because small n makes them matter):
- std is the sample standard deviation (ddof=1);
  the CI is ``mean ± t_{1-a/2, n-1} * std / sqrt(n)``.
- Non-finite values (a NaN correlation from a constant prediction) are dropped; ``n`` counts what
  was used. With n = 1 there is no spread: std, CI and p are NaN, never a made-up zero.
- Paired comparisons match runs by seed (same seed = same data order and initialisation), and use
  only seeds where both sides are finite. ``diff = cell - baseline``.
- ``d_z`` is Cohen's effect size for paired data: mean(diff) / std(diff).
- Degenerate pairs (every difference equal, std(diff) = 0): with mean 0 we report p = 1, d_z = 0;
  otherwise p = 0 and d_z = ±inf, the limits of the t statistic. scipy returns NaN there.
- The bootstrap CI (optional) resamples the seed differences with a seeded generator, so the same
  numbers always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

NAN = float("nan")


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Paired:
    """One cell against the baseline over matched seeds."""

    n: int
    mean_diff: float
    std_diff: float
    ci_low: float  # t interval of the mean difference
    ci_high: float
    t: float
    p_value: float  # two-sided paired t-test
    d_z: float
    boot_low: float = NAN  # bootstrap percentile interval of the mean difference (if asked for)
    boot_high: float = NAN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def t_interval(mean: float, std: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    if n < 2 or not math.isfinite(std):
        return NAN, NAN
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and t confidence interval of the finite values."""
    arr = _finite(values)
    n = len(arr)
    if n == 0:
        return Summary(0, NAN, NAN, NAN, NAN)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else NAN
    low, high = t_interval(mean, std, n, confidence)
    return Summary(n, mean, std, low, high)


def bootstrap_mean_ci(
    values: Iterable[float], n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; NaN for fewer than two values."""
    arr = _finite(values)
    if len(arr) < 2 or n_boot < 1:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n_boot, len(arr)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired(
    cell: Mapping[Any, float],
    baseline: Mapping[Any, float],
    confidence: float = 0.95,
    n_boot: int = 0,
    seed: int = 0,
) -> Paired:
    """Compare ``cell`` with ``baseline``, both keyed by seed, over the seeds they share."""
    seeds = [
        s
        for s in cell
        if s in baseline and math.isfinite(float(cell[s])) and math.isfinite(float(baseline[s]))
    ]
    diff = np.asarray(
        [float(cell[s]) - float(baseline[s]) for s in sorted(seeds, key=str)], dtype=np.float64
    )
    n = len(diff)
    if n == 0:
        return Paired(0, NAN, NAN, NAN, NAN, NAN, NAN, NAN)
    mean = float(diff.mean())
    if n == 1:
        return Paired(1, mean, NAN, NAN, NAN, NAN, NAN, NAN)
    std = float(diff.std(ddof=1))
    low, high = t_interval(mean, std, n, confidence)
    # np.ptp, not std == 0: float error makes the std of equal differences ~1e-17, not 0.
    if np.ptp(diff) <= 1e-12 * max(1.0, abs(mean)):
        zero = abs(mean) <= 1e-12
        t, p, d_z = (
            (0.0, 1.0, 0.0)
            if zero
            else (math.copysign(math.inf, mean), 0.0, math.copysign(math.inf, mean))
        )
        low = high = mean
    else:
        res = sps.ttest_rel(
            [float(cell[s]) for s in sorted(seeds, key=str)],
            [float(baseline[s]) for s in sorted(seeds, key=str)],
        )
        t, p, d_z = float(res.statistic), float(res.pvalue), mean / std
    boot = bootstrap_mean_ci(diff, n_boot, confidence, seed) if n_boot else (NAN, NAN)
    return Paired(n, mean, std, low, high, t, p, d_z, *boot)


def cell_summaries(
    values: Mapping[str, Mapping[Any, Mapping[str, float]]],
    metrics: Iterable[str],
    confidence: float = 0.95,
) -> dict[str, dict[str, Summary]]:
    """``values[cell][seed][metric]`` -> ``{cell: {metric: Summary}}``."""
    metrics = list(metrics)
    return {
        cell: {
            m: summarize([r[m] for r in by_seed.values() if m in r], confidence) for m in metrics
        }
        for cell, by_seed in values.items()
    }


def compare_to_baseline(
    values: Mapping[str, Mapping[Any, Mapping[str, float]]],
    metrics: Iterable[str],
    baseline_of: Mapping[str, str],
    confidence: float = 0.95,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, dict[str, Paired]]:
    """``{cell: {metric: Paired}}`` for every cell with a baseline other than itself."""
    metrics = list(metrics)
    out: dict[str, dict[str, Paired]] = {}
    for cell, base in baseline_of.items():
        if cell == base or cell not in values or base not in values:
            continue
        out[cell] = {
            m: paired(
                {s: r[m] for s, r in values[cell].items() if m in r},
                {s: r[m] for s, r in values[base].items() if m in r},
                confidence,
                n_boot,
                seed,
            )
            for m in metrics
        }
    return out


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error), in the input order; NaN stays NaN and is not
    counted in the family. ``p_(i)`` sorted ascending becomes ``max_{j<=i} min(1, (m-j+1)
    p_(j))``."""
    ps = [float(p) for p in p_values]
    idx = sorted((i for i, p in enumerate(ps) if math.isfinite(p)), key=lambda i: ps[i])
    m = len(idx)
    out = [NAN] * len(ps)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def benjamini_hochberg(p_values: Iterable[float]) -> list[float]:
    """Benjamini-Hochberg adjustment (false discovery rate; scipy's ``false_discovery_control``), in
    the input order; NaN stays NaN and is not counted in the family."""
    ps = [float(p) for p in p_values]
    idx = [i for i, p in enumerate(ps) if math.isfinite(p)]
    out = [NAN] * len(ps)
    if idx:
        for i, q in zip(idx, sps.false_discovery_control([ps[i] for i in idx]), strict=True):
            out[i] = float(q)
    return out


def adjust_comparisons(
    comparisons: Mapping[str, Mapping[str, Paired]], method: str = "holm"
) -> dict[str, dict[str, float]]:
    """Adjusted p per ``{cell: {metric: p}}``: one family per metric, over the table's cells."""
    adjust = {"holm": holm, "bh": benjamini_hochberg}[method]
    out: dict[str, dict[str, float]] = {cell: {} for cell in comparisons}
    metrics = sorted({m for by_metric in comparisons.values() for m in by_metric})
    for m in metrics:
        cells = [c for c in comparisons if m in comparisons[c]]
        for cell, p in zip(cells, adjust([comparisons[c][m].p_value for c in cells]), strict=True):
            out[cell][m] = p
    return out
