"""A self-contained HTML report: plotly's JavaScript is embedded once, so
the page reads offline with no CDN. ``study_report`` assembles the sections
a run has; each section is a title, a figure and a caption."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from mechmod import _io, plots

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f5f5f5} .caption{color:#555;font-size:.92em} .figure{min-height:380px}
"""


@dataclass
class Report:
    """An ordered list of HTML sections rendered into one page."""

    title: str
    sections: list[str] = field(default_factory=list)

    def add_table(self, heading: str, rows: list[tuple[str, Any]]) -> None:
        body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
        self.sections.append(f"<h2>{html.escape(heading)}</h2><table>{body}</table>")

    def add_figure(self, heading: str, fig: go.Figure, caption: str = "") -> None:
        div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
        cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
        self.sections.append(f'<h2>{html.escape(heading)}</h2><div class="figure">{div}</div>{cap}')

    def render(self) -> str:
        js = plotly.offline.get_plotlyjs()
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style>"
            f"<script type='text/javascript'>{js}</script></head><body>"
            f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.sections) + "</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        _io.write_text(path, self.render())
        return Path(path)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def headline_rows(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    bp = summary.get("balance") or {}
    return [
        ("model", summary.get("model")),
        ("cases (ok / failed)", f"{summary.get('n_cases')} / {summary.get('n_failed', 0)}"),
        ("TFR (all)", summary.get("tfr")),
        ("VFR (all)", summary.get("vfr")),
        ("TFR (both unimodal answers correct)", summary.get("tfr_both_correct")),
        ("balance point (logistic fit)", summary.get("balance_point")),
        ("balance point 95% bootstrap CI", summary.get("balance_ci")),
        ("balance point (binned-curve crossing)", bp.get("interpolated")),
        ("balance status", bp.get("status")),
    ]


def study_report(summary: Mapping[str, Any], results: pd.DataFrame, extra_figures=None) -> Report:
    """The behavioural study's report (paper Figs. 2-4) from a summary and
    its results table."""
    rep = Report(f"mechmod study: {summary.get('model')}")
    rep.add_table("Headline numbers", headline_rows(summary))
    rep.add_figure(
        "Unimodal uncertainty by tier (Fig. 2)",
        plots.entropy_by_tier_figure(summary),
        "Mean answer entropy over the full vocabulary (nats) with 95% bootstrap intervals.",
    )
    rep.add_figure("Macro following ratios (Fig. 3a)", plots.following_rates_figure(summary))
    ok = results[results["status"] == "ok"] if "status" in results else results
    main = ok[ok["control"] == "none"] if "control" in ok else ok
    rep.add_figure(
        "Distribution of relative uncertainty (Fig. 3b)",
        plots.dh_rel_histogram_figure(main["dh_rel"].to_numpy(), main["follow"].to_numpy()),
    )
    curves = {"all": summary["curve"]}
    balances = {"all": summary.get("balance")}
    split = summary.get("entropy_split") or {}
    for half in ("low", "high"):
        if split.get(half) and split[half].get("curve"):
            curves[f"{half} total entropy"] = split[half]["curve"]
            balances[f"{half} total entropy"] = split[half].get("balance")
    rep.add_figure(
        "Following curve and balance point (Fig. 4)",
        plots.following_curve_figure(curves, balances),
        "P(text-following) among text- or vision-following cases, equal-count bins with Wilson 95% intervals; "
        "diamonds mark logistic-fit balance points with shaded bootstrap intervals; the low/high halves split at the median of H(t)+H(v).",
    )
    if summary.get("oscillations"):
        rep.add_figure("Oscillations by region and control (Fig. 5)", plots.oscillation_figure(summary),
                       f"Layer-to-layer switches between the vision and the text answer under the {summary.get('lens', 'logit')} lens; "
                       f"ambiguous = |dHrel - balance point| <= {summary.get('radius')}.")
    if summary.get("logit_diff_heatmap"):
        rep.add_figure("Logit difference by layer and dHrel (Fig. 6a)",
                       plots.logit_diff_heatmap_figure(summary["logit_diff_heatmap"]))
    if summary.get("case_study"):
        rep.add_figure("Case study: one image, three descriptions (Fig. 6b)", plots.case_study_figure(summary["case_study"]))
    if summary.get("attention_by_layer"):
        rep.add_figure("Attention of the answer position by layer", plots.attention_by_layer_figure(summary["attention_by_layer"]),
                       "Mean over conflict cases and heads of the attention weight the answer position puts on image, "
                       "description and question tokens (the rest goes to the chat template).")
    for heading, fig in extra_figures or []:
        rep.add_figure(heading, fig)
    return rep
