"""`mechmod study` on the organism: the cheap steps end to end, resumed
without redoing anything, a failing step recorded while the others go on,
and an index page linking every finished step's report (the full study
with every step is slow)."""

import dataclasses
import json
import re
import shutil

import pytest

from mechmod.errors import MechmodError
from mechmod.models import load_model
from mechmod.pipeline import STEP_NAMES, StudyOptions, parse_steps, run_pipeline
from mechmod.pipeline import run as pipeline_run
from mechmod.report import figures

CHEAP = "run,attribute"
OPTIONS = StudyOptions(groups=1, n_boot=20, progress=False)


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


@pytest.fixture(scope="module")
def study(tmp_path_factory, organism):
    """A study directory with the run and the attribution finished (the first call's record)."""
    out = tmp_path_factory.mktemp("study") / "s"
    return out, run_pipeline(out, OPTIONS, CHEAP, loader=lambda o: organism, echo=lambda line: None)


def _record(out):
    return json.loads((out / "study.json").read_text())


def _links(out):
    return set(re.findall(r'<a href="([^"]+)">', (out / "index.html").read_text()))


def test_cheap_steps_run_and_the_rest_are_not_run(study):
    out, record = study
    status = {k: v["status"] for k, v in _record(out)["steps"].items()}
    assert status == {"run": "ran", "lens": "not run", "patch": "not run", "steer": "not run", "attribute": "ran",
                      "flow": "not run"}
    assert record["steps"]["run"]["seconds"] > 0
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert dict(record["steps"]["run"]["headline"])["TFR"] == f"{summary['tfr']:.3f}"
    attribution = json.loads((out / "attribute" / "attribution_summary.json").read_text())
    assert attribution["n_cases"] == summary["n_cases"] // 3  # the run's conflict cases (without the two controls)


def test_a_second_call_skips_the_finished_steps(study, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(study[0], out)
    finished = [out / "run" / "summary.json", out / "run" / "results.parquet", out / "attribute" / "attribution.parquet",
                out / "attribute" / "attribution_report.html"]
    mtimes = [p.stat().st_mtime_ns for p in finished]
    loads = []
    record = run_pipeline(out, OPTIONS, CHEAP, loader=lambda o: loads.append(o), echo=lambda line: None)
    assert [p.stat().st_mtime_ns for p in finished] == mtimes
    assert loads == []  # nothing to run: the model is never loaded
    assert {k: v["status"] for k, v in _record(out)["steps"].items() if k in ("run", "attribute")} == \
        {"run": "skipped", "attribute": "skipped"}
    assert record["steps"]["run"]["seconds"] == study[1]["steps"]["run"]["seconds"]  # the time of the call that ran it


def test_a_failing_step_is_recorded_and_the_others_go_on(study, organism, tmp_path, monkeypatch):
    out = tmp_path / "s"
    shutil.copytree(study[0], out)
    shutil.rmtree(out / "attribute")

    def boom(ctx, where):
        raise RuntimeError("the lens step broke")

    steps = tuple(dataclasses.replace(s, run=boom) if s.name == "lens" else s for s in pipeline_run.STEPS)
    monkeypatch.setattr(pipeline_run, "STEPS", steps)
    run_pipeline(out, OPTIONS, "lens,attribute", loader=lambda o: organism, echo=lambda line: None)
    entries = _record(out)["steps"]
    assert entries["lens"]["status"] == "failed" and entries["lens"]["error"] == "RuntimeError: the lens step broke"
    assert entries["attribute"]["status"] == "ran" and (out / "attribute" / "attribution_report.html").is_file()
    assert "lens/lens_report.html" not in _links(out)
    # not asked again: the failure stays on record; the index shows it
    run_pipeline(out, OPTIONS, "run", loader=lambda o: organism, echo=lambda line: None)
    assert _record(out)["steps"]["lens"]["status"] == "failed"
    assert "the lens step broke" in (out / "index.html").read_text()


def test_the_index_links_every_finished_report(study):
    out, record = study
    links = _links(out)
    finished = {v["report"] for v in record["steps"].values() if v["status"] in ("ran", "skipped")}
    assert finished == {"run/report.html", "attribute/attribution_report.html"}
    assert finished <= links and all((out / link).is_file() for link in links)
    html = (out / "index.html").read_text()
    for report, name in (("run/report.html", "run"), ("attribute/attribution_report.html", "attribution")):
        # the report's own link in the steps table, then one per figure the registry lists for its study
        assert html.count(f'<a href="{report}">') == 1 + len(figures(name))


def test_another_study_in_the_same_directory_is_refused(study, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(study[0], out)
    with pytest.raises(MechmodError, match="seed 0 there vs 1 asked"):
        run_pipeline(out, dataclasses.replace(OPTIONS, seed=1), CHEAP, echo=lambda line: None)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(MechmodError, match="not a study directory"):
        run_pipeline(tmp_path / "other", OPTIONS, CHEAP, echo=lambda line: None)


def test_steps_are_parsed_in_pipeline_order_and_unknown_ones_refused():
    assert parse_steps("flow,run") == ("run", "flow")
    assert parse_steps(None) == STEP_NAMES
    with pytest.raises(MechmodError, match="unknown step"):
        parse_steps("run,lenses")


@pytest.mark.slow
def test_the_whole_study_from_the_command_line(tmp_path):
    from mechmod.cli import main

    out = tmp_path / "study"
    assert main(["study", "--out", str(out), "--groups", "2", "--quiet"]) == 0
    record = _record(out)
    assert {v["status"] for v in record["steps"].values()} == {"ran"}
    assert {v["report"] for v in record["steps"].values()} <= _links(out)
    assert main(["study", "--out", str(out), "--groups", "2", "--quiet"]) == 0
    assert {v["status"] for v in _record(out)["steps"].values()} == {"skipped"}
