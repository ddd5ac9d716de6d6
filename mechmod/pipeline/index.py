"""DIR/index.html: one page for the whole study. A table of the steps
(status, time taken, headline numbers, a link to each report), then each
finished step's figures as the report registry lists them, each linking to
the report that draws it. Drawn by the report package's one renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mechmod import _io
from mechmod.pipeline.steps import STEPS, Step
from mechmod.report.html import Link, Page, fmt
from mechmod.report.registry import Table, figures


def _run(s: Mapping[str, Any]) -> list[tuple[str, Any]]:
    ci = s.get("balance_ci") or [None, None]
    return [("cases", s.get("n_cases")), ("TFR", s.get("tfr")),
            ("balance point", f"{fmt(s.get('balance_point'))} [{fmt(ci[0])}, {fmt(ci[1])}]")]


def _lens(s: Mapping[str, Any]) -> list[tuple[str, Any]]:
    held = s.get("heldout") or {}
    logit, tuned = held.get("kl_logit") or [], held.get("kl_tuned") or []
    better = sum(t < lg for t, lg in zip(tuned[:-1], logit[:-1]))
    return [("held-out mean KL, logit lens", _mean(logit)), ("tuned lens", _mean(tuned)),
            ("layers where the tuned lens is better", f"{better} of {max(len(logit) - 1, 0)}")]


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _patch(s: Mapping[str, Any]) -> list[tuple[str, Any]]:
    firsts = ", ".join(f"{c['direction']} {c['positions']} {c['first_50']}" for c in s.get("curves") or []
                       if c.get("first_50") is not None)
    return [("clean TFR", (s.get("following") or {}).get("tfr")),
            ("first layer with 50% flips", firsts or "none reaches 50%")]


def _steer(s: Mapping[str, Any]) -> list[tuple[str, Any]]:
    shifts = {layer: v["balance_per_alpha"] for layer, v in (s.get("layers") or {}).items()
              if v.get("balance_per_alpha") is not None}
    if not shifts:
        return [("balance shift per unit alpha", "n/a (no layer has a balance point at two alphas)")]
    layer = max(shifts, key=lambda k: abs(shifts[k]))
    return [("largest balance shift per unit alpha", f"layer {layer}: {shifts[layer]:+.3f}")]


def _attribution(s: Mapping[str, Any]) -> list[tuple[str, Any]]:
    top = s.get("top_heads") or {}
    return [(f"top {side}-promoting heads", ", ".join(h["name"] for h in top.get(side) or []) or "none")
            for side in ("text", "vision")]


def _flow(s: Mapping[str, Any]) -> list[tuple[str, Any]]:
    p = s.get("strongest")
    if not p:
        return [("largest LD change", "n/a")]
    return [("largest LD change", f"{p['flow']} in layers [{p['window_start']}, {p['window_end']}): "
                                  f"{fmt(p['delta_logit_diff'])} (flip rate {fmt(p['flip_rate'])})")]


_HEADLINES = {"run": _run, "lens": _lens, "patch": _patch, "steer": _steer, "attribute": _attribution, "flow": _flow}


def headline(step: Step, out: Path) -> list[tuple[str, Any]]:
    """The step's headline numbers, read from its summary file."""
    summary = _io.read_json(out / step.summary, f"re-run the {step.name} step (remove {out} first)", expect=dict)
    return [(k, fmt(v)) for k, v in _HEADLINES[step.name](summary)]


def write_index(out: Path, record: Mapping[str, Any]) -> Path:
    """DIR/index.html from the study record (study.json's content)."""
    page = Page(f"mechmod study: {record['model']}")
    page.add_table(Table("Study", [("model", record["model"]),
                                   ("dataset", f"colour, {record['groups']} groups, seed {record['seed']}: "
                                               f"{record['dataset']}"),
                                   ("directory", str(out.resolve()))]))
    rows = []
    for step in STEPS:
        e = record["steps"][step.name]
        report = Link(f"{step.name}/{step.report}", f"{step.name}/{step.report}") if e["report"] else "none"
        numbers = "; ".join(f"{k}: {v}" for k, v in e.get("headline") or []) or e.get("error") or ""
        rows.append((step.title, e["status"], e.get("seconds"), report, numbers))
    page.add_table(Table("Steps", rows, header=("step", "status", "time (s)", "report", "headline numbers"),
                         caption="skipped: finished by an earlier call (its time is that call's); "
                                 "not run: not asked for with --steps; failed: see the error (study.json)."))
    figs = [(step.title, Link(f.title, f"{step.name}/{step.report}"), f.id) for step in STEPS
            if record["steps"][step.name]["report"] for f in figures(step.study)]
    if figs:
        page.add_table(Table("Figures", figs, header=("step", "figure", "id")))
    return page.write(out / "index.html")
