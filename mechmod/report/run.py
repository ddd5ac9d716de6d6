"""The behavioural study's report (``mechmod run``; paper Figs. 2-6) from
RUN/summary.json and RUN/results.parquet."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import plotly.graph_objects as go

from mechmod.answers import RULE_TEXT
from mechmod.phrase_answers import PHRASE_RULE_TEXT
from mechmod.report._plot import (OTHER_COLOR, PALETTE, TEXT_COLOR, VISION_COLOR, dominance_figure,
                                  following_curves, layout)
from mechmod.report.registry import Table, figure, study


def headline(summary: Mapping[str, Any]) -> list[Table]:
    bp = summary.get("balance") or {}
    partial = [Table("PARTIAL RUN: not every case has a result", [
        ("cases with a result", f"{summary.get('n_cases', 0) + summary.get('n_failed', 0)} of "
                                f"{summary.get('n_cases_expected')}"),
        ("to finish it", "re-run the same `mechmod run` command (it resumes)"),
    ], caption="Every number below covers only the cases scored so far.")] if summary.get("partial") else []
    return partial + [Table("Headline numbers", [
        ("model", summary.get("model")),
        ("cases (ok / failed)", f"{summary.get('n_cases')} / {summary.get('n_failed', 0)}"),
        ("TFR (all)", summary.get("tfr")),
        ("VFR (all)", summary.get("vfr")),
        ("TFR (both unimodal answers correct)", summary.get("tfr_both_correct")),
        ("balance point (logistic fit)", summary.get("balance_point")),
        ("balance point 95% bootstrap CI", summary.get("balance_ci")),
        ("balance point (binned-curve crossing)", bp.get("interpolated")),
        ("balance status", bp.get("status")),
    ])]


def answer_rule(summary: Mapping[str, Any]) -> list[Table]:
    """How every answer of the run was read (the rules of mechmod.answers and mechmod.phrase_answers)."""
    return [Table("How answers are read", [("one-word answers", RULE_TEXT), ("phrase answers (MC2)", PHRASE_RULE_TEXT)])]


study("run", "mechmod study: {model}", headline=headline, footer=answer_rule)

#: the layer axis of every per-layer figure: one index everywhere
LAYER_AXIS = "layer (-1 = embedding output, 0..L-1 = decoder layers)"


@figure("run", "entropy_by_tier", title="Unimodal uncertainty by tier (Fig. 2)",
        caption="Mean answer entropy over the full vocabulary (nats) with 95% bootstrap intervals.",
        needs={"entropy_by_tier": "it needs the h_v and h_t columns"})
def entropy_by_tier(summary: Mapping[str, Any]) -> go.Figure:
    """Mean unimodal answer entropy per difficulty tier: vision entropy
    against dv, text entropy against dt."""
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
    return layout(fig, "Unimodal answer entropy by difficulty tier", "tier (dv for vision, dt for text)", "mean entropy (nats)")


@figure("run", "following_rates", title="Macro following ratios (Fig. 3a)")
def following_rates(summary: Mapping[str, Any]) -> go.Figure:
    """Macro text- and vision-following ratios, overall and on the subset
    where both unimodal answers are correct."""
    groups = [("all cases", summary.get("tfr")), ("both unimodal correct", summary.get("tfr_both_correct"))]
    names = [g for g, v in groups if v is not None]
    tfr = [v for _, v in groups if v is not None]
    fig = go.Figure()
    fig.add_bar(x=names, y=tfr, name="TFR (text-following)", marker_color=TEXT_COLOR)
    fig.add_bar(x=names, y=[1 - t for t in tfr], name="VFR (vision-following)", marker_color=VISION_COLOR)
    fig.update_layout(barmode="stack", yaxis_range=[0, 1])
    return layout(fig, "Macro following ratios", "", "share of text- or vision-following cases")


@figure("run", "dh_rel_histogram", title="Distribution of relative uncertainty (Fig. 3b)", table="results")
def dh_rel_histogram(summary: Mapping[str, Any], results: pd.DataFrame) -> go.Figure:
    """Distribution of dHrel over the scored conflict cases, stacked by outcome."""
    ok = results[results["status"] == "ok"] if "status" in results else results
    main = ok[ok["control"] == "none"] if "control" in ok else ok
    dh, follow = main["dh_rel"].to_numpy(float), main["follow"].to_numpy()
    fig = go.Figure()
    bins = dict(start=-2.0, end=2.0, size=0.1)
    for label, color in (("text", TEXT_COLOR), ("vision", VISION_COLOR), ("other", OTHER_COLOR)):
        sel = dh[follow == label]
        if sel.size:
            fig.add_histogram(x=sel, xbins=bins, name=f"follows {label}", marker_color=color, opacity=0.75)
    fig.update_layout(barmode="stack")
    return layout(fig, "Relative uncertainty dHrel = 2(H(t)-H(v))/(H(t)+H(v))", "dHrel", "cases")


@figure("run", "following_curve", title="Following curve and balance point (Fig. 4)",
        caption="P(text-following) among text- or vision-following cases, equal-count bins with Wilson 95% intervals; "
                "diamonds mark logistic-fit balance points with shaded bootstrap intervals; the low/high halves split "
                "at the median of H(t)+H(v).",
        needs={"curve": "no conflict case follows the text or the vision answer"})
def following_curve(summary: Mapping[str, Any]) -> go.Figure:
    """The following curve of all decided cases and of the low- and
    high-entropy halves, each with its balance point."""
    curves = {"all": summary["curve"]}
    balances = {"all": summary.get("balance")}
    split = summary.get("entropy_split") or {}
    for half in ("low", "high"):
        if split.get(half) and split[half].get("curve"):
            curves[f"{half} total entropy"] = split[half]["curve"]
            balances[f"{half} total entropy"] = split[half].get("balance")
    return following_curves(curves, balances)


@figure("run", "oscillations", title="Oscillations by region and control (Fig. 5)",
        caption="Layer-to-layer switches between the vision and the text answer under the {lens} lens; "
                "ambiguous = |dHrel - balance point| <= {radius}.",
        needs={"oscillations": "the results have no oscillations column, or the run has no balance point"})
def oscillations(summary: Mapping[str, Any]) -> go.Figure:
    """Mean oscillations per case with bootstrap 95% intervals, ambiguous vs
    clear region and each control."""
    osc = summary["oscillations"]
    names = [k for k in ("ambiguous", "clear") if k in osc] + sorted(k for k in osc if k.startswith("control_"))
    means = [osc[k].get("mean") for k in names]
    lo = [(m - osc[k]["ci"][0]) if m is not None and osc[k].get("ci") else 0 for k, m in zip(names, means)]
    hi = [(osc[k]["ci"][1] - m) if m is not None and osc[k].get("ci") else 0 for k, m in zip(names, means)]
    labels = [f"{k.replace('control_', 'control: ')} (n={osc[k].get('n', 0)})" for k in names]
    fig = go.Figure(go.Bar(x=labels, y=means, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                           marker_color=[OTHER_COLOR if k.startswith("control") else TEXT_COLOR if k == "ambiguous"
                                         else VISION_COLOR for k in names]))
    return layout(fig, "Oscillations between the vision and the text answer", "cases", "mean oscillations per case")


@figure("run", "switch_rates", title="Where the oscillations happen: switch rate by layer",
        caption="Share of cases with a vision <-> text switch arriving at each layer ('other' layers dropped; a "
                "switch arrives at the second vote of its pair), with bootstrap 95% intervals; summed over layers "
                "it is the mean oscillation count above. The legend names the third of the decoder layers that "
                "holds most switches and its share of them.",
        needs={"switch_rates": "the results have no layer_votes column, or the run has no balance point"})
def switch_rates(summary: Mapping[str, Any]) -> go.Figure:
    """Per-layer switch rates, ambiguous vs clear region and each control."""
    rates = summary["switch_rates"]
    names = [k for k in ("ambiguous", "clear") if k in rates] + sorted(k for k in rates if k.startswith("control_"))
    fig = go.Figure()
    for i, k in enumerate(n for n in names if rates[n].get("rate") is not None):
        r = rates[k]
        band = r.get("band")
        where = f"; {band['share']:.0%} in the {band['name']} layers" if band else "; no switch"
        lo, hi = r.get("ci_lo"), r.get("ci_hi")
        error = dict(type="data", symmetric=False, array=[h - m for h, m in zip(hi, r["rate"])],
                     arrayminus=[m - l_ for l_, m in zip(lo, r["rate"])]) if lo and hi else None
        color = TEXT_COLOR if k == "ambiguous" else VISION_COLOR if k == "clear" else PALETTE[(i + 2) % len(PALETTE)]
        fig.add_trace(go.Scatter(x=r["layers"], y=r["rate"], error_y=error, mode="lines+markers",
                                 name=f"{k.replace('control_', 'control: ')} (n={r['n']}{where})",
                                 line=dict(color=color, dash="dot" if k.startswith("control") else "solid")))
    return layout(fig, "Switches between the vision and the text answer, by layer", LAYER_AXIS,
                  "share of cases with a switch arriving here")


@figure("run", "logit_diff_heatmap", title="Logit difference by layer and dHrel (Fig. 6a)",
        needs={"logit_diff_heatmap": "the results have no layer_logit_diff column"})
def logit_diff_heatmap(summary: Mapping[str, Any]) -> go.Figure:
    """Mean logit(text answer) - logit(vision answer) per layer (x) and
    dHrel bin (y); red favours the text answer."""
    heatmap = summary["logit_diff_heatmap"]
    z = [row if row is not None else [None] * heatmap["n_layers"] for row in heatmap["mean"]]
    ylab = [f"{a:+.2f}..{b:+.2f} (n={n})" for a, b, n in zip(heatmap["edges"][:-1], heatmap["edges"][1:], heatmap["n"])]
    finite = [abs(v) for row in z for v in row if v is not None]
    zmax = max(finite) if finite else 1.0
    layers = heatmap.get("layers") or list(range(heatmap["n_layers"]))
    fig = go.Figure(go.Heatmap(z=z, x=layers, y=ylab, colorscale="RdBu_r", zmid=0,
                               zmin=-zmax, zmax=zmax, colorbar=dict(title="logit diff")))
    return layout(fig, "Layer-wise logit difference (text - vision) by relative uncertainty", LAYER_AXIS, "dHrel bin")


@figure("run", "case_study", title="Case study: one image, three descriptions (Fig. 6b)",
        needs={"case_study": "no layer_logit_diff column, or no image with conflict cases at dt 0, 1 and 2"})
def case_study(summary: Mapping[str, Any]) -> go.Figure:
    """One image with its descriptions dt = 0, 1, 2: the per-layer logit
    difference of each."""
    case = summary["case_study"]
    fig = go.Figure()
    for c in case["cases"]:
        fig.add_trace(go.Scatter(x=case.get("layers") or list(range(len(c["layer_logit_diff"]))),
                                 y=c["layer_logit_diff"], mode="lines+markers",
                                 name=f"dt={c['dt']} (dHrel {c['dh_rel']:+.2f}, follows {c['follow']})"))
    fig.add_hline(y=0, line_color=OTHER_COLOR, line_dash="dot")
    return layout(fig, f"Case study: {case['image_id']} (image says {case['answer_vision']}, "
                       f"text says {case['answer_text']})", LAYER_AXIS,
                  "logit(text answer) - logit(vision answer)")


_SPANS = {"image": VISION_COLOR, "description": TEXT_COLOR, "question": OTHER_COLOR}


@figure("run", "attention_by_layer", title="Attention of the answer position by layer",
        caption="Mean over conflict cases and heads of the attention weight the answer position puts on image, "
                "description and question tokens (the rest goes to the chat template).",
        needs={"attention_by_layer": "the run did not record attention (RunConfig.attention)"})
def attention_by_layer(summary: Mapping[str, Any]) -> go.Figure:
    """Mean attention mass of the answer position on the image, description
    and question tokens per decoder layer."""
    attention = summary["attention_by_layer"]
    fig = go.Figure()
    for span in (s for s in _SPANS if s in attention):  # a fixed order: summary.json sorts its keys
        values = attention[span]
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=list(values), mode="lines+markers",
                                 name=span, line=dict(color=_SPANS[span])))
    return layout(fig, "Where the answer position attends", LAYER_AXIS, "attention mass (mean over heads)")


@figure("run", "text_dominance", title="Text dominance of the answer position by layer",
        caption="The answer position's attention mass on description + question (d_t) and on the image (d_i) per "
                "decoder layer, means over conflict cases; the index d_t / (d_t + d_i) (0.5 = even) is per span, not "
                "per token: a run does not record span lengths (`mechmod probe` gives the index per token).",
        needs={"text_dominance": "the run did not record attention (RunConfig.attention)"})
def text_dominance(summary: Mapping[str, Any]) -> go.Figure:
    """summary.json's text_dominance per decoder layer."""
    return dominance_figure(summary["text_dominance"])


