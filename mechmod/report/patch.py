"""The activation-patching report (``mechmod patch``) from
OUT/patch_summary.json: flip rate and restoration per layer, where the
decision is made by dHrel, single heads and MLPs patched and knocked out."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechmod.report._plot import PALETTE, layout
from mechmod.report.registry import LeftOut, Table, figure, study

_DASH = {"resid": "solid", "attn": "dash", "mlp": "dot"}


def _window(c: Mapping[str, Any]) -> str:
    w = c.get("window")
    return f"{w['start']}-{w['end']}" if w else "n/a"


def headline(summary: Mapping[str, Any]) -> list[Table]:
    bp = summary.get("balance_point") or {}
    rows = [("model", summary.get("model")), ("conflict cases", summary.get("n_conflict_cases")),
            ("TFR (clean)", (summary.get("following") or {}).get("tfr")), ("balance point (clean)", bp.get("estimate"))]
    rows += [(f"pairs {d}", n) for d, n in (summary.get("n_pairs") or {}).items()]
    rows += [(f"{c['direction']} {c['positions']} ({c['component']}): first 50% layer / critical window",
              f"{c['first_50']} / {_window(c)}") for c in summary.get("curves") or []]
    rows += [(f"{c['direction']} {c['positions']} ({c['component']}): peak flip rate, ambiguous / clear region",
              " / ".join(_peak(c["flip_rate_by_region"][r]) for r in ("ambiguous", "clear")))
             for c in summary.get("curves") or [] if c.get("flip_rate_by_region")]
    return [Table("Headline numbers", rows)]


def _peak(part: Mapping[str, Any]) -> str:
    """The highest per-layer flip rate of one region's cases, with their number."""
    rates = part.get("flip_rate")
    return "n/a (no case)" if not rates else f"{max(rates):.2f} (n={part['n']})"


def lines(summary: Mapping[str, Any]) -> list[str]:
    """One console line per curve: first layer with 50% flips, critical window."""
    return [f"{c['direction']:5s} {c['component']:5s} {c['positions']:11s} n={c['n_pairs']:4d}  "
            f"first 50% layer {c['first_50']}  critical window {_window(c)}" for c in summary.get("curves") or []]


study("patch", "mechmod patching: {model}", headline=headline, lines=lines)


def _by_layer(summary: Mapping[str, Any], value: str) -> go.Figure:
    """``value`` (flip rate or restoration) against layer: one panel per
    direction, one line per position group (dash: component)."""
    curves = summary.get("curves") or []
    directions = list(dict.fromkeys(c["direction"] for c in curves)) or ["(no pairs)"]
    fig = make_subplots(rows=1, cols=len(directions), subplot_titles=[
        f"{d} (n={summary.get('n_pairs', {}).get(d, 0)})" for d in directions], shared_yaxes=True)
    groups = list(dict.fromkeys(c["positions"] for c in curves))
    for c in curves:
        col = directions.index(c["direction"]) + 1
        color = PALETTE[groups.index(c["positions"]) % len(PALETTE)]
        fig.add_trace(go.Scatter(x=c["layers"], y=c[value], mode="lines+markers", line=dict(color=color, dash=_DASH[c["component"]]),
                                 name=f"{c['positions']} ({c['component']})", legendgroup=f"{c['positions']}{c['component']}",
                                 showlegend=col == 1), row=1, col=col)
    fig.update_layout(title=f"{'Flip rate to the source answer' if value == 'flip_rate' else 'Normalised LD restoration'} by patched layer",
                      height=380, margin=dict(l=60, r=20, t=70, b=50))
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text=value.replace("_", " "), col=1)
    return fig


@figure("patch", "flip_rate", title="Flip rate vs layer",
        caption="Share of pairs whose answer becomes the source's when the component's output at the position group "
                "is copied from the source at that layer. Positions are aligned by span (k-th token to k-th token). "
                "With the image first in every prompt, image tokens are identical in source and target here, so "
                "patching them changes nothing.")
def flip_rate(summary: Mapping[str, Any]) -> go.Figure:
    return _by_layer(summary, "flip_rate")


@figure("patch", "restoration", title="Logit-difference restoration vs layer",
        caption="(LD_patched - LD_target) / (LD_source - LD_target), LD = logit(source answer) - logit(target answer).")
def restoration(summary: Mapping[str, Any]) -> go.Figure:
    return _by_layer(summary, "restoration")


