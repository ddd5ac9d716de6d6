"""The comparison report (``mechmod compare``; paper Fig. 4a) from the
dict :func:`mechmod.compare.compare_runs` returns: the runs' following
curves and balance points overlaid, their headline numbers, and every
pair's balance-point difference."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go

from mechmod.report._plot import OTHER_COLOR, TEXT_COLOR, following_curves, layout
from mechmod.report.registry import Table, figure, study


def _num(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}" if np.isfinite(x) else "n/a"
    return "n/a" if x is None else str(x)


def _interval(ci) -> str:
    return "n/a" if not ci or None in ci else f"[{_num(ci[0])}, {_num(ci[1])}]"


def headline(comparison: Mapping[str, Any]) -> list[Table]:
    rows = [[r["label"], r["model"], r["n_cases"], r["n_decided"], _num(r["tfr"]), _num(r["tfr_both_correct"]),
             _num(r["balance_point"]), _interval(r["balance_ci"]), r["balance_status"]] for r in comparison["runs"]]
    return [Table("Headline numbers", rows, header=["run", "model", "cases", "decided", "TFR", "TFR (both correct)",
                                                    "balance point", "95% CI", "status"])]


def footer(comparison: Mapping[str, Any]) -> list[Table]:
    rows = [[p["first"], p["second"], _num(p["difference"]), _interval(p["ci"]),
             "n/a" if p["p_value"] is None else f"{p['p_value']:.3f}", p["n_valid"], p.get("note", "")]
            for p in comparison["pairs"]]
    return [Table("Pairwise balance-point differences (second - first)", rows,
                  header=["first", "second", "difference", "95% CI", "p-value", "valid bootstrap draws", "note"],
                  caption=f"Independent case bootstrap of both runs ({comparison['n_boot']} draws); p-value: two-sided, "
                          "from the bootstrap distribution's mass on either side of zero.")]


study("compare", "mechmod: runs compared", headline=headline, footer=footer)


@figure("compare", "following_curves", title="Following curves and balance points (Fig. 4a)",
        caption="P(text-following) among text- or vision-following cases per run (equal-count bins, Wilson 95% "
                "intervals); diamonds and dashed lines mark each run's logistic-fit balance point, shaded: its "
                "bootstrap interval.",
        needs={"runs": "no run to compare"})
def compared_curves(comparison: Mapping[str, Any]) -> go.Figure:
    """Every run's following curve and balance point overlaid; a run
    without a curve is left out of the plot."""
    runs = comparison["runs"]
    curves = {r["label"]: r["curve"] for r in runs if r["curve"] and r["curve"].get("centers") is not None}
    fig = following_curves(curves, {r["label"]: r["balance"] for r in runs})
    fig.update_layout(title="Following curves compared: P(text) vs dHrel per run")
    return fig


@figure("compare", "balance_points", title="Balance points with 95% bootstrap intervals",
        caption="Left of 0: inherent vision preference; right of 0: inherent text preference. "
                "A run without a marker has no balance point (its status says why).",
        needs={"runs": "no run to compare"})
def balance_points(comparison: Mapping[str, Any]) -> go.Figure:
    """Balance point of each run with its bootstrap interval (a forest
    plot); a run without an estimate keeps its row, with no marker."""
    runs = comparison["runs"]
    labels = [r["label"] for r in runs]
    est = [r["balance_point"] for r in runs]
    cis = [r["balance_ci"] for r in runs]
    hi = [(ci[1] - e) if e is not None and ci and None not in ci else None for e, ci in zip(est, cis)]
    lo = [(e - ci[0]) if e is not None and ci and None not in ci else None for e, ci in zip(est, cis)]
    fig = go.Figure(go.Scatter(
        x=est, y=labels, mode="markers", marker=dict(size=12, symbol="diamond", color=TEXT_COLOR),
        error_x=dict(type="data", symmetric=False, array=hi, arrayminus=lo), name="balance point",
        hovertemplate="%{y}: %{x:+.3f}<extra></extra>",
    ))
    fig.add_vline(x=0, line=dict(color=OTHER_COLOR, dash="dot"))
    fig.update_xaxes(range=[-2, 2])
    fig.update_yaxes(type="category", autorange="reversed")  # the first run on top
    fig = layout(fig, "Balance points (95% bootstrap intervals)",
                 "balance point (dHrel; < 0 vision preference, > 0 text preference)", "run")
    fig.update_layout(height=max(380, 100 + 50 * len(labels)), showlegend=False)
    return fig
