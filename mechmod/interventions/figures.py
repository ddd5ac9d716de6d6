"""Figures and report sections of the intervention studies. Render only:
every number comes from a summary dict (``patch_summary.json``,
``steer_summary.json``)."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechmod import plots
from mechmod.report import Report

_DASH = {"resid": "solid", "attn": "dash", "mlp": "dot"}
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f"]


def flip_rate_figure(summary: Mapping[str, Any], value: str = "flip_rate") -> go.Figure:
    """Flip rate (or restoration) against layer: one panel per direction,
    one line per position group (dash: component)."""
    curves = summary.get("curves") or []
    directions = list(dict.fromkeys(c["direction"] for c in curves)) or ["(no pairs)"]
    fig = make_subplots(rows=1, cols=len(directions), subplot_titles=[
        f"{d} (n={summary.get('n_pairs', {}).get(d, 0)})" for d in directions], shared_yaxes=True)
    groups = list(dict.fromkeys(c["positions"] for c in curves))
    for c in curves:
        col = directions.index(c["direction"]) + 1
        color = _PALETTE[groups.index(c["positions"]) % len(_PALETTE)]
        fig.add_trace(go.Scatter(x=c["layers"], y=c[value], mode="lines+markers", line=dict(color=color, dash=_DASH[c["component"]]),
                                 name=f"{c['positions']} ({c['component']})", legendgroup=f"{c['positions']}{c['component']}",
                                 showlegend=col == 1), row=1, col=col)
    fig.update_layout(title=f"{'Flip rate to the source answer' if value == 'flip_rate' else 'Normalised LD restoration'} by patched layer",
                      template="plotly_white", height=380, margin=dict(l=60, r=20, t=70, b=50))
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text=value.replace("_", " "), col=1)
    return fig


def first_50_by_dh_figure(summary: Mapping[str, Any]) -> go.Figure:
    """First layer reaching a 50% flip rate per dHrel bin (does the decision
    move later near the balance point?)."""
    fig = go.Figure()
    for i, c in enumerate(summary.get("curves") or []):
        bins = [b for b in c.get("by_dh") or [] if b.get("first_50") is not None]
        if bins:
            fig.add_trace(go.Scatter(x=[b["dh_mean"] for b in bins], y=[b["first_50"] for b in bins], mode="lines+markers",
                                     name=f"{c['direction']} {c['positions']} ({c['component']})",
                                     line=dict(color=_PALETTE[i % len(_PALETTE)], dash=_DASH[c["component"]])))
    bp = (summary.get("balance_point") or {}).get("estimate")
    if bp is not None:
        fig.add_vline(x=bp, line=dict(color="black", dash="dash"), annotation_text="balance point")
    return plots._layout(fig, "First layer with >= 50% flips, by dHrel bin", "dHrel (bin mean)", "layer")


def unit_figure(units: list[Mapping[str, Any]], value: str, title: str) -> go.Figure:
    """Heat map layer x (heads..., MLP) of one per-unit value."""
    layers = sorted({u["layer"] for u in units})
    heads = sorted({u["head"] for u in units if u["kind"] == "head"})
    cols = [f"H{h}" for h in heads] + ["MLP"]
    z = [[None] * len(cols) for _ in layers]
    for u in units:
        j = cols.index("MLP" if u["kind"] == "mlp" else f"H{u['head']}")
        z[layers.index(u["layer"])][j] = u.get(value)
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=layers, colorscale="RdBu_r", zmid=0, colorbar=dict(title=value)))
    return plots._layout(fig, title, "unit at the last token", "layer")


def patch_figures(summary: Mapping[str, Any]) -> list[tuple[str, go.Figure, str]]:
    """(heading, figure, caption) of every figure of a patching summary."""
    figs = [("Flip rate vs layer", flip_rate_figure(summary),
             "Share of pairs whose answer becomes the source's when the component's output at the position group "
             "is copied from the source at that layer. Positions are aligned by span (k-th token to k-th token). "
             "With the image first in every prompt, image tokens are identical in source and target here, so "
             "patching them changes nothing."),
            ("Logit-difference restoration vs layer", flip_rate_figure(summary, "restoration"),
             "(LD_patched - LD_target) / (LD_source - LD_target), LD = logit(source answer) - logit(target answer)."),
            ("Where the decision is made, by dHrel", first_50_by_dh_figure(summary), "")]
    for analysis, units in (summary.get("units") or {}).items():
        if not units:
            continue
        if analysis.startswith("knockout"):
            figs.append((f"Heads and MLPs: {analysis}", unit_figure(units, "mean_contrib", f"{analysis}: contribution to logit(text) - logit(vision)"),
                         "Positive (red): the unit promotes the text answer (knocking it out lowers the text-vs-vision logit difference)."))
        else:
            figs.append((f"Heads and MLPs: {analysis}", unit_figure(units, "restoration", f"{analysis}: restoration at the last token"), ""))
    return figs


def patch_lines(summary: Mapping[str, Any]) -> list[str]:
    """One console line per curve: first layer with 50% flips, critical window."""
    out = []
    for c in summary.get("curves") or []:
        w = c.get("window")
        window = f"{w['start']}-{w['end']}" if w else "n/a"
        out.append(f"{c['direction']:5s} {c['component']:5s} {c['positions']:11s} n={c['n_pairs']:4d}  "
                   f"first 50% layer {c['first_50']}  critical window {window}")
    return out


def patch_report(summary: Mapping[str, Any], model: str) -> Report:
    rep = Report(f"mechmod patching: {model}")
    bp = summary.get("balance_point") or {}
    rows = [("model", model), ("conflict cases", summary.get("n_conflict_cases")),
            ("TFR (clean)", (summary.get("following") or {}).get("tfr")), ("balance point (clean)", bp.get("estimate"))]
    rows += [(f"pairs {d}", n) for d, n in (summary.get("n_pairs") or {}).items()]
    rows += [(f"{c['direction']} {c['positions']} ({c['component']}): first 50% layer / critical window",
              f"{c['first_50']} / " + (f"{c['window']['start']}-{c['window']['end']}" if c.get("window") else "n/a"))
             for c in summary.get("curves") or []]
    rep.add_table("Headline numbers", rows)
    for heading, fig, caption in patch_figures(summary):
        rep.add_figure(heading, fig, caption)
    return rep


def balance_vs_alpha_figure(summary: Mapping[str, Any]) -> go.Figure:
    """Balance point (with bootstrap interval) and TFR against alpha, one
    line per steered layer."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["balance point vs alpha", "TFR vs alpha"])
    for i, (layer, s) in enumerate((summary.get("layers") or {}).items()):
        color = _PALETTE[i % len(_PALETTE)]
        per = s["per_alpha"]
        a = [p["alpha"] for p in per]
        est = [p["balance_point"]["estimate"] for p in per]
        ci = [p["balance_point"].get("ci") or [None, None] for p in per]
        fig.add_trace(go.Scatter(x=a, y=est, mode="lines+markers", name=f"layer {layer}", line=dict(color=color),
                                 error_y=dict(type="data", symmetric=False,
                                              array=[None if e is None or c[1] is None else c[1] - e for e, c in zip(est, ci)],
                                              arrayminus=[None if e is None or c[0] is None else e - c[0] for e, c in zip(est, ci)])),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=a, y=[p["tfr"] for p in per], mode="lines+markers", name=f"layer {layer}",
                                 line=dict(color=color), showlegend=False), row=1, col=2)
    fig.update_layout(template="plotly_white", height=380, margin=dict(l=60, r=20, t=70, b=50),
                      title="Preference steering: alpha * (mean text-following - mean vision-following residual)")
    fig.update_xaxes(title_text="alpha")
    fig.update_yaxes(title_text="balance point (dHrel)", col=1)
    fig.update_yaxes(title_text="TFR", col=2, range=[0, 1])
    return fig


