"""The reports in a real browser: Debian's chromium, headless, driven by
playwright (the helpers of scripts/screenshots.py). Each page loads with no
console error and every plotly figure renders: an svg, traces, and drawn
marks wherever the figure has data.

Needs ``apt-get install -y chromium`` and ``pip install playwright``; skipped
with the reason when either is missing (or chromium cannot start)."""

from __future__ import annotations

import json
import runpy

import pytest

from mechmod.report import figures
from tests.run_helpers import ROOT, color_dataset, run_in_process

shots = runpy.run_path(str(ROOT / "scripts" / "screenshots.py"), run_name="screenshots")

try:
    import playwright.sync_api  # noqa: F401
except ImportError:
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)
if shots["find_chromium"]() is None:
    pytest.skip("no chromium executable (apt-get install -y chromium, or set MECHMOD_CHROMIUM)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    try:
        ctx = shots["browser"]()
        b = ctx.__enter__()
    except Exception as err:  # e.g. missing shared libraries in a bare container
        pytest.skip(f"chromium did not start under playwright: {err}")
    yield b
    ctx.__exit__(None, None, None)


def _render(browser, html):
    page, errors = shots["open_page"](browser, html)
    try:
        return shots["figure_status"](page), errors
    finally:
        page.close()


def _assert_rendered(figs, errors, strict: bool):
    assert not errors, errors
    assert figs, "no plotly figure on the page"
    for f in figs:
        assert f["svgs"] >= 1 and f["traces"] >= 1, f
        assert f["width"] > 100 and f["height"] > 100, f
        if strict or f["points"] > 0:  # data to show: plotly drew the traces and their marks
            assert f["points"] > 0 and f["trace_groups"] >= 1 and f["marks"] > 0, \
                f"figure {f['heading']!r} drew nothing: {f}"


def test_tiny_run_report(browser, tmp_path):
    """A real run (tiny random LLaVA, one colour group): its answers are
    mostly 'other', so figures of decided cases may be empty, never broken."""
    run_in_process(color_dataset(1, (0, 5)), tmp_path / "run")
    figs, errors = _render(browser, tmp_path / "run" / "report.html")
    _assert_rendered(figs, errors, strict=False)
    by = {f["heading"]: f for f in figs}
    assert by["Unimodal uncertainty by tier (Fig. 2)"]["marks"] > 0
    assert by["Logit difference by layer and dHrel (Fig. 6a)"]["marks"] > 0


def simulated_study(run_dir):
    """A run directory with every report section (tests.test_report_registry's
    simulated results) and a tuned lens's fidelity."""
    from mechmod.runner import finalize
    from tests.test_report_registry import simulated_results

    lens = run_dir / "lens"
    lens.mkdir(parents=True)
    (lens / "fidelity.json").write_text(json.dumps({"heldout": {"kl_logit": [2.0, 0.6, 0.3, 0.01, 0.0],
                                                                 "kl_tuned": [1.3, 0.5, 0.2, 0.01, 0.0]}}))
    (run_dir / "run.json").write_text(json.dumps({"model": "simulated", "lens": "tuned", "lens_path": str(lens)}))
    finalize(run_dir, results=simulated_results())
    return run_dir


def test_every_section_renders(browser, tmp_path):
    run = simulated_study(tmp_path / "sim")
    figs, errors = _render(browser, run / "report.html")
    _assert_rendered(figs, errors, strict=True)
    headings = " | ".join(f["heading"] for f in figs)
    for part in ("Fig. 2", "Fig. 3a", "Fig. 3b", "Fig. 4", "Fig. 5", "Fig. 6a", "Fig. 6b", "Attention", "Lens fidelity"):
        assert part in headings, headings
    assert [f["figure"] for f in figs] == [f.id for s in ("run", "lens") for f in figures(s)]  # the registry's order


def test_compare_page_renders(browser, tmp_path):
    from mechmod.compare import compare_runs
    from mechmod.report import page
    from tests.test_compare import simulated_run

    runs = [simulated_run(tmp_path / "a", -0.5, seed=1), simulated_run(tmp_path / "b", 0.4, seed=2)]
    page("compare", compare_runs(runs, n_boot=100)).write(tmp_path / "compare.html")
    figs, errors = _render(browser, tmp_path / "compare.html")
    _assert_rendered(figs, errors, strict=True)
    assert len(figs) == 2


def test_screenshots(browser, tmp_path):
    run = simulated_study(tmp_path / "sim")
    page, errors = shots["open_page"](browser, run / "report.html")
    paths = shots["screenshot_figures"](page, tmp_path / "gallery")
    page.close()
    assert len(paths) == len([f for s in ("run", "lens") for f in figures(s)]) and not errors
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 2_000 < p.stat().st_size <= shots["MAX_PNG_BYTES"]


@pytest.mark.parametrize("study", ["patch", "steer"])
def test_intervention_pages_render(browser, tmp_path, study):
    from mechmod.report import page

    summary = json.loads((ROOT / "tests" / "data" / "report" / f"{study}_summary.json").read_text())
    html = page(study, summary).write(tmp_path / f"{study}_report.html")
    figs, errors = _render(browser, html)
    _assert_rendered(figs, errors, strict=False)
    assert {f["figure"].split("/")[1] for f in figs} == {f.name for f in figures(study)}
