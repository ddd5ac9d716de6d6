"""``mechmod dataset``: success paths, bad input (clear message, exit 2, no
complete-looking directory) and an interrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mechmod.cli import main
from mechmod.data import load_cases

REPO = Path(__file__).resolve().parents[1]


def _no_leftovers(parent: Path, name: str):
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.partial-")]


def test_color_and_check(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["dataset", "color", "--groups", "2", "--seed", "3", "--dv", "0,5-6", "--dt", "0,2",
                 "--out", str(out), "--no-progress"]) == 0
    assert "wrote 36 cases" in capsys.readouterr().out
    df = load_cases(out)
    assert set(df.dv) == {0, 5, 6} and set(df.dt) == {0, 2} and len(df) == 2 * 3 * 2 * 3
    assert main(["dataset", "check", str(out)]) == 0
    assert "ok" in capsys.readouterr().out


def test_existing_empty_dir_is_accepted(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["dataset", "color", "--groups", "1", "--dv", "0", "--out", str(out), "--no-progress",
                 "--no-controls"]) == 0
    assert (out / "manifest.json").is_file() and len(load_cases(out)) == 3


@pytest.mark.parametrize("args, msg", [
    (["--groups", "0"], "--groups must be a positive integer"),
    (["--groups", "-3"], "--groups must be a positive integer"),
    (["--groups", "2", "--dv", "14"], "invalid visual (dv) tier"),
    (["--groups", "2", "--dv", "x"], "invalid visual (dv) tier"),
    (["--groups", "2", "--dt", "3"], "invalid text (dt) tier"),
    (["--groups", "2", "--colors", "red,pink"], "unknown color(s) 'pink'"),
    (["--groups", "2", "--colors", "red"], "at least 2 colors"),
    (["--groups", "2", "--shapes", "circle,star"], "unknown shape(s) 'star'"),
    (["--groups", "2", "--seed", "-1"], "seed must be a non-negative integer"),
])
def test_color_bad_input(tmp_path, capsys, args, msg):
    out = tmp_path / "bad"
    assert main(["dataset", "color", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert not out.exists()
    _no_leftovers(tmp_path, "bad")


@pytest.mark.parametrize("args, msg", [
    (["--groups", "1", "--dv", "4"], "invalid visual (dv) tier"),
    (["--groups", "1", "--dt", "4"], "invalid text (dt) tier"),
    (["--groups", "1", "--shapes", "cube,cone"], "unknown shape(s) 'cone'"),
    (["--groups", "0"], "positive"),
])
def test_attribute_bad_input(tmp_path, capsys, args, msg):
    out = tmp_path / "bad"
    assert main(["dataset", "attribute", *args, "--out", str(out), "--no-progress"]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_attribute_bad_subset(tmp_path, capsys):
    assert main(["dataset", "attribute", "--subset", "colour", "--groups", "1", "--out", str(tmp_path / "x")]) == 2
    assert "colour" in capsys.readouterr().err


def test_non_empty_and_unwritable_out(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["dataset", "color", "--groups", "1", "--out", str(full), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["dataset", "color", "--groups", "1", "--out", str(afile), "--no-progress"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["dataset", "color", "--groups", "1", "--out", str(afile / "sub"), "--no-progress"]) == 2
    assert str(afile) in capsys.readouterr().err

    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            assert main(["dataset", "color", "--groups", "1", "--out", str(ro / "d"), "--no-progress"]) == 2
            assert "writ" in capsys.readouterr().err
        finally:
            ro.chmod(0o755)


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    from mechmod.data.color import write

    real = write.render_image
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(write, "render_image", flaky)
    out = tmp_path / "int"
    assert main(["dataset", "color", "--groups", "3", "--out", str(out), "--no-progress"]) == 130
    assert not out.exists()
    _no_leftovers(tmp_path, "int")
    assert list(tmp_path.iterdir()) == []


def test_check_reports_incomplete_dir(tmp_path, capsys):
    d = tmp_path / "half"
    (d / "images").mkdir(parents=True)
    (d / "cases.parquet").write_bytes(b"")
    assert main(["dataset", "check", str(d)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "sp"
    r = subprocess.run([sys.executable, "-m", "mechmod", "dataset", "color", "--groups", "1", "--dv", "0-1",
                        "--out", str(out), "--no-progress"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["n_cases"] == 2 * 3 * 3
    r = subprocess.run([sys.executable, "-m", "mechmod", "dataset", "color", "--groups", "1", "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not empty" in r.stderr
