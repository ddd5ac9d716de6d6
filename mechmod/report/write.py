"""Pages and output files of every study, through the registry: a study's
page is its headline tables, its registered figures (and those of the
studies it draws on, e.g. the lens a run decoded with), then its footer
tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from mechmod import _io
from mechmod.compare import load_run
from mechmod.report.html import Page
from mechmod.report.lens import fidelity
from mechmod.report.registry import fill, get_study, panels
from mechmod.rundir import RunDir


def page(study: str, summary: Mapping[str, Any], tables: Mapping[str, pd.DataFrame] | None = None, *,
         also: Sequence[tuple[str, Mapping[str, Any]]] = (), title: str | None = None) -> Page:
    """The HTML page of ``study``; ``also``: (study, summary) pairs whose
    figures follow the study's own."""
    spec = get_study(study)
    out = Page(title or fill(spec.title, summary))
    for table in spec.headline(summary) if spec.headline else []:
        out.add_table(table)
    for name, part in [(study, summary), *also]:
        for panel in panels(name, part, tables if name == study else None):
            out.add_panel(panel)
    for table in spec.footer(summary) if spec.footer else []:
        out.add_table(table)
    return out


def lines(study: str, summary: Mapping[str, Any]) -> list[str]:
    """The console lines of ``study``'s command (none where it registers none)."""
    spec = get_study(study)
    return spec.lines(summary) if spec.lines else []


def write_study(out_dir: str | Path, study: str, summary: Mapping[str, Any],
                tables: Mapping[str, pd.DataFrame] | None = None) -> Path:
    """OUT/STUDY_NAME.parquet for each table, OUT/STUDY_summary.json and
    OUT/STUDY_report.html (each written atomically); returns the report's path.
    ``summary`` must already be strict JSON (:func:`mechmod._io.jsonable`)."""
    out = Path(out_dir)
    for name, table in (tables or {}).items():
        _io.write_parquet(out / f"{study}_{name}.parquet", table)
    _io.write_json(out / f"{study}_summary.json", summary)
    return page(study, summary, tables).write(out / f"{study}_report.html")


def run_page(summary: Mapping[str, Any], results: pd.DataFrame, lens_path: str | None = None) -> Page:
    """A run's page from its summary and results, with the tuned lens's
    fidelity when the run decoded with one."""
    also = [("lens", fidelity(lens_path))] if lens_path else []
    return page("run", summary, {"results": results}, also=also)


def write_run_report(run_dir: str | Path) -> Path:
    """RUN/report.html from RUN/summary.json and RUN/results.parquet."""
    run = RunDir(run_dir)
    summary, results = load_run(run.path)
    return run_page(summary, results, run.config().get("lens_path")).write(run.report)
