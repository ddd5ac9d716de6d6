"""Layer dynamics at the answer position (arXiv 2511.02243, Sec. 4):
per-layer votes, oscillation counts, where switches happen, commit layers,
and their summaries by region. Pure functions on arrays; the lens that
produced the per-layer top-1 labels is the caller's choice.

One layer index everywhere: -1 is the embedding output, 0..L-1 the decoder
layers (residual index ``i`` of ``ResidualTrace.resid`` is layer ``i - 1``).
The dynamics count the decoder layers, as the paper does; the embedding
output (the same answer-position token, hence the same vote, in every
prompt) is counted only when asked. Functions taking per-layer rows take
``first_layer``, the layer number of the rows' first column (0, or -1 when
the embedding output leads)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mechmod.stats import bootstrap_mean_ci

VOTES = ("vision", "text", "other")
#: the layer number of the embedding output (decoder layers are 0..L-1)
EMBEDDING_LAYER = -1
#: a layer-valued result with no such layer: a commit layer that never comes,
#: a logit difference whose sign never changes
NO_LAYER = -2
#: thirds of the decoder layers, for where switches happen
BANDS = ("early", "middle", "late")


def first_counted_layer(include_embedding: bool) -> int:
    """The first layer the dynamics count: -1 (the embedding output) when
    ``include_embedding``, else 0 (the first decoder layer)."""
    return EMBEDDING_LAYER if include_embedding else 0


def counted(per_residual, include_embedding: bool) -> np.ndarray:
    """The columns of ``per_residual`` [cases, L+1] (one per residual index,
    the embedding output first, as ``ResidualTrace.resid``) that the
    dynamics count: the decoder layers, with the embedding output in front
    when ``include_embedding``."""
    a = np.asarray(per_residual)
    return a[:, first_counted_layer(include_embedding) + 1 :]


def counted_votes(layer_votes_column, embedding_votes=None) -> np.ndarray:
    """The votes [cases, layers] of a results table: its ``layer_votes``
    lists (decoder layers 0..L-1), behind its ``embedding_vote`` column
    when ``embedding_votes`` is given (then column 0 is layer -1)."""
    rows = [list(v) for v in layer_votes_column]
    if embedding_votes is not None:
        rows = [[e, *r] for e, r in zip(embedding_votes, rows)]
    if len({len(r) for r in rows}) > 1:
        raise ValueError("layer_votes lists differ in length")
    return np.asarray(rows, dtype=object).reshape(len(rows), -1)


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


def switch_arrivals(votes) -> np.ndarray:
    """[cases, layers] bool: a vision <-> text switch arrives at this layer,
    i.e. its vote is 'vision' or 'text' and differs from the last such vote
    before it ('other' layers dropped). A row's sum is its oscillation count."""
    v = np.asarray(votes, dtype=object)
    if v.ndim != 2:
        raise ValueError(f"votes must be [cases, layers], got shape {v.shape}")
    code = np.where(v == "vision", 1, np.where(v == "text", 2, 0))
    out = np.zeros(code.shape, dtype=bool)
    prev = np.zeros(code.shape[0], dtype=np.int64)  # last vision/text vote so far (0: none yet)
    for j in range(code.shape[1]):
        c = code[:, j]
        out[:, j] = (c > 0) & (prev > 0) & (c != prev)
        prev = np.where(c > 0, c, prev)
    return out


def count_oscillations_batch(votes) -> np.ndarray:
    """:func:`count_oscillations` for every row of a [cases, layers] array."""
    return switch_arrivals(votes).sum(axis=1).astype(np.int64)


def commit_layer(top1_is_final, first_layer: int = 0) -> np.ndarray | int:
    """First layer from which the final answer stays top-1 to the last layer
    (column ``j`` is layer ``first_layer + j``); NO_LAYER if the last layer
    itself is not the final answer. Works on [layers] or [cases, layers]."""
    m = np.asarray(top1_is_final, dtype=bool)
    squeeze = m.ndim == 1
    m = np.atleast_2d(m)
    # suffix_all[i, l] = all(m[i, l:])
    suffix_all = np.flip(np.cumprod(np.flip(m, axis=1), axis=1), axis=1).astype(bool)
    n_true = suffix_all.sum(axis=1)
    out = np.where(n_true > 0, first_layer + m.shape[1] - n_true, NO_LAYER)
    return int(out[0]) if squeeze else out


