"""summary.json and report.html from a results table alone (synthetic
results drawn from a known following curve)."""

import json

import numpy as np
import pandas as pd
import pytest

from mechmod.cli import main
from mechmod.dynamics import count_oscillations_batch, counted_votes
from mechmod.errors import MechmodError
from mechmod.summary import summarize, summarize_run

COLORS = ["red", "yellow", "blue", "green", "purple", "orange"]


def synthetic_results(n=600, balance=0.3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        av, at = rng.choice(COLORS, 2, replace=False)
        h_v, h_t = rng.uniform(0.05, 1.5, 2)
        dh = 2 * (h_t - h_v) / (h_t + h_v)
        p_text = 1 / (1 + np.exp(3.0 * (dh - balance)))
        control = "none" if i % 5 else "text_irrelevant"
        follow = "text" if rng.random() < p_text else "vision"
        rows.append(dict(
            case_id=f"c{i:04d}", group_id=f"g{i // 6}", image_id=f"g{i // 6}-dv{i % 14}", task="color",
            dv=i % 14, dt=i % 3, control=control, answer_vision=av, answer_text=at,
            y_v=av, y_t=at, y_m=at if follow == "text" else av, h_v=h_v, h_t=h_t, h_m=0.3, dh_rel=dh,
            follow=follow, oscillations=int(rng.integers(0, 3)), status="ok", error="",
        ))
    return pd.DataFrame(rows)


def test_summary_recovers_balance_and_fills_regions():
    summary, out = summarize(synthetic_results(), model="sim", radius=0.5)
    assert summary["balance"]["status"] == "ok"
    assert summary["balance_point"] == pytest.approx(0.3, abs=0.25)
    lo, hi = summary["balance_ci"]
    assert lo < summary["balance_point"] < hi
    assert 0 < summary["tfr"] < 1 and summary["tfr"] == summary["tfr_both_correct"]
    assert summary["monotonicity"]["decreasing"]
    expected = np.where(np.abs(out["dh_rel"] - summary["balance_point"]) < 0.5, "ambiguous", "clear")
    assert (out["region"].to_numpy() == expected).all()
    assert set(summary["oscillations"]) == {"ambiguous", "clear", "control_text_irrelevant"}
    assert [r["tier"] for r in summary["entropy_by_tier"]["vision"]] == list(range(14))
    assert set(summary["entropy_split"]) == {"median", "low", "high"}
    json.dumps(summary, allow_nan=False)


def test_summarize_run_and_cli_from_results_alone(tmp_path):
    synthetic_results().to_parquet(tmp_path / "results.parquet")
    assert main(["summarize", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n_cases"] == 600 and s["balance_point"] == pytest.approx(0.3, abs=0.25)  # the simulated truth
    html = (tmp_path / "report.html").read_text()
    assert "<script src=" not in html and "src=\"http" not in html  # plotly.js embedded, no CDN
    assert "Plotly" in html and "Following curve" in html
    assert "region" in pd.read_parquet(tmp_path / "results.parquet")


def test_bad_results_are_refused(tmp_path):
    with pytest.raises(MechmodError, match="missing column"):
        summarize(synthetic_results().drop(columns=["dh_rel"]))
    assert main(["summarize", str(tmp_path / "nope")]) == 2
    (tmp_path / "results.parquet").write_bytes(b"not parquet")
    with pytest.raises(MechmodError, match="cannot read"):
        summarize_run(tmp_path)
    only_controls = synthetic_results().assign(control="text_irrelevant")
    with pytest.raises(MechmodError, match="control == 'none'"):
        summarize(only_controls)


def test_jsonable_makes_strict_json():
    import json
    from pathlib import Path

    from mechmod._io import jsonable

    got = jsonable({1: (np.float32(1.5), np.int64(2)), "a": np.array([np.nan, 3.0]), "p": Path("x/y"),
                    "inf": float("inf"), "s": "ok"})
    assert got == {"1": [1.5, 2], "a": [None, 3.0], "p": "x/y", "inf": None, "s": "ok"}
    json.dumps(got, allow_nan=False)


def _with_votes(results: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    """``results`` with per-layer votes (4 decoder layers, an embedding
    output voting 'text') and the oscillations they give, both ways."""
    rng = np.random.default_rng(seed)
    out = results.copy()
    out["layer_votes"] = [list(v) for v in rng.choice(np.array(["vision", "text", "other"], dtype=object),
                                                      size=(len(out), 4))]
    out["embedding_vote"] = "text"
    out["embedding_logit_diff"] = 1.0
    out["layer_logit_diff"] = [list(rng.normal(0, 1, 4)) for _ in range(len(out))]
    out["osc_decoder"] = count_oscillations_batch(counted_votes(out["layer_votes"]))
    out["osc_all"] = count_oscillations_batch(counted_votes(out["layer_votes"], out["embedding_vote"]))
    return out


@pytest.mark.parametrize("include_embedding", [False, True])
def test_switch_rates_sum_to_the_mean_oscillations(include_embedding):
    table = _with_votes(synthetic_results(n=300))
    table["oscillations"] = table["osc_all" if include_embedding else "osc_decoder"]
    summary, _ = summarize(table.drop(columns=["osc_all", "osc_decoder"]), model="sim",
                           include_embedding=include_embedding)
    assert summary["include_embedding"] is include_embedding
    rates, osc = summary["switch_rates"], summary["oscillations"]
    assert set(rates) == set(osc) == {"ambiguous", "clear", "control_text_irrelevant"}
    first = -1 if include_embedding else 0
    for k in rates:
        assert rates[k]["layers"] == list(range(first, 4)) and rates[k]["n"] == osc[k]["n"]
        assert sum(rates[k]["rate"]) == pytest.approx(osc[k]["mean"], abs=1e-12)
        assert rates[k]["band"]["name"] in ("early", "middle", "late") and 0 < rates[k]["band"]["share"] <= 1
    assert summary["logit_diff_heatmap"]["layers"] == list(range(first, 4))
    json.dumps(summary, allow_nan=False)


def test_switch_rates_need_the_embedding_vote_when_the_embedding_counts():
    table = _with_votes(synthetic_results(n=120)).drop(columns=["embedding_vote", "osc_all", "osc_decoder"])
    summary, _ = summarize(table, model="sim", include_embedding=True)
    assert "switch_rates" not in summary and summary["left_out"]["switch_rates"] == "needs column(s) embedding_vote"
