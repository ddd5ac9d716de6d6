"""Linear probes on the answer-position residual: is the choice decodable
before the lens shows it? (Hua, Yun and Pavlick, 2025; arXiv 2511.02243.)

Per layer (-1 the embedding output, 0..L-1 the decoder layers) an
L2-regularised logistic probe on standardised features predicts

* ``follow``: the follow outcome (text vs vision) of the conflict cases
  whose answer is one of the two, compared with the logit lens's vote at
  the same layer (the share of cases whose vote is their outcome). The
  lens is told each case's two answers; the probe is not, and held-out
  groups have other colours, so it must read the modality chosen, not
  the colour (features are centred per answer colour, see below);
* ``conflict``: a conflict case (``control == 'none'``) against the opt-in
  ``consistent`` control of the same group (image and description agree,
  otherwise the same prompt), where the dataset has it.

Colour identity is a confound: a held-out group's colours appear in the
training groups in other roles (a colour said by one group's description
is another group's image colour), which drives a linear probe below
chance. So each probe's features are first centred on the training
cases' mean for the case's answer colour (``follow``) or described colour
(``conflict``): what is left to read is the choice, not the colour word.
With few groups the other colours (the image's, the unchosen one) still
recur in other roles, and the artifact can remain; it fades as groups
grow. Removing every colour's main effect is no cure: with a group held
out, agreement itself is additive in the colours of the training groups.

Accuracy is held out by group (folds split by ``group_id``, so no group is
seen in training and testing), with 95% bootstrap intervals that resample
groups. The conflict cases' attention mass gives the text-dominance index
per token (:func:`mechmod.summary.text_dominance`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from mechmod._gc import frozen_heap
from mechmod.data import load_cases
from mechmod.dynamics import layer_votes
from mechmod.errors import MechmodError
from mechmod.interventions.clean import CleanCases
from mechmod.lenses import LogitLens, Unembed
from mechmod.names import ATTENTION_SPANS
from mechmod.stats import cluster_bootstrap_mean_ci
from mechmod.summary import text_dominance
from mechmod.tracing import span_mass, trace

TARGETS = ("follow", "conflict")
N_FOLDS = 5
#: the columns of OUT/probes.parquet, one row per layer and target
COLUMNS = ("layer", "target", "accuracy", "ci_lo", "ci_hi", "lens_accuracy", "lens_ci_lo", "lens_ci_hi", "n_cases",
           "chance")


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 200):
    """An L2-regularised logistic regression on standardised ``x`` [N, D]
    (0/1 labels ``y``): minimises sum of log losses + l2 / 2 * |w|^2 (the
    intercept free) with L-BFGS in float64, deterministic. Returns a
    function from features [M, D] to P(y = 1) [M]."""
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-8] = 1.0  # a constant feature carries nothing
    z = torch.from_numpy((x - mean) / std).double()
    t = torch.from_numpy(np.asarray(y, dtype=np.float64))
    w = torch.zeros(z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=iters, tolerance_grad=1e-10, tolerance_change=1e-14, history_size=20,
                            line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = (torch.nn.functional.binary_cross_entropy_with_logits(z @ w[:-1] + w[-1], t, reduction="sum")
                 + 0.5 * l2 * (w[:-1] ** 2).sum()) / len(t)
        value.backward()
        return value

    opt.step(loss)
    coef = w.detach()
    return lambda f: torch.sigmoid(torch.from_numpy((f - mean) / std).double() @ coef[:-1] + coef[-1]).numpy()


def group_folds(groups, n_folds: int = N_FOLDS, seed: int = 0) -> np.ndarray:
    """A fold index per case: the groups shuffled by ``seed`` and dealt
    round-robin into min(n_folds, number of groups) folds."""
    names = np.unique(np.asarray(groups, dtype=object).astype(str))
    if names.size < 2:
        raise MechmodError(f"probes need cases of at least 2 groups to hold one out; got {names.size}")
    order = np.random.default_rng(seed).permutation(names.size)
    fold_of = {names[g]: i % min(n_folds, names.size) for i, g in enumerate(order)}
    return np.array([fold_of[str(g)] for g in groups])


def centred(x: np.ndarray, keys, train: np.ndarray) -> np.ndarray:
    """``x`` less, per row, the mean of the training rows with its key (the
    mean of all training rows for a key training never saw), so that the
    key's identity carries nothing a linear probe could read."""
    keys = np.asarray(keys, dtype=object)
    means = {k: x[train & (keys == k)].mean(0) for k in set(keys[train])}
    overall = x[train].mean(0)
    return x - np.stack([means.get(k, overall) for k in keys])