def last_sign_change(logit_diff, first_layer: int = 0) -> int | None:
    """The last layer whose logit-difference sign differs from the previous
    non-zero sign (exact zeros carry no sign; entry ``j`` is layer
    ``first_layer + j``); None if the sign never changes."""
    d = np.asarray(logit_diff, dtype=float)
    last, prev = None, 0.0
    for i, s in enumerate(np.sign(d)):
        if s == 0:
            continue
        if prev != 0 and s != prev:
            last = first_layer + i
        prev = s
    return last


def layer_bands(n_layers: int) -> dict[str, list[int]]:
    """The decoder layers 0..n_layers-1 in thirds (early, middle, late; the
    earlier thirds take the remainder, as ``numpy.array_split``)."""
    return {name: [int(x) for x in part] for name, part in zip(BANDS, np.array_split(np.arange(n_layers), 3))}


def switch_rates(votes, first_layer: int = 0, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Where switches happen, for one set of cases: per layer, the number of
    switches arriving there (``switches``, :func:`switch_arrivals`; they sum
    to the cases' oscillation counts) and the share of cases with one
    (``rate``), with percentile bootstrap 95% intervals over cases; the
    rates summed over layers (``total``) are the mean oscillation count.
    ``band``: the third of the decoder layers holding most switches and its
    share of them (None when no case switches)."""
    arrivals = switch_arrivals(votes).astype(float)
    n, width = arrivals.shape
    layers = list(range(first_layer, first_layer + width))
    out: dict[str, Any] = {"n": int(n), "layers": layers, "switches": arrivals.sum(axis=0).astype(int).tolist(),
                           "rate": None, "ci_lo": None, "ci_hi": None, "total": None, "band": None,
                           "band_shares": None}
    if n == 0:
        return out
    rate = arrivals.mean(axis=0)
    out.update(rate=rate.tolist(), total=float(arrivals.sum(axis=1).mean()))
    if n >= 2:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        boot = np.stack([arrivals[i].mean(axis=0) for i in idx])
        lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
        out.update(ci_lo=lo.tolist(), ci_hi=hi.tolist())
    per_layer = dict(zip(layers, out["switches"]))
    total = sum(per_layer.values())
    if total > 0:
        decoder = [x for x in layers if x >= 0]
        bands = layer_bands(max(decoder) + 1 if decoder else 0)
        shares = {name: sum(per_layer.get(x, 0) for x in ls) / total for name, ls in bands.items()}
        best = max(BANDS, key=lambda b: shares[b])  # ties: the earlier band
        out.update(band={"name": best, "layers": [bands[best][0], bands[best][-1]] if bands[best] else [],
                         "share": shares[best]}, band_shares=shares)
    return out


def switch_rate_summary(votes, regions, controls, first_layer: int = 0, n_boot: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """:func:`switch_rates` for the ambiguous and clear regions (conflict
    cases, control == 'none') and for each control, keyed as
    :func:`oscillation_summary`."""
    v = np.asarray(votes, dtype=object).reshape(len(votes), -1)
    reg = np.asarray(regions, dtype=object)
    ctl = np.asarray(controls, dtype=object)
    out: dict[str, Any] = {}
    conflict = ctl == "none"
    for name in ("ambiguous", "clear"):
        out[name] = switch_rates(v[conflict & (reg == name)], first_layer, n_boot=n_boot, seed=seed)
    for name in sorted(set(ctl.tolist()) - {"none"}):
        out[f"control_{name}"] = switch_rates(v[ctl == name], first_layer, n_boot=n_boot, seed=seed)
    return out


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


def logit_diff_by_dh(dh_rel, logit_diff, edges: Sequence[float] = DH_EDGES,
                     first_layer: int = 0) -> dict[str, Any]:
    """Mean per-layer logit difference (text minus vision answer) in bins of
    dHrel (paper Fig. 6a). ``logit_diff`` [cases, layers], column ``j`` being
    layer ``first_layer + j``. Returns edges, centers, n per bin, ``layers``
    and ``mean`` [bins][layers] (None for empty bins)."""
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
            "n_layers": int(d.shape[1]), "layers": list(range(first_layer, first_layer + d.shape[1]))}


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
