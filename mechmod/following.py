"""Following ratios, the text-following curve and the balance point
(the paper's sections on following ratios and the balance point). Pure
functions on arrays.

The balance point is estimated two ways: the crossing of the binned curve
with 0.5 (the paper's reading) and a logistic fit
P(text) = sigmoid(a + b dHrel), balance = -a/b, with a case-resampling
bootstrap interval. A crossing outside the observed dHrel range, a flat or
rising curve and degenerate data are reported through ``status``; the
estimate is then None, never an extrapolation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from mechmod._io import jsonable
from mechmod.stats import wilson_interval

MIN_CASES = 10


def follow_outcome(y_m, y_v, y_t) -> np.ndarray:
    """'text' if Ym = Yt, 'vision' if Ym = Yv, else 'other'. Where Yv = Yt
    (not a conflict for this model) the outcome is 'other': neither modality
    can be told apart."""
    y_m, y_v, y_t = (np.asarray(a, dtype=object) for a in (y_m, y_v, y_t))
    out = np.full(y_m.shape, "other", dtype=object)
    agree = y_v == y_t
    out[(y_m == y_t) & ~agree] = "text"
    out[(y_m == y_v) & ~agree] = "vision"
    return out


def following_rates(follow, mask=None) -> dict[str, Any]:
    """TFR = text / (text + vision), VFR = 1 - TFR, on the cases in ``mask``."""
    f = np.asarray(follow, dtype=object)
    if mask is not None:
        f = f[np.asarray(mask, dtype=bool)]
    n_t, n_v = int((f == "text").sum()), int((f == "vision").sum())
    den = n_t + n_v
    tfr = n_t / den if den else None
    return {"tfr": tfr, "vfr": None if tfr is None else 1 - tfr, "n_text": n_t, "n_vision": n_v,
            "n_other": int(f.size - den), "n": int(f.size)}


def both_correct_mask(y_v, y_t, answer_vision, answer_text) -> np.ndarray:
    """Cases whose unimodal answers are both right (the paper's TFR subset)."""
    return (np.asarray(y_v, dtype=object) == np.asarray(answer_vision, dtype=object)) & (
        np.asarray(y_t, dtype=object) == np.asarray(answer_text, dtype=object))


@dataclass(frozen=True)
class Curve:
    """P(text-following) per dHrel bin with Wilson 95% intervals. Axes: one
    entry per non-empty bin."""

    edges: list[float]
    centers: list[float]
    p_text: list[float]
    n: list[int]
    ci_lo: list[float]
    ci_hi: list[float]
    binning: str

    def __post_init__(self) -> None:
        k = len(self.centers)
        if not (len(self.p_text) == len(self.n) == len(self.ci_lo) == len(self.ci_hi) == k):
            raise ValueError("Curve: per-bin lists differ in length")

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def following_curve(dh_rel, follows_text, bins: int = 8, binning: str = "quantile",
                    range: tuple[float, float] = (-2.0, 2.0)) -> Curve:
    """Bin cases by dHrel (equal-count 'quantile' bins or fixed 'width' bins
    over ``range``); each bin's center is the mean dHrel of its cases."""
    x = np.asarray(dh_rel, dtype=float)
    t = np.asarray(follows_text, dtype=bool)
    if binning == "quantile":
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1))) if x.size else np.array([])
    elif binning == "width":
        edges = np.linspace(range[0], range[1], bins + 1)
    else:
        raise ValueError(f"binning must be 'quantile' or 'width', got {binning!r}")
    centers, p, n, lo, hi = [], [], [], [], []
    if edges.size >= 2:
        idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
        for b in np.arange(edges.size - 1):
            sel = idx == b
            k = int(sel.sum())
            if k == 0:
                continue
            kt = int(t[sel].sum())
            l, h = wilson_interval(kt, k)
            centers.append(float(x[sel].mean()))
            p.append(kt / k)
            n.append(k)
            lo.append(l)
            hi.append(h)
    return Curve(edges=[float(e) for e in edges], centers=centers, p_text=p, n=n, ci_lo=lo, ci_hi=hi, binning=binning)


