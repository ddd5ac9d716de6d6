"""Figures and HTML reports of every study.

Each study registers its page and its figures in its own module here
(``run``, ``lens``, ``patch``, ``steer``, ``compare``; see
:mod:`mechmod.report.registry`); one renderer (:mod:`mechmod.report.html`)
draws every page, self-contained. A study's command writes its outputs
with :func:`write_study` (``mechmod run`` with :func:`write_run_report`,
its files being the run directory's).

Adding a figure: one decorated function in the study's module. Adding a
study: one module here, imported below.
"""

# importing a study's module registers its page and figures; this order is the registry's
from mechmod.report import run, lens, patch, steer, compare, attribution, flow, probes, finetune  # noqa: F401, I001
from mechmod.report.html import Page
from mechmod.report.registry import Figure, LeftOut, Panel, Table, figure, figures, panels, studies, study
from mechmod.report.write import lines, page, run_page, write_run_report, write_study

__all__ = ["Figure", "LeftOut", "Page", "Panel", "Table", "figure", "figures", "lines", "page", "panels", "run_page",
           "studies", "study", "write_run_report", "write_study"]
