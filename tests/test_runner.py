"""The behavioural run: completeness, chunks cut between groups, resume
without duplicates or losses, refusal to mix runs, a bad image recorded as
a failed case, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from mechmod import runner, scoring
from mechmod.cli import main
from mechmod.data import load_cases
from mechmod.dynamics import count_oscillations_batch, counted_votes
from mechmod.errors import MechmodError
from mechmod.lenses import LogitLens, Unembed
from mechmod.rundir import RunConfig, RunDir
from tests.run_helpers import color_dataset, copy_dataset

RESULT_COLUMNS = ["case_id", "group_id", "dv", "dt", "control", "answer_vision", "answer_text", "y_v", "y_t", "y_m",
                  "h_v", "h_t", "h_m", "dh_rel", "follow", "layer_votes", "layer_logit_diff", "oscillations", "region"]
SUMMARY_KEYS = ["model", "n_cases", "tfr", "vfr", "tfr_both_correct", "balance_point", "balance_ci", "curve",
                "entropy_by_tier", "accuracy_by_tier"]


@pytest.fixture(scope="module")
def setup(tiny_llava_dir, mllm):
    return tiny_llava_dir, color_dataset(groups=2), mllm


def config(ds, model_dir, **kw):
    return RunConfig(model=str(model_dir), dataset=str(ds), dataset_sha256=runner.dataset_fingerprint(ds), **kw)


def run(mllm, ds, out, cfg, **kw):
    return runner.run_study(mllm, LogitLens(Unembed.from_model(mllm)), ds, out, cfg, progress=False, **kw)


def test_run_writes_one_row_per_case_and_a_summary(setup, tmp_path):
    model_dir, ds, mllm = setup
    out = run(mllm, ds, tmp_path / "run", config(ds, model_dir, batch_size=4))
    res = pd.read_parquet(out / "results.parquet")
    cases = load_cases(ds)
    assert sorted(res["case_id"]) == sorted(cases["case_id"])
    assert set(RESULT_COLUMNS) <= set(res.columns)
    assert (res["status"] == "ok").all()
    assert res["layer_votes"].map(len).eq(mllm.n_layers).all()  # decoder layers 0..L-1
    assert res["layer_logit_diff"].map(len).eq(mllm.n_layers).all()
    assert res["embedding_vote"].isin(["vision", "text", "other"]).all()  # layer -1
    assert (res["oscillations"] == count_oscillations_batch(counted_votes(res["layer_votes"]))).all()
    assert set(res["follow"]) <= {"text", "vision", "other"}
    for span in ("image", "description", "question"):
        assert res[f"attn_{span}"].map(len).eq(mllm.n_layers).all()
    assert (np.stack(res["attn_image"]) > 0).all()
    # unimodal answers are shared: every case of an image asking about its target has one vision answer
    same_q = res[res["control"] != "image_irrelevant"]
    assert same_q.groupby("image_id")["h_v"].agg(lambda h: h.max() - h.min()).max() < 1e-4
    assert same_q.groupby("image_id")["y_v"].nunique().max() == 1
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary) and summary["n_cases"] == len(cases)
    assert (out / "report.html").stat().st_size > 100_000  # plotly.js embedded
    assert len(summary["attention_by_layer"]["image"]) == mllm.n_layers
    assert "Attention of the answer position" in (out / "report.html").read_text()


def test_batch_size_does_not_change_results(setup, tmp_path):
    model_dir, ds, mllm = setup
    a = pd.read_parquet(run(mllm, ds, tmp_path / "a", config(ds, model_dir, batch_size=1)) / "results.parquet")
    b = pd.read_parquet(run(mllm, ds, tmp_path / "b", config(ds, model_dir, batch_size=7)) / "results.parquet")
    assert (a["y_m"] == b["y_m"]).all() and (a["layer_votes"].map(tuple) == b["layer_votes"].map(tuple)).all()
    pd.testing.assert_series_equal(a["h_m"], b["h_m"], atol=1e-4, rtol=0)


def test_chunks_cut_between_groups_else_between_images(setup):
    cases = load_cases(setup[1]).sort_values(["group_id", "image_id", "case_id"])  # 2 groups x 2 images x 9 cases
    sizes = {n: [list(c["case_id"]) for c in runner._chunks(cases, n)] for n in (40, 36, 35, 20, 18, 17, 9, 8)}
    by = lambda col: [list(g["case_id"]) for _, g in cases.groupby(col)]  # noqa: E731
    assert sizes[40] == sizes[36] == [list(cases["case_id"])]
    assert sizes[35] == sizes[20] == sizes[18] == by("group_id")  # whole groups, never one shared by two chunks
    assert sizes[17] == sizes[9] == by("image_id")  # a group larger than the chunk: whole images
    assert sizes[8] == [part for image in by("image_id") for part in (image[:8], image[8:])]  # else image slices


def test_interrupted_run_resumes_without_duplicates_or_losses(setup, tmp_path, monkeypatch):
    model_dir, ds, mllm = setup
    cfg = config(ds, model_dir, batch_size=4)
    whole = pd.read_parquet(run(mllm, ds, tmp_path / "whole", cfg, chunk_size=8) / "results.parquet")

    real = scoring.score_chunk
    calls = {"n": 0}

    def dies_on_third_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scoring, "score_chunk", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        run(mllm, ds, tmp_path / "resumed", cfg, chunk_size=8)
    assert len(RunDir(tmp_path / "resumed").done_case_ids()) == 9  # two chunks: an image's 8 cases, then its last
    monkeypatch.setattr(scoring, "score_chunk", real)
    resumed = pd.read_parquet(run(mllm, ds, tmp_path / "resumed", cfg, chunk_size=8) / "results.parquet")
    assert resumed["case_id"].is_unique and len(resumed) == len(whole)
    cols = ["case_id", "y_v", "y_t", "y_m", "follow", "oscillations"]
    pd.testing.assert_frame_equal(resumed[cols], whole[cols])
    pd.testing.assert_series_equal(resumed["dh_rel"], whole["dh_rel"], atol=1e-5, rtol=0)


def test_a_different_run_in_the_same_directory_is_refused(setup, tmp_path):
    model_dir, ds, mllm = setup
    run(mllm, ds, tmp_path / "run", config(ds, model_dir))
    with pytest.raises(MechmodError, match="different run.*lens"):
        run(mllm, ds, tmp_path / "run", config(ds, model_dir, lens="tuned", lens_path="x"))
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(MechmodError, match="not a mechmod run"):
        run(mllm, ds, tmp_path / "stranger", config(ds, model_dir))


def test_a_bad_image_fails_its_cases_and_the_run_goes_on(setup, tmp_path):
    model_dir, shared, mllm = setup
    ds = copy_dataset(shared, tmp_path / "ds")
    cases = load_cases(ds)
    bad = cases["image_path"].iloc[0]
    (ds / bad).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = run(mllm, ds, tmp_path / "run", config(ds, model_dir, batch_size=4))
    res = pd.read_parquet(out / "results.parquet")
    failed = res[res["status"] == "failed"]
    assert set(failed["case_id"]) == set(cases.loc[cases["image_path"] == bad, "case_id"])
    assert failed["error"].str.startswith("image:").all() and bad in failed["error"].iloc[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_failed"] == len(failed) and summary["failures_by_kind"] == {"image": len(failed)}
    assert summary["n_cases"] == len(cases) - len(failed)


def test_cli_run_generates_a_dataset_and_summarize_recomputes(setup, tmp_path, capsys):
    model_dir, _, _ = setup
    out = tmp_path / "run"
    assert main(["run", "--model", str(model_dir), "--groups", "1", "--seed", "3", "--out", str(out), "--quiet",
                 "--batch-size", "16"]) == 0
    assert (out / "dataset" / "manifest.json").is_file() and (out / "results.parquet").is_file()
    first = json.loads((out / "summary.json").read_text())
    assert main(["summarize", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text()) == first
    assert main(["run", "--model", str(model_dir), "--lens", "tuned", "--out", str(tmp_path / "x")]) == 2
    assert "--lens-path" in capsys.readouterr().err


def test_transformer_lens_runs_whole_prompts_and_agrees(setup, tmp_path):
    """The bridge keeps no faithful KV cache, so a TransformerLens run does
    not share image prefixes (recorded in run.json) and its rows equal the
    default (hooks, shared prefixes) run's."""
    from mechmod.models import load_model

    model_dir, ds, mllm = setup
    base = pd.read_parquet(run(mllm, ds, tmp_path / "hooks", config(ds, model_dir, batch_size=4)) / "results.parquet")
    fresh = load_model(str(model_dir))  # booting the bridge rewires the instance it boots on
    out = run(fresh, ds, tmp_path / "tl", config(ds, model_dir, batch_size=4, backend="transformer_lens"))
    tl = pd.read_parquet(out / "results.parquet")
    assert json.loads((out / "run.json").read_text())["share_prefix"] is False
    assert (tl["status"] == "ok").all() and (tl["follow"] == base["follow"]).all()
    np.testing.assert_allclose(tl["h_m"], base["h_m"], atol=1e-5)
    np.testing.assert_allclose(np.stack(tl["attn_image"]), np.stack(base["attn_image"]), atol=1e-5)
