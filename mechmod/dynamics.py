"""Layer dynamics at the answer position (paper-notes §4): per-layer votes,
oscillation counts, commit layers, and their summaries by region. Pure
functions on arrays; the lens that produced the per-layer top-1 labels is
the caller's choice."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mechmod.stats import bootstrap_mean_ci

VOTES = ("vision", "text", "other")


def layer_votes(top1_labels, answer_vision, answer_text) -> np.ndarray:
    """Vote of each layer: 'vision' if its top-1 label is the image's answer,
    'text' if the description's, else 'other'. ``top1_labels`` [cases,
    layers]; answers [cases]."""
    top = np.asarray(top1_labels, dtype=object)
    av = np.asarray(answer_vision, dtype=object)[:, None]
    at = np.asarray(answer_text, dtype=object)[:, None]
    out = np.full(top.shape, "other", dtype=object)
    out[top == at] = "text"
    out[top == av] = "vision"
    return out


def count_oscillations(votes: Sequence[str]) -> int:
    """Switches between 'vision' and 'text' once 'other' layers are dropped:
    vision -> other -> text is 1, vision -> text -> vision is 2."""
    kept = [v for v in votes if v in ("vision", "text")]
    return int(sum(a != b for a, b in zip(kept, kept[1:])))


def count_oscillations_batch(votes) -> np.ndarray:
    """:func:`count_oscillations` for every row of a [cases, layers] array."""
    v = np.asarray(votes, dtype=object)
    if v.ndim != 2:
        raise ValueError(f"votes must be [cases, layers], got shape {v.shape}")
    code = np.where(v == "vision", 1, np.where(v == "text", 2, 0))
    out = np.zeros(v.shape[0], dtype=np.int64)
    for i, row in enumerate(code):
        kept = row[row > 0]
        out[i] = int(np.count_nonzero(kept[1:] != kept[:-1]))
    return out


def commit_layer(top1_is_final) -> np.ndarray | int:
    """First layer from which the final answer stays top-1 to the last layer;
    -1 if the last layer itself is not the final answer. Works on [layers]
    or [cases, layers]."""
    m = np.asarray(top1_is_final, dtype=bool)
    squeeze = m.ndim == 1
    m = np.atleast_2d(m)
    # suffix_all[i, l] = all(m[i, l:])
    suffix_all = np.flip(np.cumprod(np.flip(m, axis=1), axis=1), axis=1).astype(bool)
    n_true = suffix_all.sum(axis=1)
    out = np.where(n_true > 0, m.shape[1] - n_true, -1)
    return int(out[0]) if squeeze else out


def last_sign_change(logit_diff) -> int | None:
    """Index of the last layer whose logit-difference sign differs from the
    previous non-zero sign (exact zeros carry no sign); None if the sign
    never changes."""
    d = np.asarray(logit_diff, dtype=float)
    last, prev = None, 0.0
    for i, s in enumerate(np.sign(d)):
        if s == 0:
            continue
        if prev != 0 and s != prev:
            last = i
        prev = s
    return last


def oscillation_summary(oscillations, regions, controls, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean oscillations with bootstrap 95% intervals for the ambiguous and
    clear regions (conflict cases, control == 'none') and for each control
    (paper Fig. 5)."""
    osc = np.asarray(oscillations, dtype=float)
    reg = np.asarray(regions, dtype=object)
    ctl = np.asarray(controls, dtype=object)
    out: dict[str, Any] = {}
    conflict = ctl == "none"
    for name in ("ambiguous", "clear"):
        out[name] = bootstrap_mean_ci(osc[conflict & (reg == name)], n_boot=n_boot, seed=seed)
    for name in sorted(set(ctl.tolist()) - {"none"}):
        out[f"control_{name}"] = bootstrap_mean_ci(osc[ctl == name], n_boot=n_boot, seed=seed)
    return out


DH_EDGES = (-2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


def logit_diff_by_dh(dh_rel, logit_diff, edges: Sequence[float] = DH_EDGES) -> dict[str, Any]:
    """Mean per-layer logit difference (text minus vision answer) in bins of
    dHrel (paper Fig. 6a). ``logit_diff`` [cases, layers]. Returns edges,
    centers, n per bin and ``mean`` [bins][layers] (None for empty bins)."""
    dh = np.asarray(dh_rel, dtype=float)
    d = np.asarray(logit_diff, dtype=float)
    if d.ndim != 2 or len(d) != len(dh):
        raise ValueError(f"logit_diff must be [cases, layers] with one row per dh_rel value, got {d.shape} and {dh.shape}")
    e = np.asarray(edges, dtype=float)
    idx = np.clip(np.searchsorted(e, dh, side="right") - 1, 0, len(e) - 2)
    ok = np.isfinite(dh) & (dh >= e[0]) & (dh <= e[-1])
    mean, n = [], []
    for b in range(len(e) - 1):
        sel = ok & (idx == b)
        n.append(int(sel.sum()))
        mean.append(d[sel].mean(axis=0).tolist() if sel.any() else None)
    return {"edges": e.tolist(), "centers": ((e[:-1] + e[1:]) / 2).tolist(), "n": n, "mean": mean,
            "n_layers": int(d.shape[1])}


def pick_case_study(image_ids, dts, final_diffs) -> str | None:
    """The image whose descriptions dt 0, 1, 2 are all present and whose
    final logit differences spread the most (the most instructive case for
    paper Fig. 6b); None when no image has all three."""
    img = np.asarray(image_ids, dtype=object)
    dt = np.asarray(dts, dtype=int)
    fd = np.asarray(final_diffs, dtype=float)
    best, best_spread = None, -1.0
    for image in dict.fromkeys(img.tolist()):
        sel = img == image
        if set(dt[sel].tolist()) >= {0, 1, 2}:
            spread = float(np.ptp(fd[sel]))
            if spread > best_spread:
                best, best_spread = image, spread
    return best
