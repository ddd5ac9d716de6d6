"""The direct-logit-attribution report (``mechmod attribute``) from
OUT/attribution_summary.json: per-layer attention and MLP contributions to
LD = logit(text answer) - logit(vision answer) by region and by follow
outcome, the head map, and the top heads."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go

from mechmod.report._plot import PALETTE, TEXT_COLOR, VISION_COLOR, layout
from mechmod.report.registry import Table, figure, study


def _head_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for side in ("text", "vision"):
        heads = (summary.get("top_heads") or {}).get(side) or []
        rows.append((f"top {side}-promoting heads (mean LD contribution)",
                     ", ".join(f"{h['name']} {h['mean']:+.3f}" for h in heads) or "none"))
    return rows


def headline(summary: Mapping[str, Any]) -> list[Table]:
    rows = [("model", summary.get("model")), ("conflict cases", summary.get("n_cases")),
            ("max |total - sum of parts| (logits)", f"{summary.get('max_abs_residual', float('nan')):.2e}"),
            ("balance point / radius", f"{summary.get('balance_point')} / {summary.get('radius')}")]
    return [Table("Headline numbers", rows + _head_rows(summary))]


def lines(summary: Mapping[str, Any]) -> list[str]:
    return [f"{summary.get('n_cases')} cases, max attribution residual {summary.get('max_abs_residual'):.2e}, "
            f"{summary.get('seconds')} s"] + [f"{k}: {v}" for k, v in _head_rows(summary)]


study("attribution", "mechmod direct logit attribution: {model}", headline=headline, lines=lines)


def _profile_figure(groups: Mapping[str, Any], title: str) -> go.Figure:
    fig = go.Figure()
    for i, (name, prof) in enumerate(groups.items()):
        for comp, dash in (("attn", "solid"), ("mlp", "dot")):
            stats = prof.get(comp) or []
            x = list(range(len(stats)))
            mean = [s["mean"] for s in stats]
            ci = [s["ci"] or [None, None] for s in stats]
            fig.add_trace(go.Scatter(
                x=x, y=mean, mode="lines+markers", name=f"{name}: {comp}", line=dict(color=PALETTE[i % len(PALETTE)], dash=dash),
                error_y=dict(type="data", symmetric=False,
                             array=[None if c[1] is None else c[1] - m for m, c in zip(mean, ci)],
                             arrayminus=[None if c[0] is None else m - c[0] for m, c in zip(mean, ci)])))
    return layout(fig, title, "decoder layer", "mean contribution to LD (text - vision)")


@figure("attribution", "by_region", title="Attention and MLP contributions by region",
        caption="Mean over cases with bootstrap 95% intervals; ambiguous = |dHrel - balance point| < {radius}.",
        needs={"by_region": "no case had a region"})
def by_region(summary: Mapping[str, Any]) -> go.Figure:
    return _profile_figure(summary["by_region"], "Direct logit attribution by region")


@figure("attribution", "by_follow", title="Attention and MLP contributions by follow outcome",
        caption="Mean over cases with bootstrap 95% intervals.", needs={"by_follow": "no case"})
def by_follow(summary: Mapping[str, Any]) -> go.Figure:
    return _profile_figure(summary["by_follow"], "Direct logit attribution by follow outcome")


@figure("attribution", "head_map", title="Mean contribution of every head",
        caption="Positive: the head pushes towards the text answer; negative: towards the image's.",
        needs={"head_means": "no head was attributed"})
def head_map(summary: Mapping[str, Any]) -> go.Figure:
    z = summary["head_means"]
    m = max((abs(v) for row in z for v in row if v is not None), default=1.0) or 1.0
    fig = go.Figure(go.Heatmap(z=z, zmin=-m, zmax=m, colorscale=[[0, VISION_COLOR], [0.5, "white"], [1, TEXT_COLOR]],
                               colorbar=dict(title="LD")))
    return layout(fig, "Head contributions to LD (text - vision)", "head", "decoder layer")


@figure("attribution", "top_heads", title="Top text- and vision-promoting heads",
        caption="Mean contribution with bootstrap 95% interval over cases.", needs={"top_heads": "no head"})
def top_heads(summary: Mapping[str, Any]) -> go.Figure:
    heads = summary["top_heads"]["text"] + summary["top_heads"]["vision"]
    fig = go.Figure(go.Bar(
        x=[h["name"] for h in heads], y=[h["mean"] for h in heads],
        marker_color=[TEXT_COLOR if h["mean"] > 0 else VISION_COLOR for h in heads],
        error_y=dict(type="data", symmetric=False, array=[(h["ci"] or [0, h["mean"]])[1] - h["mean"] for h in heads],
                     arrayminus=[h["mean"] - (h["ci"] or [h["mean"], 0])[0] for h in heads])))
    return layout(fig, "Top heads", "head", "mean contribution to LD")
