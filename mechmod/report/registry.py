"""The figure registry: every study declares its report here.

A study (``run``, ``lens``, ``patch``, ``steer``, ``compare``, ...) registers

- its page with :func:`study`: the page title and the tables around the
  figures (headline numbers on top, notes below), and the console lines of
  its command;
- each figure with :func:`figure`: a function from the study's summary dict
  (plus one of its tables where a figure needs rows, e.g. the run's results)
  to a plotly figure, with a name, the section title and the caption.

:func:`panels` renders a study's figures in registration order. A figure
whose input is missing (a field the summary lacks, a table not given) is
not drawn: its :class:`Panel` carries the reason, which the page shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Sized

import plotly.graph_objects as go

from mechmod.errors import MechmodError


class LeftOut(Exception):
    """Raised by a figure function whose input is missing; the message is
    the reason the report shows."""


@dataclass(frozen=True)
class Figure:
    """One registered figure.

    ``render(summary)`` (or ``render(summary, table)`` when ``table`` names
    one) returns a plotly figure, or for a family (``heading`` set) a dict
    ``{key: figure}`` drawn as one section per key under
    ``heading.format(key=key)``. ``needs`` maps summary fields that must be
    present and non-empty to why one may be missing. ``caption`` may name
    summary fields in braces (``{radius}``)."""

    study: str
    name: str
    title: str
    caption: str
    render: Callable[..., Any]
    needs: Mapping[str, str] = field(default_factory=dict)
    table: str | None = None
    heading: str | None = None

    @property
    def id(self) -> str:
        return f"{self.study}/{self.name}"

    def panels(self, summary: Mapping[str, Any], tables: Mapping[str, Any] | None = None) -> list[Panel]:
        """The drawn sections of this figure, or one left-out panel with the reason."""
        try:
            drawn = self._draw(summary, tables or {})
        except LeftOut as why:
            return [Panel(self, self.title, None, left_out=str(why))]
        caption = fill(self.caption, summary)
        if self.heading is None:
            return [Panel(self, self.title, drawn, caption)]
        if not drawn:
            return [Panel(self, self.title, None, left_out="nothing to draw")]
        return [Panel(self, self.heading.format(key=key), fig, caption) for key, fig in drawn.items()]

    def _draw(self, summary: Mapping[str, Any], tables: Mapping[str, Any]):
        for name, why in self.needs.items():
            value = summary.get(name)
            if value is None or (isinstance(value, Sized) and not len(value)):
                raise LeftOut(f"the summary has no {name!r} ({why})")
        args = [summary]
        if self.table is not None:
            if tables.get(self.table) is None:
                raise LeftOut(f"no {self.table} table given")
            args.append(tables[self.table])
        try:
            return self.render(*args)
        except KeyError as err:  # a field or column an older or partial summary lacks
            raise LeftOut(f"missing input {err.args[0]!r}") from None


@dataclass(frozen=True)
class Panel:
    """One section of a page: a drawn figure, or a left-out one (``plot`` None)."""

    figure: Figure
    heading: str
    plot: go.Figure | None
    caption: str = ""
    left_out: str = ""


@dataclass(frozen=True)
class Table:
    """A table section. Without ``header`` each row is (name, value) and
    the name is a row heading; with it, rows are plain cells."""

    heading: str
    rows: Sequence[Sequence[Any]]
    header: Sequence[str] | None = None
    caption: str = ""


@dataclass(frozen=True)
class Study:
    """A study's page: ``title`` may name summary fields in braces; each hook
    takes the summary."""

    name: str
    title: str
    headline: Callable[[Mapping[str, Any]], list[Table]] | None = None
    footer: Callable[[Mapping[str, Any]], list[Table]] | None = None
    lines: Callable[[Mapping[str, Any]], list[str]] | None = None


_STUDIES: dict[str, Study] = {}
_FIGURES: dict[str, dict[str, Figure]] = {}


def study(name: str, title: str, *, headline=None, footer=None, lines=None) -> Study:
    """Register a study's page (once per study)."""
    if name in _STUDIES:
        raise ValueError(f"study {name!r} is registered twice")
    _STUDIES[name] = Study(name, title, headline, footer, lines)
    _FIGURES.setdefault(name, {})
    return _STUDIES[name]


def figure(study: str, name: str, *, title: str, caption: str = "", needs: Mapping[str, str] | None = None,
           table: str | None = None, heading: str | None = None):
    """Decorator: register ``fn`` as figure ``name`` of ``study``."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        figs = _FIGURES.setdefault(study, {})
        if name in figs:
            raise ValueError(f"figure {study}/{name} is registered twice")
        figs[name] = Figure(study, name, title, caption, fn, dict(needs or {}), table, heading)
        return fn

    return register


def studies() -> list[str]:
    """Every registered study, in registration order."""
    return list(_FIGURES)


def get_study(name: str) -> Study:
    if name not in _STUDIES:
        raise MechmodError(f"no report for study {name!r}; registered: {sorted(_STUDIES)}")
    return _STUDIES[name]


def figures(study: str) -> list[Figure]:
    """The figures of ``study``, in registration order (the page's order)."""
    if study not in _FIGURES:
        raise MechmodError(f"no figures for study {study!r}; registered: {studies()}")
    return list(_FIGURES[study].values())


def panels(study: str, summary: Mapping[str, Any], tables: Mapping[str, Any] | None = None,
           names: Sequence[str] | None = None) -> list[Panel]:
    """The sections of ``study``'s figures (all, or those named, in that order)."""
    figs = {f.name: f for f in figures(study)}
    unknown = [n for n in names or () if n not in figs]
    if unknown:
        raise MechmodError(f"study {study!r} has no figure {unknown}; it has {list(figs)}")
    return [p for n in (names or figs) for p in figs[n].panels(summary, tables)]


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return "n/a"


def fill(template: str, summary: Mapping[str, Any]) -> str:
    """``template`` with ``{field}`` replaced by the summary's value ('n/a' when absent)."""
    return template.format_map(_Fields(summary))
