"""A run directory cannot lie: one launch writes it at a time, a resume
with another dtype or other dataset-generation arguments is refused, a
killed dataset step never blocks the directory, nothing is written into a
directory before it is accepted, an unfinished run is marked partial
everywhere, and files get the usual modes."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest

from mechmod import scoring
from mechmod.cli import main
from mechmod.errors import MechmodError
from mechmod.rundir import RunDir
from tests.run_dirs import error_line, finished_run
from tests.run_helpers import (ROOT, assert_same_rows, child_env, cli_args, color_dataset, reference_results,
                               run_in_process, start_cli, tiny_mllm, tiny_model_dir)


# ------------------------------------------------------------------ one writer
def test_a_second_launch_is_refused_naming_the_first_ones_pid(tmp_path, capsys):
    ds = color_dataset(groups=1)
    out = tmp_path / "run"
    first = start_cli(cli_args(ds, out, "--batch-size", "4", "--chunk-size", "2"), tmp_path / "first.log")
    deadline = time.monotonic() + 120
    while not RunDir(out).part_files():  # the first launch holds the directory and is scoring
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)  # paused mid-run, still holding the directory
    try:
        assert main(cli_args(ds, out, "--batch-size", "8")) == 2
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert f"in use by another mechmod launch (pid {first.pid})" in error_line(capsys.readouterr().err)
    assert first.wait(timeout=300) == 0
    assert_same_rows(pd.read_parquet(RunDir(out).results), reference_results(groups=1))


def test_summarize_is_refused_while_another_process_holds_the_run(tmp_path, capsys):
    run = RunDir(finished_run(tmp_path / "run"))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mechmod.rundir import RunDir\n"
                               "with RunDir(sys.argv[1]).launch():\n    print('held', flush=True)\n    time.sleep(600)",
                               str(run.path)], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["summarize", str(run.path)]) == 2
        assert f"in use by another mechmod launch (pid {holder.pid})" in error_line(capsys.readouterr().err)
    finally:
        holder.kill()
        holder.wait()
    assert main(["summarize", str(run.path)]) == 0  # the kernel dropped the lock with the process


# ----------------------------------------------------------------- identity
def test_a_finished_run_rerun_with_other_generation_arguments_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["run", "--model", str(tiny_model_dir()), "--out", str(out), "--quiet", "--batch-size", "16",
            "--groups", "1", "--seed", "3"]
    assert main(base) == 0
    summary = RunDir(out).summary.read_bytes()
    capsys.readouterr()
    for other in (["--seed", "4"], ["--groups", "2"]):
        assert main(base + other) == 2
        assert "holds a different run (dataset_args" in error_line(capsys.readouterr().err)
    assert RunDir(out).summary.read_bytes() == summary
    # killed after generating its dataset, before run.json: the dataset is checked too
    left = tmp_path / "left"
    left.mkdir()
    os.rename(out / "dataset", left / "dataset")
    assert main(["run", "--model", str(tiny_model_dir()), "--out", str(left), "--quiet", "--groups", "1",
                 "--seed", "5"]) == 2
    assert "generated with other arguments (seed 3 there vs 5 asked)" in error_line(capsys.readouterr().err)


def test_dtype_is_part_of_a_runs_identity_and_another_device_is_a_notice(tmp_path, capsys):
    ds = color_dataset(groups=1)
    out = tmp_path / "run"
    run_in_process(ds, out)
    held = json.loads(RunDir(out).run_file.read_text())
    assert held["dtype"] == "float32" and held["device"] == "cpu" and held["n_cases"] == 18
    RunDir(out).run_file.write_text(json.dumps(dict(held, device="cuda:0")))
    capsys.readouterr()
    run_in_process(ds, out)
    assert f"note: {out} was started on cuda:0; resuming on cpu" in capsys.readouterr().err
    RunDir(out).run_file.write_text(json.dumps(dict(held, dtype="bfloat16")))
    with pytest.raises(MechmodError, match="dtype: 'bfloat16' here vs 'float32' asked"):
        run_in_process(ds, out)


# ------------------------------------------------------------ before writing
def test_run_into_a_directory_that_is_not_a_run_writes_nothing(tmp_path, capsys):
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert main(["run", "--model", str(tmp_path / "never-loaded"), "--groups", "1", "--out", str(stranger)]) == 2
    assert "not a mechmod run directory" in error_line(capsys.readouterr().err)
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]


def test_a_sigkill_during_the_dataset_step_does_not_block_the_directory(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_model_dir()), "--groups", "1", "--out", str(out), "--quiet", "--batch-size", "16"]
    proc = subprocess.Popen([sys.executable, "-m", "mechmod", *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not [p for p in out.parent.rglob("*.png") if "partial" in str(p)]:  # the generator is writing its images
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset" / "manifest.json").exists()
    assert main(args) == 0
    assert not list(out.rglob("*partial*")), "the killed stage was not cleaned"


def test_a_dataset_is_staged_inside_its_directory(tmp_path, monkeypatch):
    from mechmod.data.color import write

    out = tmp_path / "ds"
    seen = []
    real = write.render_image

    def spy(*a, **k):
        seen.append(sorted(p.name for p in tmp_path.iterdir()) + sorted(p.name[:9] for p in out.iterdir()))
        return real(*a, **k)

    monkeypatch.setattr(write, "render_image", spy)
    assert main(["dataset", "color", "--groups", "1", "--dv", "0", "--out", str(out), "--no-progress"]) == 0
    assert seen and all(s == ["ds", ".partial-"] for s in seen)
    assert sorted(p.name for p in out.iterdir()) == ["cases.parquet", "images", "manifest.json"]


# ------------------------------------------------------------------ partial
def test_an_unfinished_run_is_partial_everywhere(tmp_path, monkeypatch, capsys):
    ds = color_dataset(groups=1)
    out = tmp_path / "half"
    real, calls = scoring.score_chunk, {"n": 0}

    def dies_on_second_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scoring, "score_chunk", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(ds, out, chunk_size=9)
    monkeypatch.setattr(scoring, "score_chunk", real)
    capsys.readouterr()
    assert main(["summarize", str(out)]) == 0
    assert capsys.readouterr().out.startswith("PARTIAL (9 of 18 cases missing)")
    summary = json.loads(RunDir(out).summary.read_text())
    assert summary["partial"] is True and summary["n_cases_expected"] == 18 and summary["n_cases_missing"] == 9
    assert "PARTIAL RUN" in RunDir(out).report.read_text()
    done = finished_run(tmp_path / "done")
    assert json.loads(RunDir(done).summary.read_text())["partial"] is False
    cmp = ["compare", str(out), str(done), "--out", str(tmp_path / "c.html"), "--n-boot", "10"]
    assert main(cmp) == 2
    assert "a partial run (9 of 18 cases have no result)" in error_line(capsys.readouterr().err)
    assert main(cmp + ["--allow-partial"]) == 0
    assert "half (partial)" in capsys.readouterr().out
    assert [r["partial"] for r in json.loads((tmp_path / "c.json").read_text())["runs"]] == [True, False]


# -------------------------------------------------------------------- modes
def test_outputs_have_the_usual_modes(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDir(finished_run(tmp_path / "run"))
        assert main(["summarize", str(run.path)]) == 0
        for path in (run.results, run.summary, run.report):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert main(["dataset", "color", "--groups", "1", "--dv", "0", "--out", str(tmp_path / "ds"),
                     "--no-progress"]) == 0
        for path in (tmp_path / "ds" / "manifest.json", tmp_path / "ds" / "cases.parquet"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    finally:
        os.umask(old)


def test_a_default_run_prints_no_warning(tmp_path, capsys):
    tiny_mllm()  # built before the capture
    capsys.readouterr()
    assert main(cli_args(color_dataset(groups=1), tmp_path / "run", "--batch-size", "8")) == 0
    err = capsys.readouterr().err
    assert not [ln for ln in err.splitlines() if "warn" in ln.lower() or "deprecat" in ln.lower()], err