def _logistic_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, iters: int = 30):
    """Weighted logistic regression by Newton's method, batched over the rows
    of ``w`` [B, n]. Returns (a [B], b [B], se_b [B], converged [B])."""
    B = w.shape[0]
    beta = np.zeros((B, 2))
    X = np.stack([np.ones_like(x), x], axis=1)  # [n, 2]
    step = np.full((B, 2), np.inf)
    active = np.arange(B)  # rows still moving (a row whose step is ~0 has converged and stays put)
    for _ in range(iters):
        b, wa = beta[active], w[active]
        eta = np.clip(b[:, :1] + b[:, 1:] * x[None, :], -30, 30)
        p = 1.0 / (1.0 + np.exp(-eta))
        g = (wa * (y[None, :] - p)) @ X  # [B, 2]
        s = wa * p * (1 - p)
        h00, h01, h11 = s.sum(1), s @ x, s @ (x * x)
        det = h00 * h11 - h01 * h01 + 1e-12
        st = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det], 1)
        beta[active] = b + np.clip(st, -5, 5)
        step[active] = st
        active = active[np.abs(st).max(1) >= 1e-12]
        if active.size == 0:
            break
    eta = np.clip(beta[:, :1] + beta[:, 1:] * x[None, :], -30, 30)
    p = 1.0 / (1.0 + np.exp(-eta))
    s = w * p * (1 - p)
    h00, h01, h11 = s.sum(1), s @ x, s @ (x * x)
    det = h00 * h11 - h01 * h01
    with np.errstate(divide="ignore", invalid="ignore"):
        se_b = np.sqrt(np.where(det > 0, h00 / det, np.inf))
    converged = np.abs(step).max(1) < 1e-6
    return beta[:, 0], beta[:, 1], se_b, converged


def _crossings(curve: Curve) -> list[float]:
    """dHrel values where the binned curve crosses 0.5 (linear interpolation)."""
    out = []
    c, p = curve.centers, curve.p_text
    for i in np.arange(len(c) - 1):
        d0, d1 = p[i] - 0.5, p[i + 1] - 0.5
        if d0 == 0:
            out.append(c[i])
        elif d0 * d1 < 0:
            out.append(c[i] + (c[i + 1] - c[i]) * d0 / (d0 - d1))
    if p and p[-1] == 0.5:
        out.append(c[-1])
    return out


@dataclass(frozen=True)
class BalancePoint:
    """The dHrel at which P(text-following) = 0.5.

    ``estimate``: logistic-fit crossing (None unless status is 'ok');
    ``ci``: bootstrap percentile interval of it; ``interpolated``: first
    crossing of the binned curve (None if it never crosses); ``status``:
    'ok' | 'outside_range' (fitted crossing beyond the observed dHrel) |
    'flat' (slope not significantly negative) | 'separable' (perfect
    separation, no finite fit) | 'degenerate' (too few cases or one outcome
    only)."""

    estimate: float | None
    ci: list[float] | None
    interpolated: float | None
    crossings: list[float]
    fitted_crossing: float | None
    intercept: float | None
    slope: float | None
    slope_se: float | None
    status: str
    n: int
    dh_range: list[float] | None
    ci_level: float
    boot_valid_fraction: float | None

    @property
    def crosses(self) -> bool:
        return self.interpolated is not None

    def to_dict(self) -> dict[str, Any]:
        d = jsonable(asdict(self))
        d["crosses"] = self.crosses
        return d


def balance_point(dh_rel, follows_text, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                  bins: int = 8) -> BalancePoint:
    """Balance point of a following curve (see :class:`BalancePoint`)."""
    x = np.asarray(dh_rel, dtype=float)
    y = np.asarray(follows_text, dtype=bool).astype(float)
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    n = int(x.size)
    curve = following_curve(x, y.astype(bool), bins=bins)
    cross = _crossings(curve)
    base = dict(interpolated=cross[0] if cross else None, crossings=cross, n=n, ci_level=ci,
                dh_range=[float(x.min()), float(x.max())] if n else None)
    if n < MIN_CASES or y.min(initial=1) == y.max(initial=0) or np.ptp(x) == 0:
        return BalancePoint(estimate=None, ci=None, fitted_crossing=None, intercept=None, slope=None,
                            slope_se=None, status="degenerate", boot_valid_fraction=None, **base)
    a, b, se, conv = _logistic_fit(x, y, np.ones((1, n)))
    a, b, se = float(a[0]), float(b[0]), float(se[0])
    fitted = -a / b if b != 0 else None
    if not conv[0] or abs(b) > 50:
        status = "separable"
    elif not (b < 0 and b / se < -1.959963984540054):
        status = "flat"
    elif not (x.min() <= fitted <= x.max()):
        status = "outside_range"
    else:
        status = "ok"
    est, interval, valid = None, None, None
    if status == "ok":
        est = fitted
    if status == "ok" and n_boot > 0:
        rng = np.random.default_rng(seed)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
        ba, bb, _, conv = _logistic_fit(x, y, w)
        ok = (bb < 0) & conv  # a resample with no fitted crossing (separable, flat) gives no draw
        valid = float(ok.mean())
        bp = -ba[ok] / bb[ok]
        if bp.size >= 2:
            alpha = (1 - ci) / 2
            lo, hi = np.quantile(bp, [alpha, 1 - alpha])
            interval = [float(lo), float(hi)]
    return BalancePoint(estimate=est, ci=interval, fitted_crossing=fitted, intercept=a, slope=b, slope_se=se,
                        status=status, boot_valid_fraction=valid, **base)


