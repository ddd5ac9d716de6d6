"""Plotting helpers shared by the studies' figures: colours, the common
layout, the following-curve plot that the run, steering and comparison
reports all draw, and the text-dominance plot of the run and probes reports."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go

TEXT_COLOR = "#d62728"
VISION_COLOR = "#1f77b4"
OTHER_COLOR = "#7f7f7f"
#: one colour per line where lines are not modalities (steered layers, position groups)
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f"]
_CURVE_PALETTE = [TEXT_COLOR, VISION_COLOR, "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=380,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def _balance_marker(fig: go.Figure, balance: Mapping[str, Any] | None, color: str, name: str) -> None:
    if not balance or balance.get("estimate") is None:
        return
    est = balance["estimate"]
    fig.add_vline(x=est, line=dict(color=color, dash="dash"))
    ci = balance.get("ci")
    if ci and None not in ci:
        fig.add_vrect(x0=ci[0], x1=ci[1], fillcolor=color, opacity=0.12, line_width=0)
    fig.add_trace(go.Scatter(x=[est], y=[0.5], mode="markers", marker=dict(size=11, color=color, symbol="diamond"),
                             name=f"{name} balance point {est:+.2f}"))


def following_curves(curves: Mapping[str, Mapping[str, Any]], balances: Mapping[str, Mapping[str, Any] | None]) -> go.Figure:
    """P(text-following) against dHrel with Wilson intervals, one trace per
    named curve, each with its balance point and interval (paper Fig. 4)."""
    fig = go.Figure()
    for i, (name, curve) in enumerate(curves.items()):
        color = _CURVE_PALETTE[i % len(_CURVE_PALETTE)]
        x, p = curve["centers"], curve["p_text"]
        lo, hi = curve["ci_lo"], curve["ci_hi"]
        fig.add_trace(
            go.Scatter(
                x=x, y=p, mode="lines+markers", name=name, line=dict(color=color),
                error_y=dict(type="data", symmetric=False,
                             array=[None if (h is None or v is None) else h - v for h, v in zip(hi, p)],
                             arrayminus=[None if (l is None or v is None) else v - l for l, v in zip(lo, p)]),
                customdata=curve["n"], hovertemplate="dHrel %{x:.2f}<br>P(text) %{y:.2f}<br>n %{customdata}",
            )
        )
        _balance_marker(fig, balances.get(name), color, name)
    fig.add_hline(y=0.5, line=dict(color="black", width=1, dash="dot"))
    fig.update_yaxes(range=[-0.02, 1.02])
    return layout(fig, "Text-following probability vs relative uncertainty", "dHrel (negative: text is easier)", "P(follow text)")


def dominance_figure(dominance: Mapping[str, Any]) -> go.Figure:
    """The text-dominance index and the text and image attention densities per decoder layer."""
    per = dominance["per_layer"]
    unit = "per token" if dominance.get("per_token") else "span mass"
    fig = go.Figure()
    x = list(range(len(per["index"])))
    fig.add_trace(go.Scatter(x=x, y=per["index"], mode="lines+markers", name="index d_t / (d_t + d_i)",
                             line=dict(color="black")))
    for name, color in (("text", TEXT_COLOR), ("image", VISION_COLOR)):
        fig.add_trace(go.Scatter(x=x, y=per[name], mode="lines", name=f"{name} attention ({unit})",
                                 line=dict(color=color, dash="dot"), yaxis="y2"))
    fig.add_hline(y=0.5, line_dash="dash", line_color="gray")
    fig.update_layout(yaxis=dict(range=[0, 1]), yaxis2=dict(overlaying="y", side="right", title=f"attention ({unit})"))
    return layout(fig, f"Text dominance of the answer position ({unit})", "decoder layer", "text-dominance index")
