"""One layer index everywhere (-1 the embedding output, 0..L-1 the decoder
layers): a run counts the decoder layers' votes unless asked to count the
embedding output too, records which in run.json and summary.json, and its
per-layer switch rates add up to its mean oscillation counts."""

import json

import numpy as np
import pandas as pd
import pytest

from mechmod import runner
from mechmod.dynamics import (NO_LAYER, commit_layer, count_oscillations_batch, counted_votes, last_sign_change,
                              oscillation_summary, switch_rate_summary)
from mechmod.errors import MechmodError
from mechmod.following import region
from mechmod.lenses import LogitLens, Unembed
from mechmod.rundir import RunConfig, RunDir
from tests.run_helpers import color_dataset


@pytest.fixture(scope="module")
def runs(tiny_llava_dir, mllm, tmp_path_factory):
    """{include_embedding: (run directory, results, summary)} of one dataset."""
    ds = color_dataset(groups=2)
    out = {}
    for emb in (False, True):
        cfg = RunConfig(model=str(tiny_llava_dir), dataset=str(ds), dataset_sha256=runner.dataset_fingerprint(ds),
                        batch_size=4, include_embedding=emb)
        path = runner.run_study(mllm, LogitLens(Unembed.from_model(mllm)), ds, tmp_path_factory.mktemp(f"emb{emb}"),
                                cfg, progress=False)
        run = RunDir(path)
        out[emb] = (run, run.read_results(), run.read_summary())
    return out


@pytest.mark.parametrize("emb", [False, True])
def test_the_counted_layers_follow_include_embedding(runs, mllm, emb):
    run, res, summary = runs[emb]
    ok = res[res["status"] == "ok"]
    assert ok["layer_votes"].map(len).eq(mllm.n_layers).all() and ok["embedding_vote"].map(len).gt(0).all()
    votes = counted_votes(ok["layer_votes"], ok["embedding_vote"] if emb else None)
    assert (ok["oscillations"].to_numpy() == count_oscillations_batch(votes)).all()
    first = -1 if emb else 0
    for r in ok.itertuples():
        diffs = ([r.embedding_logit_diff] if emb else []) + list(r.layer_logit_diff)
        change = last_sign_change(diffs, first)
        assert r.last_sign_change == (NO_LAYER if change is None else change)
        assert r.commit_layer == NO_LAYER or first <= r.commit_layer < mllm.n_layers
    assert run.config()["include_embedding"] is emb and summary["include_embedding"] is emb
    assert summary["logit_diff_heatmap"]["layers"] == list(range(first, mllm.n_layers))


@pytest.mark.parametrize("emb", [False, True])
def test_switch_rates_of_a_real_run_sum_to_its_mean_oscillations(runs, emb):
    _, res, summary = runs[emb]
    ok = res[res["status"] == "ok"]
    if "switch_rates" in summary:
        rates, osc = summary["switch_rates"], summary["oscillations"]
    else:  # the tiny model's run has no balance point: centre the regions at 0
        regions, controls = region(ok["dh_rel"].to_numpy(float), 0.0, 0.5), ok["control"].to_numpy(object)
        votes = counted_votes(ok["layer_votes"], ok["embedding_vote"] if emb else None)
        rates = switch_rate_summary(votes, regions, controls, -1 if emb else 0, n_boot=50)
        osc = oscillation_summary(ok["oscillations"].to_numpy(int), regions, controls, n_boot=50)
    assert set(rates) == set(osc) and sum(r["n"] for r in rates.values()) == len(ok)
    assert sum(sum(r["switches"]) for r in rates.values()) == ok["oscillations"].sum()  # exactly
    for k, r in rates.items():
        assert r["n"] == osc[k]["n"]
        if r["n"]:
            assert r["total"] == osc[k]["mean"]
            assert sum(r["rate"]) == pytest.approx(osc[k]["mean"], abs=1e-12)


def test_only_the_counted_columns_differ_between_the_two_runs(runs):
    a, b = runs[False][1], runs[True][1]
    for col in ("y_m", "follow", "layer_votes", "embedding_vote"):
        assert a[col].map(lambda v: tuple(v) if not isinstance(v, str) else v).tolist() == \
            b[col].map(lambda v: tuple(v) if not isinstance(v, str) else v).tolist()
    assert (b["oscillations"] >= a["oscillations"]).all()  # the embedding output can only add a switch
    assert (b["oscillations"] - a["oscillations"]).max() <= 1


def test_a_resume_with_the_other_setting_is_refused(runs, mllm, tiny_llava_dir):
    run, _, _ = runs[False]
    cfg = RunConfig(**{**run.config(), "include_embedding": True, "device": None, "n_cases": None, "dtype": None})
    with pytest.raises(MechmodError, match="include_embedding"):
        runner.run_study(mllm, LogitLens(Unembed.from_model(mllm)), cfg.dataset, run.path, cfg, progress=False)


def test_commit_layer_in_the_one_index():
    final = np.array([[True, True, True], [False, True, True], [True, False, False]])  # embedding output first
    assert commit_layer(final[:, 1:]).tolist() == [0, 0, NO_LAYER]
    assert commit_layer(final, first_layer=-1).tolist() == [-1, 0, NO_LAYER]
    assert isinstance(pd.Series([NO_LAYER]).iloc[0], np.integer)