def steer_report(summary: Mapping[str, Any], model: str) -> Report:
    rep = Report(f"mechmod steering: {model}")
    rows = [("model", model), ("train / held-out cases", f"{summary.get('n_train')} / {summary.get('n_heldout')}")]
    for layer, s in (summary.get("layers") or {}).items():
        rows.append((f"layer {layer}: balance shift per unit alpha (dHrel units) / TFR per unit alpha",
                     f"{plots_fmt(s.get('balance_per_alpha'))} / {plots_fmt(s.get('tfr_per_alpha'))}"))
    rep.add_table("Headline numbers", rows)
    for heading, fig, caption in steer_figures(summary):
        rep.add_figure(heading, fig, caption)
    return rep


def steer_figures(summary: Mapping[str, Any]) -> list[tuple[str, go.Figure, str]]:
    """(heading, figure, caption) of every figure of a steering summary."""
    figs = [("Balance point and TFR vs alpha", balance_vs_alpha_figure(summary),
             "Held-out cases; dHrel is the unsteered one, so balance-point shifts are preference changes in dHrel units.")]
    for layer, s in (summary.get("layers") or {}).items():
        curves = {f"alpha {p['alpha']:+g}": p["curve"] for p in s["per_alpha"] if p.get("curve")}
        balances = {f"alpha {p['alpha']:+g}": p["balance_point"] for p in s["per_alpha"] if p.get("curve")}
        if curves:
            figs.append((f"Following curves, steering at layer {layer}", plots.following_curve_figure(curves, balances), ""))
    return figs


def steer_lines(summary: Mapping[str, Any]) -> list[str]:
    """One console line per steered layer: balance point by alpha, shift per unit alpha."""
    out = []
    for layer, s in (summary.get("layers") or {}).items():
        est = [p["balance_point"]["estimate"] for p in s["per_alpha"]]
        bps = ", ".join(f"{p['alpha']:+g}: " + ("n/a" if e is None else f"{e:+.2f}") for p, e in zip(s["per_alpha"], est))
        out.append(f"layer {layer}: balance point by alpha {{{bps}}}  shift per unit alpha {s['balance_per_alpha']}")
    return out


def plots_fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.3f}"