def heldout_correct(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float = 1.0, confound=None) -> np.ndarray:
    """[N] bool: each case's probe prediction, from the probe fitted on the
    other folds, equals its label. ``confound`` [N] (or None): a nuisance
    key per case whose training means are removed first (:func:`centred`)."""
    y = np.asarray(y, dtype=bool)
    correct = np.zeros(len(y), dtype=bool)
    for f in np.unique(folds):
        test = folds == f
        xf = x if confound is None else centred(x, confound, ~test)  # only the other folds set the means
        train_y = y[~test]
        if train_y.all() or not train_y.any():  # one class only: predict it
            correct[test] = y[test] == train_y[0]
            continue
        correct[test] = (fit_logistic(xf[~test], train_y, l2)(xf[test]) > 0.5) == y[test]
    return correct


def probe_rows(resid: np.ndarray, y, groups, target: str, lens_correct: np.ndarray | None = None, l2: float = 1.0,
               n_folds: int = N_FOLDS, n_boot: int = 1000, seed: int = 0, confound=None) -> list[dict]:
    """One row per layer: the held-out probe accuracy on ``resid`` [N, L+1, D]
    (residual index i = layer i - 1) with its interval, the lens's accuracy
    (``lens_correct`` [N, L+1] bool, or None), the cases and the chance
    level (the majority label's share); ``confound``: see :func:`heldout_correct`."""
    y = np.asarray(y, dtype=bool)
    folds = group_folds(groups, n_folds, seed)
    chance = float(max(y.mean(), 1 - y.mean()))
    rows = []
    for i in range(resid.shape[1]):
        acc = cluster_bootstrap_mean_ci(heldout_correct(resid[:, i], y, folds, l2, confound), groups, n_boot, seed)
        lens = (cluster_bootstrap_mean_ci(lens_correct[:, i], groups, n_boot, seed) if lens_correct is not None
                else {"mean": None, "ci": None})
        rows.append({"layer": i - 1, "target": target, "accuracy": acc["mean"], **_bounds("", acc),
                     "lens_accuracy": lens["mean"], **_bounds("lens_", lens), "n_cases": len(y), "chance": chance})
    return rows


def _bounds(prefix: str, stat: dict) -> dict:
    lo, hi = stat["ci"] or (None, None)
    return {f"{prefix}ci_lo": lo, f"{prefix}ci_hi": hi}


def _read(mllm, cases: CleanCases, batch_size: int, backend: str, attention: bool):
    """Answer-position residuals [N, L+1, D], logit-lens votes [N, L+1] and,
    with ``attention``, a frame of attention masses and span token counts,
    in ``cases.table`` order."""
    lens = LogitLens(Unembed.from_model(mllm))
    resid, votes, masses, at = [], [], [], []
    for labels, rows, enc in cases.batches(mllm, batch_size):
        tr = trace(mllm, enc, backend=backend, attention=attention)
        with torch.no_grad():
            top = labels.top1_labels(lens.forward_all(tr.resid.to(mllm.device)))
        resid.append(tr.resid.numpy())
        votes.append(layer_votes(top, rows["answer_vision"], rows["answer_text"]))
        at.extend(rows.index)
        if attention:
            mass = span_mass(tr.attn, {k: v.cpu() for k, v in enc.spans.items()}).numpy()
            masses.append(pd.DataFrame({**{f"attn_{s}": list(mass[:, :, k]) for k, s in enumerate(ATTENTION_SPANS)},
                                        **{f"tokens_{s}": enc.spans[s].sum(1).cpu().numpy() for s in ATTENTION_SPANS}}))
    order = np.argsort(np.asarray(at))
    frame = pd.concat(masses, ignore_index=True).iloc[order].reset_index(drop=True) if attention else None
    return np.concatenate(resid)[order], np.concatenate(votes)[order], frame


