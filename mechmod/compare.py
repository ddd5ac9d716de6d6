"""Several runs side by side (paper Fig. 4a): their following curves and
balance points overlaid, a table of TFR, balance point and interval, and
the bootstrap difference of every pair of balance points.

``compare_runs(run_dirs)`` reads each run's summary.json and results.parquet
(written by ``mechmod run``) and returns a plain dict (the JSON that
``mechmod compare`` writes); ``mechmod.report.page("compare", comparison)`` renders it.
No estimator lives here: the curves and balance points are the runs' own,
the pairwise differences come from
:func:`mechmod.following.compare_balance_points`.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from mechmod.errors import MechmodError
from mechmod.following import compare_balance_points
from mechmod.rundir import RunDir
from mechmod.summary import check_results

N_BOOT = 1000


def decided_cases(results: pd.DataFrame) -> pd.DataFrame:
    """The cases a following curve is drawn from: scored, no control, and
    following either the text or the vision answer."""
    ok = results[results["status"] == "ok"] if "status" in results else results
    main = ok[ok["control"] == "none"] if "control" in ok else ok
    return main[main["follow"].isin(["text", "vision"])]


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """(summary, results) of a run directory, checked: results.parquet as
    :func:`mechmod.summary.check_results` wants it, summary.json holding
    what `mechmod run` writes in the fields read here."""
    run = RunDir(run_dir)
    summary, results = run.read_summary(), run.read_results()
    check_results(results, str(run.results))
    bad = _odd_summary_field(summary)
    if bad:
        raise MechmodError(f"{run.summary}: field {bad!r} is not what `mechmod run` writes; rewrite the file with "
                           f"`mechmod summarize {run.path}`")
    return summary, results


def _is_num(x: Any) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _is_pair(x: Any) -> bool:
    return x is None or (isinstance(x, list) and len(x) == 2 and all(_is_num(v) for v in x))


def _odd_summary_field(summary: dict[str, Any]) -> str | None:
    """The first field compared runs read whose value has the wrong shape (None: all fine)."""
    for key in ("n_cases", "tfr", "tfr_both_correct", "balance_point"):
        if not _is_num(summary.get(key)):
            return key
    if not _is_pair(summary.get("balance_ci")):
        return "balance_ci"
    if not isinstance(summary.get("partial", False), bool):
        return "partial"
    bal = summary.get("balance")
    if bal is not None and not (isinstance(bal, dict) and _is_num(bal.get("estimate")) and _is_pair(bal.get("ci"))
                                and _is_num(bal.get("interpolated")) and isinstance(bal.get("status"), (str, type(None)))):
        return "balance"
    curve = summary.get("curve")
    if curve is not None:
        keys = ("centers", "p_text", "ci_lo", "ci_hi", "n")
        if not isinstance(curve, dict) or not all(
                isinstance(curve.get(k), list) and all(_is_num(v) for v in curve[k]) for k in keys) or \
                len({len(curve[k]) for k in keys}) != 1:
            return "curve"
    return None


def run_labels(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[str]:
    """One distinct label per run: the given ones, else the directory names
    (parent/name where two names clash)."""
    paths = [Path(p) for p in run_dirs]
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(paths):
            raise MechmodError(f"{len(labels)} labels for {len(paths)} runs; give one label per run")
    else:
        labels = [p.resolve().name for p in paths]
        if len(set(labels)) < len(labels):
            labels = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    if len(set(labels)) < len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise MechmodError(f"run labels must differ, {dup} repeat; pass --label once per run")
    return labels


def compare_runs(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None,
                 n_boot: int = N_BOOT, seed: int = 0, allow_partial: bool = False) -> dict[str, Any]:
    """Per-run headline numbers and curves, and every pair's balance-point
    difference (second minus first, bootstrap interval and p-value; only
    where both runs have a balance point, i.e. status 'ok'). A partial run
    (not every case scored) is refused unless ``allow_partial``; it is then
    labelled ``(partial)``."""
    if len(run_dirs) < 2:
        raise MechmodError(f"compare needs at least 2 runs, got {len(run_dirs)}")
    labels = run_labels(run_dirs, labels)
    runs, decided = [], {}
    for i, run_dir in enumerate(run_dirs):
        summary, results = load_run(run_dir)
        if summary.get("partial"):
            if not allow_partial:
                raise MechmodError(f"{run_dir}: a partial run ({summary.get('n_cases_missing')} of "
                                   f"{summary.get('n_cases_expected')} cases have no result); finish it by re-running "
                                   "its `mechmod run` command, or pass --allow-partial to compare it as it is")
            labels[i] = f"{labels[i]} (partial)"
        label = labels[i]
        d = decided_cases(results)
        decided[label] = (d["dh_rel"].to_numpy(float), (d["follow"] == "text").to_numpy())
        bal = summary.get("balance") or {}
        runs.append({
            "label": label,
            "run_dir": str(Path(run_dir).resolve()),
            "model": summary.get("model"),
            "n_cases": summary.get("n_cases"),
            "n_decided": int(len(d)),
            "tfr": summary.get("tfr"),
            "tfr_both_correct": summary.get("tfr_both_correct"),
            "balance_point": summary.get("balance_point"),
            "balance_ci": summary.get("balance_ci"),
            "balance_status": bal.get("status"),
            "balance_interpolated": bal.get("interpolated"),
            "balance": bal,
            "curve": summary.get("curve"),
            "partial": bool(summary.get("partial")),
        })
    status = {r["label"]: r["balance_status"] for r in runs}
    pairs = []
    for a, b in combinations(labels, 2):
        (x1, t1), (x2, t2) = decided[a], decided[b]
        if status[a] == status[b] == "ok":
            diff = {**compare_balance_points(x1, t1, x2, t2, n_boot=n_boot, seed=seed), "note": ""}
        else:  # a degenerate, flat or separable fit has no balance point to bootstrap
            bad = ", ".join(f"{k}: {status[k]}" for k in (a, b) if status[k] != "ok")
            diff = {"difference": None, "ci": None, "p_value": None, "n_valid": 0,
                    "note": f"not compared: no balance point ({bad})"}
        pairs.append({"first": a, "second": b, **diff})
    return {"runs": runs, "pairs": pairs, "n_boot": n_boot, "seed": seed}
