"""The figure registry of mechmod.report: every registered figure renders
from a real summary of its study, a figure whose input is missing is left
out with a stated reason (and the page says so), and every study's outputs
go through one writer and one renderer."""

from __future__ import annotations

import json
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io
import pytest

from mechmod import report
from mechmod.dynamics import count_oscillations_batch, counted_votes
from mechmod.errors import MechmodError
from mechmod.report.html import Page
from mechmod.report.registry import Figure, LeftOut, Panel

DATA = Path(__file__).parent / "data" / "report"


def simulated_results(n_images: int = 42, seed: int = 0) -> pd.DataFrame:
    """A results table with every column a run report draws on: conflict
    cases with a known balance point (-0.3), both controls, per-layer logit
    differences and oscillations."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        dv, h_v = i % 14, 0.1 + 0.12 * (i % 14) + rng.uniform(0, 0.1)
        for dt in range(3):
            for control in ("none", "text_irrelevant", "image_irrelevant"):
                h_t = 0.05 + 0.6 * dt + rng.uniform(0, 0.3)
                dh = 2 * (h_t - h_v) / (h_t + h_v)
                text = rng.random() < 1 / (1 + np.exp(4 * (dh + 0.3)))
                final = (1.5 if text else -1.5) + rng.normal(0, 0.3)
                rows.append(dict(
                    case_id=f"c{i:03d}-{dt}-{control}", group_id=f"g{i // 14}", image_id=f"img{i:03d}", dv=dv, dt=dt,
                    control=control, answer_vision="red", answer_text="blue", y_v="red", y_t="blue",
                    y_m="blue" if text else "red", h_v=h_v, h_t=h_t, h_m=0.4, dh_rel=dh,
                    follow="text" if text else "vision", status="ok",
                    oscillations=int(rng.poisson(1.5 if abs(dh + 0.3) < 0.5 else 0.5)),
                    layer_logit_diff=list(np.linspace(0, final, 5) + rng.normal(0, 0.2, 5)),
                    attn_image=list(rng.uniform(0, 0.5, 4)), attn_description=list(rng.uniform(0, 0.3, 4)),
                    attn_question=list(rng.uniform(0, 0.2, 4)),
                ))
    table = pd.DataFrame(rows)
    table["layer_votes"] = table["layer_logit_diff"].map(  # what a lens would read from these differences
        lambda d: ["text" if x > 0.3 else "vision" if x < -0.3 else "other" for x in d])
    table["oscillations"] = count_oscillations_batch(counted_votes(table["layer_votes"]))
    return table


@pytest.fixture(scope="module")
def run_study():
    from mechmod.summary import summarize

    summary, results = summarize(simulated_results(), model="simulated")
    return summary, results


@pytest.fixture(scope="module")
def real(run_study, tmp_path_factory):
    """(summary, tables) of every study: the run summarized from a simulated
    table, the lens's fidelity dict, two simulated runs compared, and the
    summaries `mechmod patch` and `mechmod steer` wrote for the organism."""
    from mechmod.compare import compare_runs
    from mechmod.lenses import LensFidelity
    from tests.test_compare import simulated_run

    root = tmp_path_factory.mktemp("registry")
    runs = [simulated_run(root / "a", -0.5, seed=1), simulated_run(root / "b", 0.4, seed=2)]
    summary, results = run_study
    fid = LensFidelity(np.array([3.0, 2.0, 0.0]), np.array([1.0, 0.5, 0.0]), n_examples=10)
    return {
        "run": (summary, {"results": results}),
        "lens": ({"heldout": fid.to_dict()}, None),
        "compare": (compare_runs(runs, n_boot=50), None),
        "patch": (json.loads((DATA / "patch_summary.json").read_text()), None),
        "steer": (json.loads((DATA / "steer_summary.json").read_text()), None),
        "attribution": (json.loads((DATA / "attribution_summary.json").read_text()), None),
        "flow": (json.loads((DATA / "flow_summary.json").read_text()), None),
        "scale_heads": (json.loads((DATA / "scale_heads_summary.json").read_text()), None),
        "finetune": (json.loads((DATA / "finetune_summary.json").read_text()), None),
        "probes": (json.loads((DATA / "probes_summary.json").read_text()), None),
    }


REGISTERED = [(s, f.name) for s in report.studies() for f in report.figures(s)]


def test_registry_lists_the_studies(real):
    assert {"run", "lens", "patch", "steer", "compare"} <= set(report.studies())
    assert set(report.studies()) == set(real), "a registered study without a real summary in this test"
    for s in report.studies():
        figs = report.figures(s)
        assert figs and all(f.title and f.study == s for f in figs)
        assert len({f.name for f in figs}) == len(figs)
    assert [f.name for f in report.figures("run")][:4] == ["entropy_by_tier", "following_rates", "dh_rel_histogram",
                                                           "following_curve"]


@pytest.mark.parametrize("study,name", REGISTERED)
def test_every_registered_figure_renders_from_a_real_summary(real, study, name):
    summary, tables = real[study]
    panels = report.panels(study, summary, tables, names=[name])
    assert panels
    for p in panels:
        assert p.left_out == "" and isinstance(p.plot, go.Figure), p.left_out
        assert len(p.plot.data) >= 1 and p.heading


def test_lens_fidelity_figure_draws_both_lenses(real):
    (panel,) = report.panels("lens", *real["lens"])
    assert [t.name for t in panel.plot.data] == ["logit lens", "tuned lens"]
    assert list(panel.plot.data[1].y) == [1.0, 0.5, 0.0]


def test_a_missing_input_is_left_out_with_its_reason(run_study):
    summary, results = run_study
    partial = {k: v for k, v in summary.items() if k not in ("oscillations", "case_study")}
    partial["curve"] = {"p_text": []}  # an older summary: a field inside the curve is gone
    by_name = {p.figure.name: p for p in report.panels("run", partial)}
    assert by_name["oscillations"].plot is None and "'oscillations'" in by_name["oscillations"].left_out
    assert "no oscillations column" in by_name["oscillations"].left_out
    assert by_name["dh_rel_histogram"].left_out == "no results table given"
    assert by_name["following_curve"].left_out == "missing input 'centers'"
    assert by_name["entropy_by_tier"].plot is not None

    html = unescape(report.page("run", partial).render())
    assert "left out: Oscillations by region and control (Fig. 5) — the summary has no 'oscillations'" in html
    assert "left out: Case study: one image, three descriptions (Fig. 6b) —" in html
    assert html.count('class="figure"') == sum(p.plot is not None for p in by_name.values())


def test_a_figure_raising_left_out_and_an_empty_family():
    def no_pairs(summary):
        raise LeftOut("no pair in any direction")

    fig = Figure("demo", "x", "A title", "", no_pairs)
    (panel,) = fig.panels({})
    assert panel.plot is None and panel.left_out == "no pair in any direction" and panel.heading == "A title"
    family = Figure("demo", "per_layer", "Per layer", "", lambda s: {}, heading="Layer {key}")
    assert family.panels({})[0].left_out == "nothing to draw"
    family = Figure("demo", "per_layer", "Per layer", "at {radius}", lambda s: {"3": go.Figure(), "7": go.Figure()},
                    heading="Layer {key}")
    assert [(p.heading, p.caption) for p in family.panels({"radius": 0.5})] == [("Layer 3", "at 0.5"), ("Layer 7", "at 0.5")]


def test_unknown_names_are_refused(real):
    with pytest.raises(MechmodError, match="no figure"):
        report.panels("run", real["run"][0], names=["nope"])
    with pytest.raises(MechmodError, match="registered"):
        report.page("finetune-not-registered", {})


def test_write_study_writes_json_parquet_and_the_page(real, tmp_path):
    summary, _ = real["patch"]
    layers = pd.DataFrame({"layer": [0, 1], "flipped": [True, False]})
    path = report.write_study(tmp_path, "patch", summary, {"layers": layers})
    assert path == tmp_path / "patch_report.html"
    assert json.loads((tmp_path / "patch_summary.json").read_text()) == summary
    assert pd.read_parquet(tmp_path / "patch_layers.parquet").equals(layers)
    html = path.read_text()
    assert "<script src=" not in html and "Plotly" in html  # plotly.js embedded, no CDN
    assert "<title>mechmod patching: organism</title>" in html and "<h2>Headline numbers</h2>" in html
    ids = [f.id for f in report.figures("patch")]
    assert all(f'data-figure="{i}"' in html for i in ids) and "left-out" not in html.split("</style>", 1)[1]
    assert report.lines("patch", summary)[0].startswith("V->C  resid")


def test_every_figure_gets_the_reports_white_template():
    """The renderer stamps plotly's white template on each figure's JSON (the
    figures themselves carry none, which keeps building them cheap)."""
    page = Page("demo")
    for title in ("a", "b"):
        fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
        fig.update_layout(title=title)
        page.add_panel(Panel(Figure("demo", title, title, "", lambda s: fig), title, fig))
    html = page.render()
    white = json.dumps(plotly.io.templates["plotly_white"].layout.plot_bgcolor)
    assert html.count(f'"plot_bgcolor":{white}') == 2 and html.count('"text":"a"') == 1
