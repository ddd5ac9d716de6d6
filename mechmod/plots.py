"""Plotly figures of a study. Each function only renders: it takes the
summary dict (``summary.json``) or the results table and returns a
``plotly.graph_objects.Figure``; nothing here computes a statistic."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

TEXT_COLOR = "#d62728"
VISION_COLOR = "#1f77b4"
OTHER_COLOR = "#7f7f7f"


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=380,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def entropy_by_tier_figure(summary: Mapping[str, Any]) -> go.Figure:
    """Mean unimodal answer entropy per difficulty tier (paper Fig. 2):
    vision entropy against dv, text entropy against dt."""
    ent = summary["entropy_by_tier"]
    fig = go.Figure()
    for key, name, color in (("vision", "vision-only H(v) by dv", VISION_COLOR), ("text", "text-only H(t) by dt", TEXT_COLOR)):
        rows = ent.get(key) or []
        fig.add_trace(
            go.Scatter(
                x=[r["tier"] for r in rows],
                y=[r["mean"] for r in rows],
                error_y=dict(type="data", symmetric=False,
                             array=[(r["ci"][1] - r["mean"]) if r.get("ci") else 0 for r in rows],
                             arrayminus=[(r["mean"] - r["ci"][0]) if r.get("ci") else 0 for r in rows]),
                mode="lines+markers",
                name=name,
                line=dict(color=color),
            )
        )
    return _layout(fig, "Unimodal answer entropy by difficulty tier", "tier (dv for vision, dt for text)", "mean entropy (nats)")


def following_rates_figure(summary: Mapping[str, Any]) -> go.Figure:
    """Macro text- and vision-following ratios, overall and on the subset
    where both unimodal answers are correct (paper Fig. 3a)."""
    groups = [("all cases", summary.get("tfr")), ("both unimodal correct", summary.get("tfr_both_correct"))]
    names = [g for g, v in groups if v is not None]
    tfr = [v for _, v in groups if v is not None]
    fig = go.Figure()
    fig.add_bar(x=names, y=tfr, name="TFR (text-following)", marker_color=TEXT_COLOR)
    fig.add_bar(x=names, y=[1 - t for t in tfr], name="VFR (vision-following)", marker_color=VISION_COLOR)
    fig.update_layout(barmode="stack", yaxis_range=[0, 1])
    return _layout(fig, "Macro following ratios", "", "share of text- or vision-following cases")


def dh_rel_histogram_figure(dh_rel: Sequence[float], follow: Sequence[str] | None = None) -> go.Figure:
    """Distribution of relative uncertainty dHrel (paper Fig. 3b), split by
    outcome when ``follow`` is given."""
    dh = np.asarray(dh_rel, dtype=float)
    fig = go.Figure()
    bins = dict(start=-2.0, end=2.0, size=0.1)
    if follow is None:
        fig.add_histogram(x=dh, xbins=bins, name="all", marker_color=OTHER_COLOR)
    else:
        fol = np.asarray(follow)
        for label, color in (("text", TEXT_COLOR), ("vision", VISION_COLOR), ("other", OTHER_COLOR)):
            sel = dh[fol == label]
            if sel.size:
                fig.add_histogram(x=sel, xbins=bins, name=f"follows {label}", marker_color=color, opacity=0.75)
        fig.update_layout(barmode="stack")
    return _layout(fig, "Relative uncertainty dHrel = 2(H(t)-H(v))/(H(t)+H(v))", "dHrel", "cases")


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


def following_curve_figure(curves: Mapping[str, Mapping[str, Any]], balances: Mapping[str, Mapping[str, Any] | None]) -> go.Figure:
    """P(text-following) against dHrel with Wilson intervals, one trace per
    named curve (a run, or the low/high-entropy halves), each with its
    balance point and interval (paper Fig. 4)."""
    palette = [TEXT_COLOR, VISION_COLOR, "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    fig = go.Figure()
    for i, (name, curve) in enumerate(curves.items()):
        color = palette[i % len(palette)]
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
    return _layout(fig, "Text-following probability vs relative uncertainty", "dHrel (negative: text is easier)", "P(follow text)")


def oscillation_figure(summary: Mapping[str, Any]) -> go.Figure:
    """Mean oscillations per case with bootstrap 95% intervals, ambiguous vs
    clear region and each control (paper Fig. 5)."""
    osc = summary.get("oscillations") or {}
    names = [k for k in ("ambiguous", "clear") if k in osc] + sorted(k for k in osc if k.startswith("control_"))
    means = [osc[k].get("mean") for k in names]
    lo = [(m - osc[k]["ci"][0]) if m is not None and osc[k].get("ci") else 0 for k, m in zip(names, means)]
    hi = [(osc[k]["ci"][1] - m) if m is not None and osc[k].get("ci") else 0 for k, m in zip(names, means)]
    labels = [f"{k.replace('control_', 'control: ')} (n={osc[k].get('n', 0)})" for k in names]
    fig = go.Figure(go.Bar(x=labels, y=means, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                           marker_color=[OTHER_COLOR if k.startswith("control") else TEXT_COLOR if k == "ambiguous"
                                         else VISION_COLOR for k in names]))
    return _layout(fig, "Oscillations between the vision and the text answer", "cases", "mean oscillations per case")


def logit_diff_heatmap_figure(heatmap: Mapping[str, Any]) -> go.Figure:
    """Mean logit(text answer) - logit(vision answer) per layer (x) and
    dHrel bin (y) (paper Fig. 6a); red favours the text answer."""
    z = [row if row is not None else [None] * heatmap["n_layers"] for row in heatmap["mean"]]
    ylab = [f"{a:+.2f}..{b:+.2f} (n={n})" for a, b, n in zip(heatmap["edges"][:-1], heatmap["edges"][1:], heatmap["n"])]
    finite = [abs(v) for row in z for v in row if v is not None]
    zmax = max(finite) if finite else 1.0
    fig = go.Figure(go.Heatmap(z=z, x=list(range(heatmap["n_layers"])), y=ylab, colorscale="RdBu_r", zmid=0,
                               zmin=-zmax, zmax=zmax, colorbar=dict(title="logit diff")))
    return _layout(fig, "Layer-wise logit difference (text - vision) by relative uncertainty",
                   "layer (0 = embeddings)", "dHrel bin")


def case_study_figure(case: Mapping[str, Any]) -> go.Figure:
    """One image with its descriptions dt = 0, 1, 2: the per-layer logit
    difference of each (paper Fig. 6b)."""
    fig = go.Figure()
    for c in case["cases"]:
        fig.add_trace(go.Scatter(y=c["layer_logit_diff"], mode="lines+markers",
                                 name=f"dt={c['dt']} (dHrel {c['dh_rel']:+.2f}, follows {c['follow']})"))
    fig.add_hline(y=0, line_color=OTHER_COLOR, line_dash="dot")
    return _layout(fig, f"Case study: {case['image_id']} (image says {case['answer_vision']}, "
                        f"text says {case['answer_text']})", "layer (0 = embeddings)",
                   "logit(text answer) - logit(vision answer)")


def compare_following_figure(curves: Mapping[str, Mapping[str, Any] | None],
                             balances: Mapping[str, Mapping[str, Any] | None]) -> go.Figure:
    """Several runs' following curves and balance points overlaid (paper
    Fig. 4a): one named trace per run, each with its balance point and
    interval. A run without a curve is left out of the plot."""
    fig = following_curve_figure({k: v for k, v in curves.items() if v and v.get("centers") is not None}, balances)
    fig.update_layout(title="Following curves compared: P(text) vs dHrel per run")
    return fig


def balance_points_figure(labels: Sequence[str], estimates: Sequence[float | None],
                          intervals: Sequence[Sequence[float] | None]) -> go.Figure:
    """Balance point of each run with its bootstrap interval (a forest
    plot); a run without an estimate keeps its row, with no marker."""
    x = [e for e in estimates]
    hi = [(ci[1] - e) if e is not None and ci and None not in ci else None for e, ci in zip(estimates, intervals)]
    lo = [(e - ci[0]) if e is not None and ci and None not in ci else None for e, ci in zip(estimates, intervals)]
    fig = go.Figure(go.Scatter(
        x=x, y=list(labels), mode="markers", marker=dict(size=12, symbol="diamond", color=TEXT_COLOR),
        error_x=dict(type="data", symmetric=False, array=hi, arrayminus=lo), name="balance point",
        hovertemplate="%{y}: %{x:+.3f}<extra></extra>",
    ))
    fig.add_vline(x=0, line=dict(color=OTHER_COLOR, dash="dot"))
    fig.update_xaxes(range=[-2, 2])
    fig.update_yaxes(type="category", autorange="reversed")  # the first run on top
    fig = _layout(fig, "Balance points (95% bootstrap intervals)",
                  "balance point (dHrel; < 0 vision preference, > 0 text preference)", "run")
    fig.update_layout(height=max(380, 100 + 50 * len(labels)), showlegend=False)
    return fig


def attention_by_layer_figure(attention: Mapping[str, Sequence[float]]) -> go.Figure:
    """Mean attention mass of the answer position on the image, description
    and question tokens per decoder layer (conflict cases)."""
    colors = {"image": VISION_COLOR, "description": TEXT_COLOR, "question": OTHER_COLOR}
    fig = go.Figure()
    for span, values in attention.items():
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=list(values), mode="lines+markers", name=span,
                                 line=dict(color=colors.get(span))))
    return _layout(fig, "Where the answer position attends", "decoder layer", "attention mass (mean over heads)")


def lens_fidelity_figure(kl_logit: Sequence[float], kl_tuned: Sequence[float]) -> go.Figure:
    """Per-layer mean KL(final || lens) of the logit lens and the tuned lens."""
    layers = list(range(len(kl_logit)))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=np.asarray(kl_logit, float), mode="lines+markers", name="logit lens",
                             line=dict(color=OTHER_COLOR)))
    fig.add_trace(go.Scatter(x=layers, y=np.asarray(kl_tuned, float), mode="lines+markers", name="tuned lens",
                             line=dict(color="#2ca02c")))
    return _layout(fig, "Lens fidelity: KL(final || lens) per layer", "residual index (0 = embeddings)", "mean KL (nats)")
