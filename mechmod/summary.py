"""From a results table to summary.json.

``summarize(results)`` is a pure function of the table (any table with the
results.parquet columns can be studied); ``summarize_run`` reads and writes
the run directory: it fills the ``region`` column (which needs the balance
point, so only exists once all cases are in), rewrites results.parquet and
summary.json atomically; :mod:`mechmod.report` draws report.html from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechmod import _io
from mechmod.dynamics import logit_diff_by_dh, oscillation_summary, pick_case_study
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
from mechmod.rundir import RunDir
from mechmod.stats import bootstrap_mean_ci
from mechmod.uncertainty import relative_uncertainty

REQUIRED = (
    "case_id", "group_id", "dv", "dt", "control", "answer_vision", "answer_text",
    "y_v", "y_t", "y_m", "h_v", "h_t", "h_m", "dh_rel", "follow",
)
N_BOOT = 1000


def _check_columns(results: pd.DataFrame, where: str) -> None:
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise MechmodError(f"{where}: missing columns {missing}; a results table needs {list(REQUIRED)}")


def _by_tier(df: pd.DataFrame, tier: str, value: np.ndarray, seed: int) -> list[dict[str, Any]]:
    rows = []
    for t in sorted(df[tier].unique()):
        sel = value[(df[tier] == t).to_numpy()]
        rows.append({"tier": int(t), **bootstrap_mean_ci(sel, n_boot=N_BOOT, seed=seed)})
    return rows


def _unimodal(df: pd.DataFrame, seed: int) -> tuple[dict, dict]:
    """Entropy and accuracy by tier; each image (or description) counted once."""
    vis = df.drop_duplicates("image_id")
    txt = df.drop_duplicates(["group_id", "dt", "control"])
    ent = {
        "vision": _by_tier(vis, "dv", vis["h_v"].to_numpy(float), seed),
        "text": _by_tier(txt, "dt", txt["h_t"].to_numpy(float), seed),
    }
    acc = {
        "vision": _by_tier(vis, "dv", (vis["y_v"] == vis["answer_vision"]).to_numpy(float), seed),
        "text": _by_tier(txt, "dt", (txt["y_t"] == txt["answer_text"]).to_numpy(float), seed),
    }
    return ent, acc


def summarize(results: pd.DataFrame, model: str | None = None, radius: float = 0.5, seed: int = 0) -> tuple[dict[str, Any], pd.DataFrame]:
    """The study's summary dict and the results with ``region`` filled."""
    _check_columns(results, "results")
    status = results["status"] if "status" in results else pd.Series("ok", index=results.index)
    failed = results[status != "ok"]
    ok = results[status == "ok"].copy()
    if ok.empty:
        raise MechmodError("no successfully scored case: nothing to summarize "
                           f"({len(failed)} failed; see the 'error' column of results.parquet)")
    main = ok[ok["control"] == "none"]
    if main.empty:
        raise MechmodError("no conflict case with control == 'none': the following curve needs them")
    decided = main[main["follow"].isin(["text", "vision"])]
    follows_text = (decided["follow"] == "text").to_numpy()
    dh = decided["dh_rel"].to_numpy(float)

    both = both_correct_mask(main["y_v"].to_numpy(object), main["y_t"].to_numpy(object),
                             main["answer_vision"].to_numpy(object), main["answer_text"].to_numpy(object))
    rates = following_rates(main["follow"].to_numpy(object))
    rates_both = following_rates(main["follow"].to_numpy(object), mask=both)
    bp = balance_point(dh, follows_text, n_boot=N_BOOT, seed=seed)
    bp_d = bp.to_dict()
    curve = following_curve(dh, follows_text, binning="quantile").to_dict()
    curve_w = following_curve(dh, follows_text, binning="width").to_dict()

    split = entropy_split(dh, follows_text, (decided["h_t"] + decided["h_v"]).to_numpy(float))
    split_d = {"median": float(split["median"])}
    for half in ("low", "high"):
        sel = split[f"{half}_mask"]
        split_d[half] = {
            "n": int(sel.sum()),
            "balance": split[half].to_dict(),
            "curve": following_curve(dh[sel], follows_text[sel], binning="quantile").to_dict(),
        }

    by_measure = {}
    for measure, (u_v, u_t) in _measures(decided).items():
        dhm, _ = relative_uncertainty(u_t, u_v)
        by_measure[measure] = balance_point(np.asarray(dhm, float), follows_text, n_boot=N_BOOT, seed=seed).to_dict()

    est = bp_d.get("estimate")
    regions = np.full(len(ok), "", dtype=object)
    if est is not None:
        regions = np.asarray(region(ok["dh_rel"].to_numpy(float), est, radius), dtype=object)
    ok["region"] = regions
    failed = failed.assign(region="")
    out = pd.concat([ok, failed]).sort_values("case_id", kind="stable").reset_index(drop=True)

    ent, acc = _unimodal(main, seed)
    summary: dict[str, Any] = {
        "model": model,
        "n_cases": int(len(ok)),
        "n_failed": int(len(failed)),
        "failures_by_kind": _failure_kinds(failed),
        "n_conflict": int(len(main)),
        "n_decided": int(len(decided)),
        "n_both_correct": int(np.sum(both)),
        "outcomes": {k: int((main["follow"] == k).sum()) for k in ("text", "vision", "other")},
        "tfr": rates["tfr"],
        "vfr": rates["vfr"],
        "tfr_both_correct": rates_both["tfr"],
        "vfr_both_correct": rates_both["vfr"],
        "balance_point": est,
        "balance_ci": bp_d.get("ci"),
        "balance": bp_d,
        "balance_by_measure": by_measure,
        "curve": curve,
        "curve_fixed_width": curve_w,
        "entropy_split": split_d,
        "monotonicity": monotonicity_test(dh, follows_text),
        "entropy_by_tier": ent,
        "accuracy_by_tier": acc,
        "radius": radius,
    }
    if "oscillations" in ok and est is not None:
        summary["oscillations"] = oscillation_summary(ok["oscillations"].to_numpy(int), regions, ok["control"].to_numpy(object))
    if "layer_logit_diff" in main and len(main):
        summary.update(_layer_dynamics(main))
    return summary, out


