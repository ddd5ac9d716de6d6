"""`mechmod compare`: runs with a known balance point (simulated results
tables, summarized by mechmod.summary) are compared; the table, the JSON and
the pairwise difference say what the simulation put in."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mechmod.errors import MechmodError


def simulated_run(run_dir, balance: float, n: int = 300, slope: float = -4.0, seed: int = 0):
    """A run directory whose cases follow the text with probability
    sigmoid(slope * (dHrel - balance))."""
    from mechmod.runner import finalize

    rng = np.random.default_rng(seed)
    dh = rng.uniform(-1.8, 1.8, n)
    text = rng.random(n) < 1 / (1 + np.exp(-slope * (dh - balance)))
    h_v = rng.uniform(0.2, 2.0, n)
    h_t = h_v * (2 + dh) / (2 - dh)  # so that 2 (h_t - h_v) / (h_t + h_v) = dh
    df = pd.DataFrame({
        "case_id": [f"c{i:04d}" for i in range(n)], "group_id": [f"g{i // 6}" for i in range(n)],
        "image_id": [f"img{i}" for i in range(n)], "dv": rng.integers(0, 14, n), "dt": rng.integers(0, 3, n),
        "control": "none", "answer_vision": "red", "answer_text": "blue", "y_v": "red", "y_t": "blue",
        "y_m": np.where(text, "blue", "red"), "h_v": h_v, "h_t": h_t, "h_m": 0.5, "dh_rel": dh,
        "follow": np.where(text, "text", "vision"), "status": "ok",
    })
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"model": f"sim{balance:+.1f}"}))
    finalize(run_dir, results=df)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return [simulated_run(root / "vision_pref", -0.5, seed=1), simulated_run(root / "text_pref", 0.5, seed=2)]


def test_compare_runs_recovers_the_difference(runs):
    from mechmod.compare import compare_runs

    c = compare_runs(runs, n_boot=300)
    assert [r["label"] for r in c["runs"]] == ["vision_pref", "text_pref"]
    b = [r["balance_point"] for r in c["runs"]]
    assert b[0] == pytest.approx(-0.5, abs=0.25) and b[1] == pytest.approx(0.5, abs=0.25)
    (pair,) = c["pairs"]
    assert pair["difference"] == pytest.approx(b[1] - b[0])
    assert 0 < pair["ci"][0] < pair["difference"] < pair["ci"][1] and pair["p_value"] < 0.05


def test_cli_writes_html_and_json(runs, tmp_path, capsys):
    from mechmod.cli import main

    out = tmp_path / "cmp.html"
    rc = main(["compare", *map(str, runs), "--label", "A", "--label", "B", "--out", str(out), "--n-boot", "200"])
    assert rc == 0
    page = out.read_text()
    assert page.count('class="plotly-graph-div"') == 2 and "Pairwise balance-point differences" in page
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["label"] for r in data["runs"]] == ["A", "B"] and data["pairs"][0]["first"] == "A"
    assert "balance point" in capsys.readouterr().out


def test_refusals(runs, tmp_path):
    from mechmod.cli import main
    from mechmod.compare import compare_runs

    with pytest.raises(MechmodError, match="at least 2"):
        compare_runs(runs[:1])
    with pytest.raises(MechmodError, match="no summary.json"):
        compare_runs([runs[0], tmp_path])
    with pytest.raises(MechmodError, match="labels for"):
        compare_runs(runs, labels=["only one"])
    assert main(["compare", str(runs[0]), str(runs[0])]) == 2  # same label twice


def test_no_balance_point_is_not_compared(runs, tmp_path):
    from mechmod.compare import compare_runs

    flat = simulated_run(tmp_path / "flat", 0.0, slope=0.0, seed=3)
    c = compare_runs([runs[0], flat], n_boot=100)
    assert c["runs"][1]["balance_point"] is None
    assert c["pairs"][0]["difference"] is None and "no balance point" in c["pairs"][0]["note"]
