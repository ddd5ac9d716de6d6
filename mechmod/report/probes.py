"""The probes report (``mechmod probe``) from OUT/probes_summary.json:
held-out accuracy of the linear probes per layer against the logit lens's
votes and chance, and the answer position's text-dominance index per layer
(also drawn in a run's report from its summary.json)."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go

from mechmod.report._plot import PALETTE, dominance_figure, layout
from mechmod.report.registry import Table, figure, study

LAYER_AXIS = "layer (-1 = embedding output, 0..L-1 = decoder layers)"
_TARGETS = {"follow": "follow outcome (text vs vision)", "conflict": "conflict vs consistent control"}


def _layers(summary: Mapping[str, Any], target: str) -> str:
    t = (summary.get("targets") or {}).get(target) or {}
    return f"probe {t.get('probe_first_layer')}, lens {t.get('lens_first_layer')}" if t else "n/a"


def _interval(stat: Mapping[str, Any]) -> str:
    if stat.get("mean") is None:
        return "n/a"
    ci = stat.get("ci")
    return f"{stat['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def headline(summary: Mapping[str, Any]) -> list[Table]:
    dom = (summary.get("text_dominance") or {}).get("index") or {}
    rows = [("model", summary.get("model")),
            ("conflict cases (decided) / consistent cases / groups",
             f"{summary.get('n_cases')} ({summary.get('n_decided')}) / {summary.get('n_consistent')} / "
             f"{summary.get('n_groups')}"),
            ("first layer above chance, follow outcome", _layers(summary, "follow")),
            ("first layer above chance, conflict", _layers(summary, "conflict")),
            ("text-dominance index per token (0.5 = even)", _interval(dom))]
    rows += [(f"left out: {k}", v) for k, v in (summary.get("left_out") or {}).items()]
    return [Table("Headline numbers", rows)]


def lines(summary: Mapping[str, Any]) -> list[str]:
    out = [f"{summary.get('n_cases')} conflict cases, {summary.get('n_consistent')} consistent, "
           f"{summary.get('n_groups')} groups, {summary.get('seconds')} s"]
    for target, t in (summary.get("targets") or {}).items():
        acc = ", ".join(f"{l}: {a:.2f}/" + ("-" if la is None else f"{la:.2f}")
                        for l, a, la in zip(t["layer"], t["accuracy"], t["lens_accuracy"]))
        out.append(f"{target} (chance {t['chance']:.2f}) probe/lens accuracy by layer {{{acc}}}; "
                   f"first above chance: {_layers(summary, target)}")
    dom = (summary.get("text_dominance") or {}).get("index") or {}
    out.append(f"text-dominance index per token (0.5 = even): {_interval(dom)}")
    return out


study("probes", "mechmod linear probes: {model}", headline=headline, lines=lines)


def _band(fig: go.Figure, x, mean, lo, hi, name: str, color: str) -> None:
    fig.add_trace(go.Scatter(
        x=x, y=mean, mode="lines+markers", name=name, line=dict(color=color),
        error_y=dict(type="data", symmetric=False,
                     array=[None if h is None or m is None else h - m for m, h in zip(mean, hi)],
                     arrayminus=[None if v is None or m is None else m - v for m, v in zip(mean, lo)])))


@figure("probes", "accuracy", title="Probe accuracy per layer", heading="Probing the {key}",
        needs={"targets": "no target had cases"},
        caption="Held-out accuracy (folds split by group) of an L2 logistic probe on the answer-position residual, "
                "95% bootstrap intervals over groups; the logit lens's vote at the same layer (its share of cases "
                "voting their outcome); the dashed line is chance (the majority label's share). The lens knows each "
                "case's two answers; the probe does not: its features are centred per answer colour (follow) or "
                "described colour (conflict) on the training folds. Few groups: colours recurring across groups in "
                "other roles can still push a held-out probe below chance.")
def accuracy(summary: Mapping[str, Any]) -> dict[str, go.Figure]:
    out = {}
    for target, t in summary["targets"].items():
        fig = go.Figure()
        _band(fig, t["layer"], t["accuracy"], t["ci_lo"], t["ci_hi"], "probe", PALETTE[2])
        if any(v is not None for v in t["lens_accuracy"]):
            _band(fig, t["layer"], t["lens_accuracy"], t["lens_ci_lo"], t["lens_ci_hi"], "logit lens", PALETTE[3])
        fig.add_hline(y=t["chance"], line_dash="dash", line_color="gray", annotation_text="chance")
        fig.update_yaxes(range=[0, 1.05])
        out[_TARGETS.get(target, target)] = layout(fig, f"Is the {_TARGETS.get(target, target)} decodable?",
                                                   LAYER_AXIS, "held-out accuracy")
    return out


_DOMINANCE_CAPTION = ("Per decoder layer, the answer position's attention on description + question tokens (d_t) "
                      "and on image tokens (d_i), {unit}, means over conflict cases; the index d_t / (d_t + d_i) is "
                      "0.5 where both draw the same attention, above it where text dominates.")


@figure("probes", "text_dominance", title="Text dominance per layer", needs={"text_dominance": "no attention read"},
        caption=_DOMINANCE_CAPTION.format(unit="each divided by its span's token count"))
def text_dominance(summary: Mapping[str, Any]) -> go.Figure:
    return dominance_figure(summary["text_dominance"])