def _layer_dynamics(main: pd.DataFrame) -> dict[str, Any]:
    """Logit-difference heatmap by dHrel bin (Fig. 6a), the case study of one
    image across dt 0-2 (Fig. 6b), and commit layers."""
    diffs = np.stack(main["layer_logit_diff"].map(lambda v: np.asarray(v, float)).to_numpy())
    out: dict[str, Any] = {"logit_diff_heatmap": logit_diff_by_dh(main["dh_rel"].to_numpy(float), diffs)}
    image = pick_case_study(main["image_id"].to_numpy(object), main["dt"].to_numpy(int), diffs[:, -1])
    if image is not None:
        rows = main[main["image_id"] == image].sort_values("dt", kind="stable")
        out["case_study"] = {
            "image_id": image,
            "dv": int(rows["dv"].iloc[0]),
            "answer_vision": rows["answer_vision"].iloc[0],
            "answer_text": rows["answer_text"].iloc[0],
            "cases": [{"case_id": r.case_id, "dt": int(r.dt), "dh_rel": float(r.dh_rel), "follow": r.follow,
                       "layer_logit_diff": [float(x) for x in r.layer_logit_diff]} for r in rows.itertuples()],
        }
    if "attn_image" in main and main["attn_image"].map(len).gt(0).all():
        out["attention_by_layer"] = {
            span: np.stack(main[f"attn_{span}"].map(lambda v: np.asarray(v, float)).to_numpy()).mean(0).tolist()
            for span in ("image", "description", "question")}
    if "commit_layer" in main:
        c = main["commit_layer"].to_numpy(float)
        c = c[c >= 0]
        out["commit_layer"] = bootstrap_mean_ci(c, n_boot=N_BOOT, seed=0)
    return out


def _measures(df: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from mechmod.uncertainty import UNCERTAINTY_MEASURES

    out = {"entropy": (df["h_v"].to_numpy(float), df["h_t"].to_numpy(float))}
    if "hl_v" in df:
        out["label_entropy"] = (df["hl_v"].to_numpy(float), df["hl_t"].to_numpy(float))
    if "p_v" in df and len(df) and "margin" in UNCERTAINTY_MEASURES:
        m = UNCERTAINTY_MEASURES["margin"]
        out["margin"] = (np.asarray(m(np.stack(df["p_v"].map(np.asarray)))),
                         np.asarray(m(np.stack(df["p_t"].map(np.asarray)))))
    return out


def _failure_kinds(failed: pd.DataFrame) -> dict[str, int]:
    if failed.empty or "error" not in failed:
        return {}
    kinds = failed["error"].astype(str).str.split(":", n=1).str[0]
    return {k: int(v) for k, v in kinds.value_counts().sort_index().items()}


def summarize_run(run_dir: str | Path, results: pd.DataFrame | None = None, model: str | None = None,
                  radius: float | None = None) -> dict[str, Any]:
    """(Re)write RUN/results.parquet and RUN/summary.json (the report from
    them: :func:`mechmod.report.write_run_report`)."""
    run = RunDir(run_dir)
    run_cfg = run.config()
    if results is None:
        path = run.results
        if not path.is_file():
            raise MechmodError(f"{path}: not found; `mechmod summarize` needs a run directory holding results.parquet")
        try:
            results = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise MechmodError(f"{path}: cannot read as parquet ({err})") from None
        _check_columns(results, str(path))
    radius = radius if radius is not None else run_cfg.get("radius", 0.5)
    model = model or run_cfg.get("model") or "unknown"
    summary, out = summarize(results, model=model, radius=radius)
    _io.write_parquet(run.results, out)
    summary["lens"] = run_cfg.get("lens", summary.get("lens"))
    summary["uncertainty"] = run_cfg.get("uncertainty", "entropy")
    summary = _io.jsonable(summary)
    _io.write_json(run.summary, summary)
    return summary