@frozen_heap()
def run_probes(mllm, clean: CleanCases, batch_size: int = 8, backend: str = "nnsight", l2: float = 1.0,
               n_folds: int = N_FOLDS, n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The probes table (one row per layer and target) and the summary: per
    target the curves and the first layer each of probe and lens decodes
    above chance (interval's lower bound over the chance level), and the
    conflict cases' text-dominance index per token."""
    table = clean.table.reset_index(drop=True)
    resid, votes, attention = _read(mllm, replace(clean, table=table), batch_size, backend, attention=True)
    decided = table["follow"].isin(["text", "vision"]).to_numpy()
    rows, left_out = [], {}
    if table["group_id"][decided].nunique() < 2:
        left_out["follow"] = "fewer than 2 groups have a case answering the text or the vision answer"
    else:
        rows += probe_rows(resid[decided], table["follow"][decided] == "text", table["group_id"][decided], "follow",
                           votes[decided] == table["follow"].to_numpy(object)[decided, None], l2, n_folds, n_boot,
                           seed, confound=table["y_m"][decided].to_numpy(object))
    cases = load_cases(clean.dataset_dir)
    consistent = cases[(cases["control"] == "consistent") & cases["group_id"].isin(set(table["group_id"]))]
    if table["group_id"].nunique() < 2:
        left_out["conflict"] = "the conflict cases come from fewer than 2 groups"
    elif consistent.empty:
        left_out["conflict"] = ("the dataset has no `consistent` control; make it with `mechmod dataset color "
                                "--consistent` (or let `mechmod probe --groups N` generate it)")
    else:
        both = pd.concat([table[consistent.columns], consistent], ignore_index=True)
        ctrl, _, _ = _read(mllm, replace(clean, table=consistent.reset_index(drop=True)), batch_size, backend, False)
        said = np.where(both["control"] == "none", both["answer_text"], both["answer_vision"])  # the described colour
        rows += probe_rows(np.concatenate([resid, ctrl]), both["control"] == "none", both["group_id"], "conflict",
                           None, l2, n_folds, n_boot, seed, confound=said)
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    summary = {"n_cases": int(len(table)), "n_decided": int(decided.sum()), "n_consistent": int(len(consistent)),
               "n_groups": int(table["group_id"].nunique()), "l2": l2, "lens": "logit",
               "n_folds": int(min(n_folds, table["group_id"].nunique())),
               "balance_point": clean.balance, "radius": clean.radius,
               "targets": {t: _target_summary(out[out["target"] == t]) for t in TARGETS if (out["target"] == t).any()},
               "text_dominance": text_dominance(attention, n_boot, seed)}
    if left_out:
        summary["left_out"] = left_out
    return out, summary


def _first_above(lo, chance: float, layers) -> int | None:
    return next((int(l) for l, v in zip(layers, lo) if v is not None and np.isfinite(v) and v > chance), None)


def _target_summary(rows: pd.DataFrame) -> dict:
    """A target's curves, and the first layers where probe and lens decode above chance."""
    cols = ["layer", "accuracy", "ci_lo", "ci_hi", "lens_accuracy", "lens_ci_lo", "lens_ci_hi"]
    curves = {c: [None if pd.isna(v) else v for v in rows[c]] for c in cols}
    chance = float(rows["chance"].iloc[0])
    probe, lens = (_first_above(curves[c], chance, curves["layer"]) for c in ("ci_lo", "lens_ci_lo"))
    return {**curves, "chance": chance, "n_cases": int(rows["n_cases"].iloc[0]), "probe_first_layer": probe,
            "lens_first_layer": lens, "lead_layers": None if probe is None or lens is None else lens - probe}