def weighted_balance_points(dh_rel, follows_text, weights) -> np.ndarray:
    """The logistic-fit balance point -a/b under each row of case
    ``weights`` [B, n] (e.g. bootstrap counts, one fit per row, batched);
    NaN where a row's fit does not converge, does not decrease or crosses
    0.5 outside the observed dHrel range."""
    x = np.asarray(dh_rel, dtype=float)
    y = np.asarray(follows_text, dtype=bool).astype(float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    if x.size == 0:
        return np.full(w.shape[0], np.nan)
    a, b, _, conv = _logistic_fit(x, y, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = -a / b
    ok = conv & (b < 0) & (bp >= x.min()) & (bp <= x.max())
    return np.where(ok, bp, np.nan)


def entropy_split(dh_rel, follows_text, h_total, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Split at the median of total entropy H(t) + H(v) (low: <= median) and
    estimate each half's balance point (the paper's robustness check)."""
    h = np.asarray(h_total, dtype=float)
    x, t = np.asarray(dh_rel, dtype=float), np.asarray(follows_text, dtype=bool)
    med = float(np.median(h)) if h.size else float("nan")
    low = h <= med
    return {
        "median": med,
        "low_mask": low,
        "high_mask": ~low,
        "low": balance_point(x[low], t[low], n_boot=n_boot, seed=seed),
        "high": balance_point(x[~low], t[~low], n_boot=n_boot, seed=seed),
    }


def monotonicity_test(dh_rel, follows_text) -> dict[str, Any]:
    """Is P(text) decreasing in dHrel? One-sided Wald test of the logistic
    slope (H1: b < 0) and Spearman's rho between dHrel and the outcome."""
    x, y = np.asarray(dh_rel, dtype=float), np.asarray(follows_text, dtype=float)
    if x.size < 3 or y.min(initial=1) == y.max(initial=0) or np.ptp(x) == 0:
        return {"slope": None, "z": None, "p_value": None, "spearman_rho": None, "spearman_p": None,
                "decreasing": None}
    _, b, se, _ = _logistic_fit(x, y, np.ones((1, x.size)))
    z = float(b[0] / se[0]) if np.isfinite(se[0]) and se[0] > 0 else float("-inf") if b[0] < 0 else float("inf")
    p = float(sps.norm.cdf(z))
    rho, rp = sps.spearmanr(x, y)
    return jsonable({"slope": float(b[0]), "z": z, "p_value": p, "spearman_rho": float(rho),
                   "spearman_p": float(rp), "decreasing": bool(p < 0.05)})


def compare_balance_points(dh1, t1, dh2, t2, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Do two runs' balance points differ? Bootstrap the difference
    (run 2 - run 1) with independent case resampling; two-sided p-value from
    the bootstrap distribution's mass on either side of zero."""
    draws = []
    for k, (x, t) in enumerate(((dh1, t1), (dh2, t2))):
        x, y = np.asarray(x, dtype=float), np.asarray(t, dtype=float)
        rng = np.random.default_rng(seed + 7919 * k)
        w = rng.multinomial(x.size, np.full(x.size, 1.0 / x.size), size=n_boot).astype(float)
        a, b, _, conv = _logistic_fit(x, y, w)
        bp = np.where((b < 0) & conv, -a / np.where(b == 0, -1, b), np.nan)
        draws.append(bp)
    diff = draws[1] - draws[0]
    diff = diff[np.isfinite(diff)]
    if diff.size < 2:
        return {"difference": None, "ci": None, "p_value": None, "n_valid": int(diff.size)}
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(diff, [alpha, 1 - alpha])
    p = min(1.0, 2 * min((diff <= 0).mean(), (diff >= 0).mean()))
    b1 = balance_point(dh1, t1, n_boot=0)
    b2 = balance_point(dh2, t2, n_boot=0)
    point = (b2.fitted_crossing - b1.fitted_crossing) if (b1.fitted_crossing is not None and b2.fitted_crossing is not None) else None
    return jsonable({"difference": point, "ci": [float(lo), float(hi)], "p_value": float(p), "n_valid": int(diff.size)})


def region(dh_rel, balance: float, radius: float = 0.5) -> np.ndarray:
    """'ambiguous' where |dHrel - balance| < radius, else 'clear'."""
    return np.where(boundary_mask(dh_rel, balance, radius), "ambiguous", "clear").astype(object)


def boundary_mask(dh_rel, balance: float, radius: float = 0.5) -> np.ndarray:
    """Cases near the balance point (for export to fine-tuning studies)."""
    return np.abs(np.asarray(dh_rel, dtype=float) - balance) < radius
