"""The boundary-case fine-tuning report (``mechmod finetune``) from
OUT/finetune_summary.json: target-following, oscillations, unimodal
accuracies and balance points before and after fine-tuning on boundary or
easy cases, on held-out groups."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechmod.report._plot import PALETTE, layout
from mechmod.report.registry import LeftOut, Table, figure, study

_NAMES = {"target_following": "target-following rate", "target_following_ambiguous": "target-following, ambiguous region",
          "oscillations_ambiguous": "oscillations, ambiguous region", "accuracy_vision": "vision-only accuracy",
          "accuracy_text": "text-only accuracy"}


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(part: Mapping[str, Any]) -> str:
    ci = part.get("ci")
    return f"{_num(part.get('estimate'))} [{_num(ci and ci[0])}, {_num(ci and ci[1])}]"


def headline(summary: Mapping[str, Any]) -> list[Table]:
    cfg = summary.get("config") or {}
    held = summary.get("heldout") or {}
    rows = [("model", summary.get("model")), ("target modality", summary.get("target")),
            ("budget per fine-tuning (equal for every selection)",
             f"{summary.get('n_train')} cases, {cfg.get('steps')} steps of {cfg.get('batch_size')}, lr {cfg.get('lr')}, "
             f"{cfg.get('method')} fine-tuning"),
            ("seeds per selection", len(summary.get("seeds") or [])),
            ("boundary band", f"|dHrel - balance point| <= {summary.get('radius')}"),
            ("held-out conflict cases (groups) / in the ambiguous region",
             f"{held.get('n_conflict')} ({held.get('n_groups')}) / {held.get('n_ambiguous')}")]
    tables = [Table("Headline numbers", rows)]
    by = summary.get("by_selection") or {}
    body = [[_NAMES[m], _num(next(iter(by.values()))[m]["before"])] + [_ci(by[s][m]["after"]) for s in by]
            for m in _NAMES] if by else []
    diff = summary.get("boundary_minus_easy")
    if diff:
        for row, m in zip(body, _NAMES):
            row.append(_ci(diff[m]))
    if body:
        tables.append(Table("Before and after fine-tuning (held-out groups; mean over seeds [95% CI over seeds and cases])",
                            body, header=["", "before"] + [f"after, {s}" for s in by] + (["boundary - easy"] if diff else [])))
    flags = summary.get("flags") or []
    tables.append(Table(f"Unimodal accuracy drops of more than {100 * summary.get('accuracy_drop', 0.02):.0f} points",
                        [(f, "flagged") for f in flags] or [("none", "")]))
    return tables


def lines(summary: Mapping[str, Any]) -> list[str]:
    """Per selection the ambiguous-region target-following before -> after,
    then boundary minus easy, then the flags."""
    out = []
    for s, part in (summary.get("by_selection") or {}).items():
        m = part["target_following_ambiguous"]
        out.append(f"{s:8s} target-following (ambiguous) {_num(m['before'])} -> {_ci(m['after'])}; "
                   f"overall {_num(part['target_following']['before'])} -> {_ci(part['target_following']['after'])}")
    diff = summary.get("boundary_minus_easy")
    if diff:
        out.append(f"boundary - easy: ambiguous {_ci(diff['target_following_ambiguous'])}, "
                   f"overall {_ci(diff['target_following'])}")
    out += [f"flag: {f}" for f in summary.get("flags") or []]
    return out


study("finetune", "mechmod fine-tuning towards {target}: {model}", headline=headline, lines=lines)


def _before_after(summary: Mapping[str, Any], metrics: tuple[str, ...], title: str, y: str) -> go.Figure:
    """One panel per metric: the value before, and after each selection
    (bar: mean over seeds with its interval; dots: the seeds)."""
    by = summary.get("by_selection") or {}
    if not by:
        raise LeftOut("no selection was fine-tuned")
    runs = summary.get("runs") or []
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[_NAMES[m] for m in metrics])
    for j, m in enumerate(metrics, start=1):
        before = next(iter(by.values()))[m]["before"]
        xs, ys, lo, hi = ["before"], [before], [0.0], [0.0]
        for s, part in by.items():
            after = part[m]["after"]
            ci = after.get("ci") or [after["estimate"], after["estimate"]]
            xs.append(f"after, {s}")
            ys.append(after["estimate"])
            lo.append(None if after["estimate"] is None else after["estimate"] - ci[0])
            hi.append(None if after["estimate"] is None else ci[1] - after["estimate"])
        fig.add_trace(go.Bar(x=xs, y=ys, marker_color=[PALETTE[6]] + PALETTE[:len(by)], showlegend=False,
                             error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo)), row=1, col=j)
        for i, s in enumerate(by):
            pts = [r["after"][m] for r in runs if r["selection"] == s]
            fig.add_trace(go.Scatter(x=[f"after, {s}"] * len(pts), y=pts, mode="markers", showlegend=False,
                                     marker=dict(color="black", size=7, symbol="circle-open"),
                                     hovertemplate="seed value %{y:.3f}"), row=1, col=j)
    fig.update_layout(title=title, height=380, margin=dict(l=60, r=20, t=70, b=50))
    fig.update_yaxes(title_text=y, col=1)
    return fig


@figure("finetune", "target_following", title="Target-following before and after fine-tuning",
        caption="Held-out conflict cases. Ambiguous region = within the radius of the balance point of the model before "
                "fine-tuning, the same cases after. Bars: mean over seeds, 95% bootstrap interval over seeds and cases; "
                "circles: single seeds.")
def target_following(summary: Mapping[str, Any]) -> go.Figure:
    return _before_after(summary, ("target_following", "target_following_ambiguous"),
                         "Share of decided conflicts that follow the target modality", "rate")


@figure("finetune", "oscillations", title="Oscillations in the ambiguous region",
        caption="Mean vision <-> text switches of the logit-lens votes over the decoder layers, held-out ambiguous cases.")
def oscillations(summary: Mapping[str, Any]) -> go.Figure:
    return _before_after(summary, ("oscillations_ambiguous",), "Vacillation before and after fine-tuning", "switches")


@figure("finetune", "unimodal_accuracy", title="Unimodal accuracies",
        caption="Vision-only and text-only accuracy on the held-out conflict cases' unimodal prompts; a fall of more "
                "than {accuracy_drop} is flagged in the headline.")
def unimodal_accuracy(summary: Mapping[str, Any]) -> go.Figure:
    return _before_after(summary, ("accuracy_vision", "accuracy_text"), "Does fine-tuning cost unimodal skill?",
                         "accuracy")


@figure("finetune", "balance_points", title="Balance point per fine-tuned model",
        caption="Each model's balance point on the held-out cases, of its own dHrel, with its 95% bootstrap interval; "
                "missing where the following curve does not cross 0.5 (e.g. every case follows the target).")
def balance_points(summary: Mapping[str, Any]) -> go.Figure:
    before = summary.get("before") or {}
    models = [("before", before)] + [(f"{r['selection']}-seed{r['seed']}", r["after"]) for r in summary.get("runs") or []]
    fig = go.Figure()
    for i, (name, m) in enumerate(models):
        est, ci = m.get("balance_point"), m.get("balance_ci")
        if est is None:
            continue
        err = dict(type="data", symmetric=False, array=[ci[1] - est], arrayminus=[est - ci[0]]) if ci else None
        fig.add_trace(go.Scatter(x=[name], y=[est], mode="markers", error_y=err, name=name, showlegend=False,
                                 marker=dict(size=10, color=PALETTE[0 if name.startswith("boundary") else
                                                                     1 if name.startswith("easy") else 6])))
    if not fig.data:
        raise LeftOut("no model has a balance point on the held-out cases")
    return layout(fig, "Balance point (dHrel) before and after", "model", "balance point")


@figure("finetune", "training_loss", title="Training loss",
        caption="Mean -log P(target label) of each step's batch, per selection and seed.")
def training_loss(summary: Mapping[str, Any]) -> go.Figure:
    runs = summary.get("runs") or []
    if not runs:
        raise LeftOut("no fine-tuning ran")
    fig = go.Figure()
    sels = list(dict.fromkeys(r["selection"] for r in runs))
    for r in runs:
        fig.add_trace(go.Scatter(y=r["loss"], mode="lines", name=f"{r['selection']} seed {r['seed']}",
                                 line=dict(color=PALETTE[sels.index(r["selection"]) % len(PALETTE)])))
    return layout(fig, "Fine-tuning loss", "step", "loss")