_INDEX_NAMES = {"entropy": "entropy", "label_entropy": "label entropy", "margin": "1 - margin",
                "max_prob": "1 - max prob", "renyi2": "Renyi-2 entropy", "sampled_entropy": "sampled-answer entropy"}


@figure("run", "uncertainty_indices", title="The following curve under each uncertainty index",
        caption="dHrel computed from each unimodal uncertainty index in turn; P(text-following) in equal-count bins "
                "with Wilson 95% intervals, diamonds and shading mark each index's balance point and bootstrap "
                "interval. The legend gives the logistic slope's one-sided monotonicity p-value and the cases "
                "left out because both unimodal values are ~0.",
        needs={"balance_by_measure": "it needs the h_v and h_t columns"})
def uncertainty_indices(summary: Mapping[str, Any]) -> go.Figure:
    """The following curves of every uncertainty index overlaid, each with
    its balance point and interval."""
    curves, balances = {}, {}
    for index, entry in summary["balance_by_measure"].items():
        mono = entry.get("monotonicity") or {}
        p = mono.get("p_value")
        name = (f"{_INDEX_NAMES.get(index, index)} (p {'n/a' if p is None else f'{p:.2g}'}, "
                f"{entry.get('n_excluded', 0)} excluded)")
        if entry.get("curve"):
            curves[name], balances[name] = entry["curve"], entry
    fig = following_curves(curves, balances)
    fig.update_layout(title="Text-following probability vs dHrel of each uncertainty index")
    return fig