@figure("patch", "flip_rate_by_region", title="Flip rate vs layer, ambiguous and clear regions",
        caption="The flip rate of each curve split by the case's region: ambiguous = |dHrel - balance point| <= "
                "radius, clear = the rest (n cases per region in the legend). Solid: ambiguous, dotted: clear.")
def flip_rate_by_region(summary: Mapping[str, Any]) -> go.Figure:
    """Per curve (direction, positions, component) the per-layer flip rate
    of the ambiguous-region and the clear-region cases."""
    curves = [c for c in summary.get("curves") or [] if c.get("flip_rate_by_region")]
    if not curves:
        raise LeftOut("the clean run has no balance point, so no case has a region")
    fig = go.Figure()
    for i, c in enumerate(curves):
        for name, dash in (("ambiguous", "solid"), ("clear", "dot")):
            part = c["flip_rate_by_region"][name]
            if part.get("flip_rate"):
                fig.add_trace(go.Scatter(x=c["layers"], y=part["flip_rate"], mode="lines+markers",
                                         line=dict(color=PALETTE[i % len(PALETTE)], dash=dash),
                                         name=f"{c['direction']} {c['positions']} ({c['component']}), {name} "
                                              f"(n={part['n']})"))
    return layout(fig, "Flip rate by patched layer, per region", "layer", "flip rate")


@figure("patch", "first_50_by_dh", title="Where the decision is made, by dHrel")
def first_50_by_dh(summary: Mapping[str, Any]) -> go.Figure:
    """First layer reaching a 50% flip rate per dHrel bin (does the decision
    move later near the balance point?)."""
    fig = go.Figure()
    for i, c in enumerate(summary.get("curves") or []):
        bins = [b for b in c.get("by_dh") or [] if b.get("first_50") is not None]
        if bins:
            fig.add_trace(go.Scatter(x=[b["dh_mean"] for b in bins], y=[b["first_50"] for b in bins], mode="lines+markers",
                                     name=f"{c['direction']} {c['positions']} ({c['component']})",
                                     line=dict(color=PALETTE[i % len(PALETTE)], dash=_DASH[c["component"]])))
    bp = (summary.get("balance_point") or {}).get("estimate")
    if bp is not None:
        fig.add_vline(x=bp, line=dict(color="black", dash="dash"), annotation_text="balance point")
    return layout(fig, "First layer with >= 50% flips, by dHrel bin", "dHrel (bin mean)", "layer")


def _units(units: list[Mapping[str, Any]], value: str, title: str) -> go.Figure:
    """Heat map layer x (heads..., MLP) of one per-unit value."""
    layers = sorted({u["layer"] for u in units})
    heads = sorted({u["head"] for u in units if u["kind"] == "head"})
    cols = [f"H{h}" for h in heads] + ["MLP"]
    z = [[None] * len(cols) for _ in layers]
    for u in units:
        j = cols.index("MLP" if u["kind"] == "mlp" else f"H{u['head']}")
        z[layers.index(u["layer"])][j] = u.get(value)
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=layers, colorscale="RdBu_r", zmid=0, colorbar=dict(title=value)))
    return layout(fig, title, "unit at the last token", "layer")


_NO_UNITS = "the study ran with --no-units"


@figure("patch", "units_patched", title="Heads and MLPs patched at the last token", heading="Heads and MLPs: {key}",
        needs={"units": _NO_UNITS})
def units_patched(summary: Mapping[str, Any]) -> dict[str, go.Figure]:
    """Restoration of each head and MLP patched at the last token, one map per direction."""
    maps = {analysis: _units(units, "restoration", f"{analysis}: restoration at the last token")
            for analysis, units in summary["units"].items() if units and not analysis.startswith("knockout")}
    if not maps:
        raise LeftOut("no unit was patched (no pair in any direction)")
    return maps


@figure("patch", "units_knocked_out", title="Heads and MLPs knocked out", heading="Heads and MLPs: {key}",
        caption="Positive (red): the unit promotes the text answer (knocking it out lowers the text-vs-vision logit "
                "difference).",
        needs={"units": _NO_UNITS})
def units_knocked_out(summary: Mapping[str, Any]) -> dict[str, go.Figure]:
    """Each head's and MLP's contribution to logit(text) - logit(vision), one map per knock-out mode."""
    maps = {analysis: _units(units, "mean_contrib", f"{analysis}: contribution to logit(text) - logit(vision)")
            for analysis, units in summary["units"].items() if units and analysis.startswith("knockout")}
    if not maps:
        raise LeftOut("no knock-out mode was run")
    return maps
