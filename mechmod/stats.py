"""Small statistics shared by the estimators: Wilson intervals, the normal
interval of a mean and bootstrap intervals of a mean (of cases, or of
whole clusters of cases)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | tuple[None, None]:
    """Wilson score interval of a binomial proportion k/n (None, None for n = 0)."""
    if n <= 0:
        return None, None
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def normal_mean_ci(x) -> list[float]:
    """95% normal interval of the mean: mean +- 1.96 standard errors (ddof 1;
    zero width for one value)."""
    x = np.asarray(x, float)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0
    return [float(x.mean() - half), float(x.mean() + half)]


def bootstrap_mean_ci(x, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Mean of ``x`` with a percentile bootstrap interval; ``ci`` is None for
    fewer than two values."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": None, "ci": None, "n": 0}
    if x.size < 2:
        return {"mean": float(x.mean()), "ci": None, "n": int(x.size)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    a = (1 - ci) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return {"mean": float(x.mean()), "ci": [float(lo), float(hi)], "n": int(x.size)}


def cluster_bootstrap_mean_ci(x, clusters, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Mean of ``x`` with a percentile bootstrap interval that resamples whole
    clusters (``clusters[i]`` names the cluster of ``x[i]``: cases of one
    group move together); ``ci`` is None for fewer than two clusters."""
    x = np.asarray(x, dtype=float)
    keep = np.isfinite(x)
    x, clusters = x[keep], np.asarray(clusters, dtype=object)[keep]
    if x.size == 0:
        return {"mean": None, "ci": None, "n": 0}
    _, which = np.unique(clusters.astype(str), return_inverse=True)
    sums, counts = np.bincount(which, weights=x), np.bincount(which).astype(float)
    if sums.size < 2:
        return {"mean": float(x.mean()), "ci": None, "n": int(x.size)}
    idx = np.random.default_rng(seed).integers(0, sums.size, size=(n_boot, sums.size))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    a = (1 - ci) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return {"mean": float(x.mean()), "ci": [float(lo), float(hi)], "n": int(x.size)}
