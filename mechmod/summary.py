"""From a results table to summary.json.

``summarize(results)`` is a pure function of the table (any table with the
documented results.parquet columns can be studied; a statistic whose
columns are missing is left out, saying so); ``summarize_run`` summarizes a
run directory: it fills the ``region`` column (which needs the balance
point, so only exists once all cases are in) and marks a run missing cases
as partial. ``mechmod.runner.finalize`` writes the results, the report and
the summary.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechmod import _io
from mechmod.dynamics import (NO_LAYER, counted_votes, first_counted_layer, logit_diff_by_dh, oscillation_summary,
                              pick_case_study, switch_rate_summary)
from mechmod.errors import MechmodError
from mechmod.following import (
    balance_point,
    both_correct_mask,
    entropy_split,
    following_curve,
    following_rates,
    monotonicity_test,
    region,
)
from mechmod.names import ATTENTION_SPANS, SAMPLED_MEASURE
from mechmod.rundir import RunDir
from mechmod.stats import bootstrap_mean_ci
from mechmod.uncertainty import UNCERTAINTY_MEASURES, relative_uncertainty

#: the documented columns of a results table (docs/architecture.md §3) and their kinds
COLUMNS: dict[str, str] = {
    "case_id": "str", "group_id": "str", "image_id": "str", "task": "str", "control": "str",
    "answer_vision": "str", "answer_text": "str", "y_v": "str", "y_t": "str", "y_m": "str", "follow": "str",
    "status": "str", "error": "str", "dv": "int", "dt": "int", "oscillations": "int", "commit_layer": "int",
    "h_v": "float", "h_t": "float", "h_m": "float", "hl_v": "float", "hl_t": "float", "hl_m": "float",
    "hmax_v": "float", "hmax_t": "float", "hmax_m": "float", "hr2_v": "float", "hr2_t": "float", "hr2_m": "float",
    "hs_v": "float", "hs_t": "float",
    "dh_rel": "float", "p_v": "floats", "p_t": "floats", "p_m": "floats", "layer_logit_diff": "floats",
    "attn_image": "floats", "attn_description": "floats", "attn_question": "floats",
    "layer_votes": "strs", "embedding_vote": "str", "embedding_logit_diff": "float", "last_sign_change": "int",
}
#: without these nothing is summarized (the following curve)
REQUIRED = ("case_id", "control", "dh_rel", "follow")
#: statistic -> the columns it needs; a table lacking one leaves the statistic
#: out (``summary["left_out"]`` names it and the missing columns)
NEEDS: dict[str, tuple[str, ...]] = {
    "tfr_both_correct": ("y_v", "y_t", "answer_vision", "answer_text"),
    "entropy_split": ("h_v", "h_t"),
    "balance_by_measure": ("h_v", "h_t"),
    "entropy_by_tier": ("image_id", "group_id", "dv", "dt", "h_v", "h_t"),
    "accuracy_by_tier": ("image_id", "group_id", "dv", "dt", "y_v", "y_t", "answer_vision", "answer_text"),
    "oscillations": ("oscillations",),
    "logit_diff_heatmap": ("layer_logit_diff",),
    "case_study": ("layer_logit_diff", "image_id", "dv", "dt", "answer_vision", "answer_text"),
    "commit_layer": ("commit_layer",),
    "switch_rates": ("oscillations", "layer_votes"),
}
#: what a statistic of the layer dynamics needs besides NEEDS when the run counts the embedding output
NEEDS_EMBEDDING: dict[str, tuple[str, ...]] = {"switch_rates": ("embedding_vote",),
                                               "logit_diff_heatmap": ("embedding_logit_diff",),
                                               "case_study": ("embedding_logit_diff",)}
#: list columns read as one matrix (equal lengths over the scored cases)
_MATRICES = ("layer_logit_diff", "attn_image", "attn_description", "attn_question", "layer_votes")
N_BOOT = 1000


def check_results(results: pd.DataFrame, where: str) -> None:
    """Refuse a results table that lacks a REQUIRED column, holds a
    documented column of the wrong type or with missing values, a
    non-finite number in a scored row, or ragged per-layer lists; each
    MechmodError names ``where`` and the column."""
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise MechmodError(f"{where}: missing column(s) {missing}; a results table needs at least "
                           f"{list(REQUIRED)} (written by `mechmod run`)")
    ok = (results["status"] == "ok").to_numpy() if "status" in results and _is_kind(results["status"], "str") else None
    for col, kind in COLUMNS.items():
        if col not in results.columns:
            continue
        values = results[col]
        if not _is_kind(values, kind):
            raise MechmodError(f"{where}: column {col!r} holds {values.dtype} values, expected {kind}; "
                               "re-create the table with `mechmod run` or fix the column")
        scored = values if ok is None else values[ok]
        if col == "embedding_logit_diff":  # a case without layer votes has none
            scored = scored[_with_layer_votes(results.loc[scored.index])]
        if kind in ("float", "floats"):
            finite = pd.Series(np.isfinite(scored.to_numpy(float)), index=scored.index) if kind == "float" else \
                scored.map(lambda v: bool(np.isfinite(np.asarray(v, float)).all()))
            if not finite.all():
                case = results.loc[scored.index[~finite.to_numpy()][0], "case_id"]
                raise MechmodError(f"{where}: column {col!r} has {int((~finite).sum())} NaN or infinite value(s) in "
                                   f"scored rows (e.g. case {case!r}); mark such cases status='failed' (as "
                                   "`mechmod run` does) or fix them")
        if col in _MATRICES and scored[scored.map(len) > 0].map(len).nunique() > 1:  # empty: no votes, no attention
            raise MechmodError(f"{where}: column {col!r} holds lists of different lengths; every case needs one "
                               "value per layer")


def _with_layer_votes(df: pd.DataFrame) -> pd.Series:
    """Which rows have per-layer votes: a case whose two answers begin with
    the same word has none (empty lists; mechmod.phrase_answers)."""
    return df["layer_votes"].map(len) > 0 if "layer_votes" in df else pd.Series(True, index=df.index)


def _is_kind(values: pd.Series, kind: str) -> bool:
    """Whether every value of ``values`` is of ``kind`` (no missing value)."""
    dtype = values.dtype
    if kind == "int":
        return pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if kind == "float":
        return (pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)) \
            and not pd.api.types.is_bool_dtype(dtype)
    if kind == "str":
        return values.map(lambda v: isinstance(v, str)).all()
    if kind == "strs":  # a list of strings per row
        return values.map(lambda v: isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, str) for x in v)).all()
    return values.map(_is_numbers).all()  # "floats": a list of numbers per row


def _is_numbers(v) -> bool:
    if not isinstance(v, (list, tuple, np.ndarray)):
        return False
    try:
        np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        return False
    return np.asarray(v).ndim == 1 and not np.asarray(v).dtype == bool


def _by_tier(df: pd.DataFrame, tier: str, value: np.ndarray, seed: int) -> list[dict[str, Any]]:
    rows = []
    for t in sorted(df[tier].unique()):
        sel = value[(df[tier] == t).to_numpy()]
        rows.append({"tier": int(t), **bootstrap_mean_ci(sel, n_boot=N_BOOT, seed=seed)})
    return rows


def _unimodal(df: pd.DataFrame, seed: int, what: str) -> dict[str, list]:
    """Entropy or accuracy by tier; each image (or description) counted once."""
    vis = df.drop_duplicates("image_id")
    txt = df.drop_duplicates(["group_id", "dt", "control"])
    if what == "entropy":
        v, t = vis["h_v"].to_numpy(float), txt["h_t"].to_numpy(float)
    else:
        v = (vis["y_v"] == vis["answer_vision"]).to_numpy(float)
        t = (txt["y_t"] == txt["answer_text"]).to_numpy(float)
    return {"vision": _by_tier(vis, "dv", v, seed), "text": _by_tier(txt, "dt", t, seed)}


def summarize(results: pd.DataFrame, model: str | None = None, radius: float = 0.5, seed: int = 0,
              where: str = "results", include_embedding: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """The study's summary dict and the results with ``region`` filled. A
    statistic whose columns the table lacks is left out: ``summary["left_out"]``
    maps it to the missing columns (the key is absent when nothing is).
    ``include_embedding``: the table's oscillations count the embedding
    output (layer -1; `mechmod run --include-embedding`), so the switch
    rates, heatmap and case study count it too. Errors name ``where`` (the
    table's file)."""
    check_results(results, where)
    columns = set(results.columns)
    needs = {name: cols + (NEEDS_EMBEDDING.get(name, ()) if include_embedding else ()) for name, cols in NEEDS.items()}
    left_out = {name: f"needs column(s) {', '.join(c for c in cols if c not in columns)}"
                for name, cols in needs.items() if not set(cols) <= columns}
    status = results["status"] if "status" in results else pd.Series("ok", index=results.index)
    failed = results[status != "ok"]
    ok = results[status == "ok"].copy()
    if ok.empty:
        raise MechmodError(f"{where}: no successfully scored case, nothing to summarize "
                           f"({len(failed)} failed; their 'error' column says why)")
    main = ok[ok["control"] == "none"]
    if main.empty:
        raise MechmodError(f"{where}: no scored conflict case (control == 'none'); the following curve needs them")
    decided = main[main["follow"].isin(["text", "vision"])]
    follows_text = (decided["follow"] == "text").to_numpy()
    dh = decided["dh_rel"].to_numpy(float)

    rates = following_rates(main["follow"].to_numpy(object))
    bp = balance_point(dh, follows_text, n_boot=N_BOOT, seed=seed)
    bp_d = bp.to_dict()
    est = bp_d.get("estimate")
    regions = np.full(len(ok), "", dtype=object)
    if est is not None:
        regions = np.asarray(region(ok["dh_rel"].to_numpy(float), est, radius), dtype=object)
    ok["region"] = regions
    failed = failed.assign(region="")
    out = pd.concat([ok, failed]).sort_values("case_id", kind="stable").reset_index(drop=True)

    summary: dict[str, Any] = {
        "model": model,
        "n_cases": int(len(ok)),
        "n_failed": int(len(failed)),
        "failures_by_kind": _failure_kinds(failed),
        "n_conflict": int(len(main)),
        "n_decided": int(len(decided)),
        "outcomes": {k: int((main["follow"] == k).sum()) for k in ("text", "vision", "other")},
        "tfr": rates["tfr"],
        "vfr": rates["vfr"],
        "balance_point": est,
        "balance_ci": bp_d.get("ci"),
        "balance": bp_d,
        "curve": following_curve(dh, follows_text, binning="quantile").to_dict(),
        "curve_fixed_width": following_curve(dh, follows_text, binning="width").to_dict(),
        "monotonicity": monotonicity_test(dh, follows_text),
        "radius": radius,
    }
    if "tfr_both_correct" not in left_out:
        both = both_correct_mask(main["y_v"].to_numpy(object), main["y_t"].to_numpy(object),
                                 main["answer_vision"].to_numpy(object), main["answer_text"].to_numpy(object))
        rates_both = following_rates(main["follow"].to_numpy(object), mask=both)
        summary.update(n_both_correct=int(np.sum(both)), tfr_both_correct=rates_both["tfr"],
                       vfr_both_correct=rates_both["vfr"])
    if "entropy_split" not in left_out:
        summary["entropy_split"] = _entropy_split(decided, dh, follows_text)
    if "balance_by_measure" not in left_out:
        summary["balance_by_measure"] = {measure: _by_index(u_v, u_t, follows_text, seed)
                                         for measure, (u_v, u_t) in _measures(decided).items()}
    for what in ("entropy", "accuracy"):
        if f"{what}_by_tier" not in left_out:
            summary[f"{what}_by_tier"] = _unimodal(main, seed, what)
    if "oscillations" not in left_out and est is not None:
        voted = _with_layer_votes(ok).to_numpy()
        summary["oscillations"] = oscillation_summary(ok["oscillations"].to_numpy(int)[voted], regions[voted],
                                                      ok["control"].to_numpy(object)[voted])
    if "switch_rates" not in left_out and est is not None:
        voted = _with_layer_votes(ok).to_numpy()
        votes = counted_votes(ok["layer_votes"][voted], ok["embedding_vote"][voted] if include_embedding else None)
        summary["switch_rates"] = switch_rate_summary(votes, regions[voted], ok["control"].to_numpy(object)[voted],
                                                      first_counted_layer(include_embedding), n_boot=N_BOOT, seed=seed)
    summary["include_embedding"] = include_embedding
    summary.update(_layer_dynamics(main[_with_layer_votes(main)], left_out, include_embedding))
    if left_out:
        summary["left_out"] = left_out
    return summary, out


def _entropy_split(decided: pd.DataFrame, dh: np.ndarray, follows_text: np.ndarray) -> dict[str, Any]:
    """Balance point and curve of the low and high halves of H(t) + H(v)."""
    split = entropy_split(dh, follows_text, (decided["h_t"] + decided["h_v"]).to_numpy(float))
    out: dict[str, Any] = {"median": float(split["median"])}
    for half in ("low", "high"):
        sel = split[f"{half}_mask"]
        out[half] = {
            "n": int(sel.sum()),
            "balance": split[half].to_dict(),
            "curve": following_curve(dh[sel], follows_text[sel], binning="quantile").to_dict(),
        }
    return out


def _layer_dynamics(main: pd.DataFrame, left_out: dict[str, str], include_embedding: bool) -> dict[str, Any]:
    """Logit-difference heatmap by dHrel bin (Fig. 6a), the case study of one
    image across dt 0-2 (Fig. 6b), attention by layer and commit layers,
    over the decoder layers (led by the embedding output, layer -1, with
    ``include_embedding``)."""
    out: dict[str, Any] = {}
    first = first_counted_layer(include_embedding)
    if "logit_diff_heatmap" not in left_out:
        diffs = np.stack(main["layer_logit_diff"].map(lambda v: np.asarray(v, float)).to_numpy())
        if include_embedding:
            diffs = np.column_stack([main["embedding_logit_diff"].to_numpy(float), diffs])
        out["logit_diff_heatmap"] = logit_diff_by_dh(main["dh_rel"].to_numpy(float), diffs, first_layer=first)
        image = None if "case_study" in left_out else pick_case_study(
            main["image_id"].to_numpy(object), main["dt"].to_numpy(int), diffs[:, -1])
        if image is not None:
            rows = main[main["image_id"] == image].sort_values("dt", kind="stable")
            at = {case_id: i for i, case_id in enumerate(main["case_id"])}
            out["case_study"] = {
                "image_id": image,
                "layers": out["logit_diff_heatmap"]["layers"],
                "dv": int(rows["dv"].iloc[0]),
                "answer_vision": rows["answer_vision"].iloc[0],
                "answer_text": rows["answer_text"].iloc[0],
                "cases": [{"case_id": r.case_id, "dt": int(r.dt), "dh_rel": float(r.dh_rel), "follow": r.follow,
                           "layer_logit_diff": [float(x) for x in diffs[at[r.case_id]]]} for r in rows.itertuples()],
            }
    spans = ("image", "description", "question")
    if all(f"attn_{s}" in main for s in spans) and main["attn_image"].map(len).gt(0).all():
        out["attention_by_layer"] = {
            span: np.stack(main[f"attn_{span}"].map(lambda v: np.asarray(v, float)).to_numpy()).mean(0).tolist()
            for span in spans}
        out["text_dominance"] = text_dominance(main)
    if "commit_layer" not in left_out:
        c = main["commit_layer"].to_numpy(float)
        c = c[c != NO_LAYER]
        out["commit_layer"] = bootstrap_mean_ci(c, n_boot=N_BOOT, seed=0)
    return out


#: token-count columns that make :func:`text_dominance` per token (one per span of ATTENTION_SPANS)
SPAN_TOKENS = tuple(f"tokens_{span}" for span in ATTENTION_SPANS)


def text_dominance(frame: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """How much more the answer position attends to text than to the image.

    ``frame``: one row per case with the list columns attn_image,
    attn_description, attn_question (attention mass per decoder layer) and,
    when known, the spans' token counts (:data:`SPAN_TOKENS`). Per case and
    layer, the text density d_t = (mass on description + question) / their
    tokens and the image density d_i = mass on image / its tokens (the
    masses themselves when the frame has no token counts: a run's results
    do not record them); the index d_t / (d_t + d_i) is 0.5 where a text
    token and an image token draw equal attention, above it where text
    dominates. ``index`` averages each case's mean over the layers (95%
    bootstrap interval over cases); ``per_layer`` gives the means per layer."""
    mass = {s: np.stack(frame[f"attn_{s}"].map(lambda v: np.asarray(v, float)).to_numpy()) for s in ATTENTION_SPANS}
    per_token = all(c in frame for c in SPAN_TOKENS)
    n_text, n_image = ((frame["tokens_description"] + frame["tokens_question"]).to_numpy(float)[:, None],
                       frame["tokens_image"].to_numpy(float)[:, None]) if per_token else (1.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        text = (mass["description"] + mass["question"]) / n_text
        image = mass["image"] / n_image
        index = text / (text + image)
    index[~np.isfinite(index)] = np.nan
    with warnings.catch_warnings():  # a layer or case without any finite index stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        per_case, per_layer = np.nanmean(index, axis=1), np.nanmean(index, axis=0)
    return {"per_token": per_token, "index": bootstrap_mean_ci(per_case, n_boot=n_boot, seed=seed),
            "per_layer": {"text": text.mean(0).tolist(), "image": image.mean(0).tolist(),
                          "index": [None if not np.isfinite(v) else float(v) for v in per_layer]}}


def _by_index(u_v: np.ndarray, u_t: np.ndarray, follows_text: np.ndarray, seed: int) -> dict[str, Any]:
    """One uncertainty index's balance point (the fields of
    :class:`mechmod.following.BalancePoint`), following curve and
    monotonicity test from dHrel of that index; cases whose two unimodal
    values are both ~0 (dHrel 0/0) are left out of all three and counted
    (``n_excluded``)."""
    dh, degenerate = relative_uncertainty(u_t, u_v)
    keep = ~np.asarray(degenerate, dtype=bool)
    dh, t = np.asarray(dh, float)[keep], follows_text[keep]
    return {**balance_point(dh, t, n_boot=N_BOOT, seed=seed).to_dict(),
            "curve": following_curve(dh, t, binning="quantile").to_dict(),
            "monotonicity": monotonicity_test(dh, t), "n_excluded": int((~keep).sum())}


#: uncertainty index -> the results columns of its vision-only and text-only values
_INDEX_COLUMNS = {"entropy": ("h_v", "h_t"), "label_entropy": ("hl_v", "hl_t"), "max_prob": ("hmax_v", "hmax_t"),
                  "renyi2": ("hr2_v", "hr2_t"), SAMPLED_MEASURE: ("hs_v", "hs_t")}


def _measures(df: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Vision-only and text-only values of every index the table holds
    (1 - margin from the label probabilities p_v, p_t)."""
    out = {name: (df[v].to_numpy(float), df[t].to_numpy(float))
           for name, (v, t) in _INDEX_COLUMNS.items() if v in df and t in df}
    if "p_v" in df and "p_t" in df and len(df):
        m = UNCERTAINTY_MEASURES["margin"]
        out["margin"] = (_per_row(m, df["p_v"]), _per_row(m, df["p_t"]))
    return {name: out[name] for name in (*UNCERTAINTY_MEASURES, SAMPLED_MEASURE) if name in out}


def _per_row(measure, probs: pd.Series) -> np.ndarray:
    """``measure`` of each row's label probabilities: rows of one length at
    once (tasks with other label counts apart)."""
    lengths = probs.map(len).to_numpy()
    parts = {n: np.asarray(measure(np.stack(probs[lengths == n].map(np.asarray).to_numpy()))) for n in np.unique(lengths)}
    if len(parts) == 1:
        return next(iter(parts.values()))
    out = np.empty(len(probs), dtype=np.result_type(*parts.values()))
    for n, values in parts.items():
        out[lengths == n] = values
    return out


def _failure_kinds(failed: pd.DataFrame) -> dict[str, int]:
    if failed.empty or "error" not in failed:
        return {}
    kinds = failed["error"].astype(str).str.split(":", n=1).str[0]
    return {k: int(v) for k, v in kinds.value_counts().sort_index().items()}


def summarize_run(run_dir: str | Path, results: pd.DataFrame | None = None,
                  radius: float | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """The summary of a run directory (strict JSON) and its results with
    ``region`` filled; computed, not written (:func:`mechmod.runner.finalize`
    writes them). ``results``: by default RUN/results.parquet; the model,
    lens, uncertainty measure, radius and the number of cases of the dataset
    come from RUN/run.json. A run holding fewer cases than its dataset is
    marked ``partial`` (with the counts)."""
    run = RunDir(run_dir)
    run_cfg = run.config()
    if results is None:
        results = run.read_results()
    radius = run_cfg.get("radius", 0.5) if radius is None else radius
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not np.isfinite(radius) or radius < 0:
        raise MechmodError(f"{run.run_file}: radius {radius!r} is not a non-negative number; pass --radius R")
    summary, out = summarize(results, model=run_cfg.get("model") or "unknown", radius=radius, where=str(run.results),
                             include_embedding=run_cfg.get("include_embedding") is True)
    summary["lens"] = run_cfg.get("lens", summary.get("lens"))
    summary["uncertainty"] = run_cfg.get("uncertainty", "entropy")
    expected, have = run.expected_cases(), int(results["case_id"].nunique())
    summary["partial"] = expected is not None and have < expected
    if summary["partial"]:
        summary.update(n_cases_expected=expected, n_cases_missing=expected - have)
    return _io.jsonable(summary), out
