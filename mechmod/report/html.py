"""The one HTML renderer of every report: a self-contained page (plotly's
JavaScript embedded once, so it reads offline with no CDN) made of tables
and figure sections. Each figure section is an ``<h2>`` heading, a
``<div class="figure" data-figure="STUDY/NAME">`` and its caption; a
figure left out is one line saying which and why. The renderer gives every
figure the report's look (plotly's white template): stamped here, once, on
the figure's JSON, because plotly validates a template set on a figure
object again each time (about 20 ms a figure)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import plotly.io
import plotly.offline

from mechmod import _io
from mechmod.report.registry import Panel, Table

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f5f5f5} .caption{color:#555;font-size:.92em} .figure{min-height:380px}
.left-out{color:#8a5a00;font-size:.92em;margin-top:1.5em}
"""


@dataclass(frozen=True)
class Link:
    """A table cell linking to another file (e.g. a study's report from an index page)."""

    text: str
    href: str


@dataclass
class Page:
    """An ordered list of HTML sections rendered into one page."""

    title: str
    sections: list[str] = field(default_factory=list)

    def add_table(self, table: Table) -> None:
        head = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in table.header) + "</tr>" if table.header else ""
        if table.header:
            body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in table.rows)
        else:
            body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in table.rows)
        self.sections.append(f"<h2>{_esc(table.heading)}</h2><table>{head}{body}</table>{_caption(table.caption)}")

    def add_panel(self, panel: Panel) -> None:
        if panel.plot is None:
            self.sections.append(f'<p class="left-out">left out: {_esc(panel.figure.title)} — {_esc(panel.left_out)}</p>')
            return
        fig = panel.plot.to_plotly_json()
        fig["layout"]["template"] = _template()
        div = plotly.io.to_html(fig, validate=False, full_html=False, include_plotlyjs=False,
                                config={"displaylogo": False, "responsive": True})
        self.sections.append(f'<h2>{_esc(panel.heading)}</h2><div class="figure" data-figure="{_esc(panel.figure.id)}">'
                             f"{div}</div>{_caption(panel.caption)}")

    def render(self) -> str:
        js = plotly.offline.get_plotlyjs()
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{_esc(self.title)}</title><style>{_STYLE}</style>"
            f"<script type='text/javascript'>{js}</script></head><body>"
            f"<h1>{_esc(self.title)}</h1>" + "\n".join(self.sections) + "</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        _io.write_text(path, self.render())
        return Path(path)


@cache
def _template() -> dict:
    """The reports' plotly template, as JSON."""
    return plotly.io.templates["plotly_white"].to_plotly_json()


def fmt(v: Any) -> str:
    """A table cell: floats to 3 decimals, None as n/a, lists element-wise."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)


def _esc(v: Any) -> str:
    if isinstance(v, Link):
        return f'<a href="{html.escape(v.href)}">{html.escape(v.text)}</a>'
    return html.escape(fmt(v))


def _caption(text: str) -> str:
    return f'<p class="caption">{html.escape(text)}</p>' if text else ""
