"""The attention-knockout report (``mechmod flow``) from
OUT/flow_summary.json: per flow, the flip rate and the LD change against
the knocked-out window, one line per region; and the head-scaling report
(``mechmod scale-heads``): TFR and balance point against alpha."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechmod.report._plot import PALETTE, following_curves
from mechmod.report.registry import LeftOut, Table, figure, study


def _flow_headline(summary: Mapping[str, Any]) -> list[Table]:
    s = summary.get("strongest") or {}
    rows = [("model", summary.get("model")), ("conflict cases", summary.get("n_cases")),
            ("window (decoder layers)", summary.get("window")),
            ("largest mean LD change", f"{s.get('flow')} in layers [{s.get('window_start')}, {s.get('window_end')}): "
             f"{s.get('delta_logit_diff')} (flip rate {s.get('flip_rate')})" if s else "n/a")]
    return [Table("Headline numbers", rows)]


def _flow_lines(summary: Mapping[str, Any]) -> list[str]:
    out = [f"{summary.get('n_cases')} cases, windows of {summary.get('window')} layers, {summary.get('seconds')} s"]
    for flow, regions in (summary.get("flows") or {}).items():
        a = regions.get("all") or {}
        flips = ", ".join(f"{s}: {f:.2f}" for s, f in zip(a.get("window_start", []), a.get("flip_rate", [])))
        out.append(f"{flow}: flip rate by window start {{{flips}}}")
    return out


study("flow", "mechmod attention knockout: {model}", headline=_flow_headline, lines=_flow_lines)


def _band(fig, x, mean, lo, hi, name, color, row, show):
    fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=name, line=dict(color=color), showlegend=show,
                             error_y=dict(type="data", symmetric=False,
                                          array=[None if h is None or m is None else h - m for m, h in zip(mean, hi)],
                                          arrayminus=[None if lo_ is None or m is None else m - lo_
                                                      for m, lo_ in zip(mean, lo)])), row=1, col=row)


@figure("flow", "windows", title="Knockout per flow", heading="Blocking {key}", needs={"flows": "no flow was blocked"},
        caption="Each point blocks the flow in the decoder layers [start, start + {window}); 95% bootstrap intervals "
                "over cases.")
def windows(summary: Mapping[str, Any]) -> dict[str, go.Figure]:
    out = {}
    for flow, regions in summary["flows"].items():
        fig = make_subplots(rows=1, cols=2, subplot_titles=["flip rate", "mean change of LD (text - vision)"])
        for i, (region, s) in enumerate(regions.items()):
            color = PALETTE[i % len(PALETTE)]
            x = s["window_start"]
            _band(fig, x, s["flip_rate"], s["flip_rate_lo"], s["flip_rate_hi"], region, color, 1, True)
            _band(fig, x, s["delta_logit_diff"], s["delta_logit_diff_lo"], s["delta_logit_diff_hi"], region, color, 2,
                  False)
        fig.update_layout(height=380, margin=dict(l=60, r=20, t=70, b=50),
                          title=f"Attention knockout {flow}")
        fig.update_xaxes(title_text="first layer of the window")
        fig.update_yaxes(range=[0, 1], col=1)
        out[flow] = fig
    return out


def _scale_headline(summary: Mapping[str, Any]) -> list[Table]:
    rows = [("model", summary.get("model")), ("conflict cases", summary.get("n_cases")),
            ("positions", summary.get("positions"))]
    for name, s in (summary.get("head_sets") or {}).items():
        rows.append((f"{name} ({', '.join(s['heads'])}): TFR / balance shift per unit alpha",
                     f"{s.get('tfr_per_alpha')} / {s.get('balance_per_alpha')}"))
    return [Table("Headline numbers", rows)]


def _scale_lines(summary: Mapping[str, Any]) -> list[str]:
    out = []
    for name, s in (summary.get("head_sets") or {}).items():
        tfr = ", ".join(f"{p['alpha']:g}: " + ("n/a" if p["tfr"] is None else f"{p['tfr']:.2f}") for p in s["per_alpha"])
        out.append(f"{name} ({', '.join(s['heads'])}): TFR by alpha {{{tfr}}}")
    return out


study("scale_heads", "mechmod head scaling: {model}", headline=_scale_headline, lines=_scale_lines)


@figure("scale_heads", "tfr_vs_alpha", title="TFR, balance point and LD vs alpha", needs={"head_sets": "no head set"},
        caption="alpha 1 is the clean model, alpha 0 the heads' zero-ablation; dHrel is the unscaled one.")
def tfr_vs_alpha(summary: Mapping[str, Any]) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, subplot_titles=["TFR", "balance point", "mean LD (text - vision)"])
    for i, (name, s) in enumerate(summary["head_sets"].items()):
        color, per = PALETTE[i % len(PALETTE)], s["per_alpha"]
        a = [p["alpha"] for p in per]
        for col, y in ((1, [p["tfr"] for p in per]), (2, [p["balance_point"]["estimate"] for p in per]),
                       (3, [p["mean_logit_diff"] for p in per])):
            fig.add_trace(go.Scatter(x=a, y=y, mode="lines+markers", name=name, line=dict(color=color),
                                     showlegend=col == 1), row=1, col=col)
    fig.update_layout(height=380, margin=dict(l=60, r=20, t=70, b=50), title="Head scaling")
    fig.update_xaxes(title_text="alpha")
    return fig


@figure("scale_heads", "following_curves", title="Following curves per head set", heading="Following curves, scaling {key}",
        needs={"head_sets": "no head set"})
def curves(summary: Mapping[str, Any]) -> dict[str, go.Figure]:
    out = {}
    for name, s in summary["head_sets"].items():
        c = {f"alpha {p['alpha']:g}": p["curve"] for p in s["per_alpha"] if p.get("curve")}
        if c:
            out[name] = following_curves(c, {f"alpha {p['alpha']:g}": p["balance_point"] for p in s["per_alpha"]
                                             if p.get("curve")})
    if not out:
        raise LeftOut("no alpha left decided cases for a following curve")
    return out
