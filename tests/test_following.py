import numpy as np
import pytest

from mechmod.following import (
    balance_point,
    both_correct_mask,
    compare_balance_points,
    entropy_split,
    follow_outcome,
    following_curve,
    following_rates,
    monotonicity_test,
    region,
)


def simulate(n, balance, slope, rng):
    """Cases from a known curve P(text) = sigmoid(slope * (dh - balance)), slope < 0."""
    dh = rng.uniform(-2, 2, size=n)
    p = 1 / (1 + np.exp(-slope * (dh - balance)))
    return dh, rng.random(n) < p


def test_follow_outcome_and_rates():
    f = follow_outcome(["red", "blue", "green", "red"], ["red", "red", "red", "red"], ["blue", "blue", "blue", "red"])
    assert f.tolist() == ["vision", "text", "other", "other"]  # last: Yv == Yt is not a conflict
    r = following_rates(["text", "text", "vision", "other"])
    assert r["tfr"] == pytest.approx(2 / 3) and r["vfr"] == pytest.approx(1 / 3) and r["n_other"] == 1
    assert following_rates(["other"])["tfr"] is None
    m = both_correct_mask(["red", "red"], ["blue", "red"], ["red", "red"], ["blue", "blue"])
    assert m.tolist() == [True, False]


def test_curve_bins_and_wilson():
    dh = np.array([-1.0, -1.0, 1.0, 1.0])
    t = np.array([True, True, False, True])
    c = following_curve(dh, t, bins=2, binning="width", range=(-2, 2))
    assert c.centers == [-1.0, 1.0] and c.p_text == [1.0, 0.5] and c.n == [2, 2]
    assert c.ci_lo[1] < 0.5 < c.ci_hi[1]
    q = following_curve(np.arange(100.0), np.arange(100) < 50, bins=4)
    assert q.n == [25, 25, 25, 25]


def test_balance_point_recovers_known_truth():
    rng = np.random.default_rng(0)
    dh, t = simulate(2000, 0.4, -3.0, rng)
    bp = balance_point(dh, t, n_boot=300)
    assert bp.status == "ok"
    assert bp.estimate == pytest.approx(0.4, abs=0.1)
    assert bp.ci[0] < 0.4 < bp.ci[1]
    assert bp.interpolated == pytest.approx(0.4, abs=0.2)


def test_bootstrap_interval_coverage_and_bias_simulation():
    """>= 90% of 95% intervals cover the true balance point; the mean
    estimate is within 0.05 of the truth."""
    rng = np.random.default_rng(123)
    cover, est = [], []
    for truth in (-0.6, 0.0, 0.4):
        for _ in range(40):
            dh, t = simulate(500, truth, -2.5, rng)
            bp = balance_point(dh, t, n_boot=200, seed=int(rng.integers(1 << 30)))
            assert bp.status == "ok"
            cover.append(bp.ci[0] <= truth <= bp.ci[1])
            est.append(bp.estimate - truth)
    assert np.mean(cover) >= 0.90
    assert abs(np.mean(est)) < 0.05


def test_no_crossing_and_flat_and_degenerate_are_reported():
    rng = np.random.default_rng(2)
    dh = rng.uniform(-2, 2, 800)
    always_text = rng.random(800) < 0.9 - 0.1 * (dh + 2) / 4  # decreasing, never reaches 0.5
    bp = balance_point(dh, always_text, n_boot=100)
    assert bp.estimate is None and bp.status in ("outside_range", "flat")
    assert bp.interpolated is None and not bp.crosses
    flat = balance_point(dh, rng.random(800) < 0.5, n_boot=100)
    assert flat.status == "flat" and flat.estimate is None
    rising = balance_point(*simulate(800, 0.0, 3.0, rng), n_boot=100)
    assert rising.status == "flat"
    assert balance_point(dh[:5], always_text[:5]).status == "degenerate"
    assert balance_point(dh, np.ones(800, bool)).status == "degenerate"
    sep = balance_point(dh, dh < 0.3, n_boot=50)
    assert sep.status == "separable" and sep.estimate is None


def test_monotonicity_test():
    rng = np.random.default_rng(3)
    assert monotonicity_test(*simulate(600, 0.0, -2.0, rng))["p_value"] < 0.01
    rejections = sum(monotonicity_test(rng.uniform(-2, 2, 300), rng.random(300) < 0.5)["p_value"] < 0.05 for _ in range(40))
    assert rejections <= 6


def test_compare_balance_points():
    rng = np.random.default_rng(4)
    a = simulate(800, -0.4, -3.0, rng)
    b = simulate(800, 0.4, -3.0, rng)
    c = simulate(800, -0.4, -3.0, rng)
    diff = compare_balance_points(*a, *b, n_boot=300)
    assert diff["p_value"] < 0.05 and diff["ci"][0] > 0
    same = compare_balance_points(*a, *c, n_boot=300)
    assert same["ci"][0] < 0 < same["ci"][1]


def test_entropy_split_and_region():
    rng = np.random.default_rng(5)
    dh, t = simulate(1000, 0.0, -3.0, rng)
    h = rng.exponential(size=1000)
    s = entropy_split(dh, t, h, n_boot=50)
    assert s["low_mask"].sum() == 500 and s["low"].status == "ok" and s["high"].status == "ok"
    assert region([0.1, 1.0, -0.6], 0.0, 0.5).tolist() == ["ambiguous", "clear", "clear"]
