"""The preference-steering report (``mechmod steer``) from
OUT/steer_summary.json: balance point and TFR against the steering
strength, and the following curves per strength."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechmod.report._plot import PALETTE, following_curves
from mechmod.report.registry import LeftOut, Table, figure, study


def _signed(v) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def headline(summary: Mapping[str, Any]) -> list[Table]:
    rows = [("model", summary.get("model")), ("train / held-out cases", f"{summary.get('n_train')} / {summary.get('n_heldout')}")]
    for layer, s in (summary.get("layers") or {}).items():
        ci = s.get("balance_per_alpha_ci")
        rows.append((f"layer {layer}: balance shift per unit alpha (dHrel units) [95% bootstrap CI] / TFR per unit alpha",
                     f"{_signed(s.get('balance_per_alpha'))} [{_signed(ci and ci[0])}, {_signed(ci and ci[1])}] / "
                     f"{_signed(s.get('tfr_per_alpha'))}"))
        if not s.get("all_alphas_defined", True):
            rows.append((f"layer {layer}: alphas with a balance point",
                         f"{s.get('n_alphas_defined')} of {len(s.get('per_alpha') or [])} (more held-out groups "
                         "give one at every alpha: --groups)"))
    return [Table("Headline numbers", rows)]


def lines(summary: Mapping[str, Any]) -> list[str]:
    """One console line per steered layer: balance point by alpha, shift per unit alpha."""
    out = []
    for layer, s in (summary.get("layers") or {}).items():
        est = [p["balance_point"]["estimate"] for p in s["per_alpha"]]
        bps = ", ".join(f"{p['alpha']:+g}: " + ("n/a" if e is None else f"{e:+.2f}") for p, e in zip(s["per_alpha"], est))
        ci = s.get("balance_per_alpha_ci")
        out.append(f"layer {layer}: balance point by alpha {{{bps}}}  shift per unit alpha "
                   f"{_signed(s['balance_per_alpha'])} [{_signed(ci and ci[0])}, {_signed(ci and ci[1])}]")
    return out


study("steer", "mechmod steering: {model}", headline=headline, lines=lines)


@figure("steer", "balance_vs_alpha", title="Balance point and TFR vs alpha",
        caption="Held-out cases; dHrel is the unsteered one, so balance-point shifts are preference changes in dHrel units.")
def balance_vs_alpha(summary: Mapping[str, Any]) -> go.Figure:
    """Balance point (with bootstrap interval) and TFR against alpha, one
    line per steered layer."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["balance point vs alpha", "TFR vs alpha"])
    for i, (layer, s) in enumerate((summary.get("layers") or {}).items()):
        color = PALETTE[i % len(PALETTE)]
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
    fig.update_layout(height=380, margin=dict(l=60, r=20, t=70, b=50),
                      title="Preference steering: alpha * (mean text-following - mean vision-following residual)")
    fig.update_xaxes(title_text="alpha")
    fig.update_yaxes(title_text="balance point (dHrel)", col=1)
    fig.update_yaxes(title_text="TFR", col=2, range=[0, 1])
    return fig


@figure("steer", "following_curves", title="Following curves per steered layer",
        heading="Following curves, steering at layer {key}", needs={"layers": "no layer was steered"})
def following_curves_by_layer(summary: Mapping[str, Any]) -> dict[str, go.Figure]:
    """The following curve and balance point at each alpha, one figure per steered layer."""
    out = {}
    for layer, s in summary["layers"].items():
        curves = {f"alpha {p['alpha']:+g}": p["curve"] for p in s["per_alpha"] if p.get("curve")}
        balances = {f"alpha {p['alpha']:+g}": p["balance_point"] for p in s["per_alpha"] if p.get("curve")}
        if curves:
            out[layer] = following_curves(curves, balances)
    if not out:
        raise LeftOut("no alpha left enough decided held-out cases for a following curve")
    return out
