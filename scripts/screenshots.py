"""PNG screenshots of every figure of a report, taken in headless Debian
chromium driven by playwright (the README gallery).

    python scripts/screenshots.py RUN_DIR [--out docs/gallery]
    python scripts/screenshots.py --list        # the registered figures

The figures to shoot come from the figure registry of ``mechmod.report``:
each drawn figure's section carries its registered id (``study/name``),
and a registered figure the report left out is named with its reason.

Needs ``apt-get install chromium`` (or --chromium PATH) and ``pip install
playwright`` (no browser download: the system chromium is used). The same
helpers drive tests/test_report_browser.py: open a page, collect console
errors, check that every plotly figure rendered.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mechmod.report import figures, studies

MAX_PNG_BYTES = 200_000
VIEWPORT = {"width": 1000, "height": 900}

# per plotly figure div: its section heading, how many traces plotly holds,
# how many points they carry, the svg layers drawn and the visible marks
FIGURES_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => {
  const fig = d.closest('.figure');
  const h2 = fig && fig.previousElementSibling;
  // every subplot's plot area (make_subplots draws one overplot per subplot)
  const marks = Array.from(d.querySelectorAll('.cartesianlayer .overplot')).reduce((n, plot) =>
      n + Array.from(plot.querySelectorAll('path, image, rect')).filter(e => {
          const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length, 0);
  const pts = (d.calcdata || []).reduce((n, cd) => n + cd.filter(p => p && p.x !== undefined &&
      p.x !== null && !Number.isNaN(p.x)).length, 0);
  const r = d.getBoundingClientRect();
  return {heading: h2 ? h2.textContent : '', figure: fig ? fig.dataset.figure : '',
          traces: (d.data || []).length, points: pts,
          svgs: d.querySelectorAll('svg.main-svg').length,
          trace_groups: d.querySelectorAll('g.trace, g.hm').length, marks: marks,
          width: r.width, height: r.height};
})"""


def find_chromium(explicit: str | None = None) -> str | None:
    """The chromium executable: ``explicit``, $MECHMOD_CHROMIUM, or Debian's."""
    for cand in (explicit, os.environ.get("MECHMOD_CHROMIUM"), "/usr/bin/chromium",
                 shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@contextmanager
def browser(chromium: str | None = None) -> Iterator:
    """A headless chromium (playwright's sync API) on the system executable."""
    from playwright.sync_api import sync_playwright

    exe = find_chromium(chromium)
    if exe is None:
        raise FileNotFoundError("no chromium executable: apt-get install chromium, or pass --chromium PATH")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def open_page(b, html: Path, timeout_ms: int = 60_000):
    """(page, errors): ``html`` loaded and every plotly figure drawn;
    ``errors`` collects console errors and uncaught page errors, live."""
    page = b.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.goto(Path(html).resolve().as_uri(), wait_until="load", timeout=timeout_ms)
    page.wait_for_function("""() => Array.from(document.querySelectorAll('.plotly-graph-div'))
                               .every(d => d._fullLayout && d.querySelector('svg.main-svg'))""", timeout=timeout_ms)
    return page, errors


def figure_status(page) -> list[dict]:
    return page.evaluate(FIGURES_JS)


def left_out(page) -> list[str]:
    """The report's 'left out: TITLE — REASON' lines."""
    return page.eval_on_selector_all("p.left-out", "els => els.map(e => e.textContent)")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "figure"


def screenshot_figures(page, out_dir: Path) -> list[Path]:
    """One PNG per drawn figure, in the registry's order of the studies on
    the page: NN-heading.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = page.eval_on_selector_all("div.figure", "els => els.map(e => e.dataset.figure)")
    on_page = list(dict.fromkeys(i.split("/")[0] for i in ids))
    divs = [d for s in on_page for f in figures(s) for d in page.query_selector_all(f'div.figure[data-figure="{f.id}"]')]
    if len(divs) != len(ids):
        raise ValueError(f"figures on the page that no study registers: {sorted(set(ids) - {f.id for s in on_page for f in figures(s)})}")
    paths = []
    for i, fig in enumerate(divs, start=1):
        heading = fig.evaluate("e => e.previousElementSibling ? e.previousElementSibling.textContent : ''")
        fig.scroll_into_view_if_needed()
        path = out_dir / f"{i:02d}-{slug(heading)}.png"
        fig.screenshot(path=str(path), animations="disabled")
        paths.append(path)
    return paths


def catalogue() -> list[str]:
    """One line per registered figure: study/name, title and caption."""
    return [f"{f.id}: {f.title}" + (f" — {f.caption}" if f.caption else "") for s in studies() for f in figures(s)]


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, nargs="?", help="a run directory holding report.html (mechmod run --out RUN)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "gallery")
    ap.add_argument("--report", default="report.html", help="the page inside RUN_DIR to shoot")
    ap.add_argument("--chromium", default=None, help="chromium executable (default: /usr/bin/chromium)")
    ap.add_argument("--list", action="store_true", help="print the registered figures and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(catalogue()))
        return []
    if args.run_dir is None:
        ap.error("give RUN_DIR (or --list)")
    html = args.run_dir / args.report
    if not html.is_file():
        sys.exit(f"{html}: not found; run `mechmod run --out {args.run_dir}` (or `mechmod summarize`) first")
    with browser(args.chromium) as b:
        page, errors = open_page(b, html)
        empty = [f["heading"] for f in figure_status(page) if f["marks"] == 0]
        missing = left_out(page)
        for old in args.out.glob("[0-9][0-9]-*.png"):
            old.unlink()
        paths = screenshot_figures(page, args.out)
    for p in paths:
        size = p.stat().st_size
        print(f"{p}  {size / 1000:.0f} KB" + ("  (over 200 KB)" if size > MAX_PNG_BYTES else ""))
    for e in errors:
        print(f"warning: {e}", file=sys.stderr)
    for h in empty:
        print(f"warning: figure {h!r} drew nothing", file=sys.stderr)
    for line in missing:
        print(f"warning: {line}", file=sys.stderr)
    return paths


if __name__ == "__main__":
    main()
