"""Linear probes (mechmod.interventions.probes), the opt-in `consistent`
control of the colour set, and the text-dominance index: a planted linear
signal is recovered and shuffled labels stay at chance, folds never split a
group, the control differs from its conflict case only in the colour, the
index matches a hand computation, and `mechmod probe` runs end to end."""

import re

import numpy as np
import pandas as pd
import pytest

from mechmod.cli import main
from mechmod.data import generate_color, load_cases
from mechmod.data.knowledge import KNOWLEDGE
from mechmod.interventions.probes import centred, fit_logistic, group_folds, heldout_correct, probe_rows
from mechmod.stats import cluster_bootstrap_mean_ci
from mechmod.summary import text_dominance
from tests.run_helpers import tiny_model_dir


def _planted(n_groups=12, per_group=10, d=16, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"g{i}" for i in range(n_groups)], per_group)
    signal = rng.normal(size=(len(groups), d))
    y = signal @ rng.normal(size=d) > 0
    noise = rng.normal(size=signal.shape)
    return np.stack([noise, signal], axis=1), y, groups  # [N, 2 residual indices, D]: layer -1 noise, 0 signal


def test_a_planted_linear_signal_is_recovered_and_noise_is_not():
    resid, y, groups = _planted()
    rows = probe_rows(resid, y, groups, "planted", n_boot=200)
    noise, signal = rows
    assert [noise["layer"], signal["layer"]] == [-1, 0]
    assert signal["accuracy"] > 0.85 and signal["ci_lo"] > signal["chance"]
    assert noise["ci_lo"] < noise["chance"] + 0.05 and noise["accuracy"] < 0.7
    assert signal["lens_accuracy"] is None and signal["n_cases"] == len(y)


def test_shuffled_labels_stay_at_chance():
    resid, y, groups = _planted(seed=1)
    shuffled = np.random.default_rng(5).permutation(y)
    (_, row) = probe_rows(resid, shuffled, groups, "shuffled", n_boot=200)
    assert abs(row["accuracy"] - 0.5) < 0.15 and row["ci_lo"] <= row["chance"]


def test_the_fit_is_deterministic_and_l2_shrinks_it():
    resid, y, _ = _planted(seed=2)
    x = resid[:, 1]
    p1, p2 = fit_logistic(x, y)(x), fit_logistic(x, y)(x)
    np.testing.assert_array_equal(p1, p2)
    strong = fit_logistic(x, y, l2=1e4)(x)
    assert np.abs(strong - 0.5).max() < np.abs(p1 - 0.5).max()


def test_centring_on_the_colour_removes_the_held_out_artifact():
    """Each group says its text colour in the conflict case and its image
    colour in the consistent one, and colours recur across groups in the
    other role: the colour word alone drives a held-out probe to 0; centred
    per described colour it sits at chance, and a real signal comes back."""
    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{g}" for g in range(6)], 16)
    y = np.tile([True, False], 48)
    g = np.repeat(np.arange(6), 16)
    said = np.where(y, (g + 1) % 6, g)
    x = np.eye(6)[said] * 3 + rng.normal(size=(96, 6)) * 0.5
    folds = group_folds(groups, 6)
    assert heldout_correct(x, y, folds).mean() < 0.1
    assert abs(heldout_correct(x, y, folds, confound=said).mean() - 0.5) < 0.1
    signal = np.column_stack([x, y + rng.normal(size=96) * 0.5])
    assert heldout_correct(signal, y, folds, confound=said).mean() > 0.9 > heldout_correct(signal, y, folds).mean()
    np.testing.assert_allclose(centred(x, said, np.ones(96, bool))[said == 2].mean(0), 0, atol=1e-12)


def test_folds_keep_each_group_whole():
    groups = np.repeat(["a", "b", "c"], 4)
    folds = group_folds(groups, n_folds=5, seed=3)
    assert sorted(set(folds)) == [0, 1, 2]  # at most one fold per group
    assert all(len(set(folds[groups == g])) == 1 for g in "abc")
    np.testing.assert_array_equal(folds, group_folds(groups, n_folds=5, seed=3))
    y = np.array([0, 1] * 6, dtype=bool)
    assert heldout_correct(np.zeros((12, 3)), y, folds).mean() == pytest.approx(0.5)  # no signal: the bias only


def test_cluster_bootstrap_resamples_whole_groups():
    x, groups = [1, 1, 0, 0, 1, 0], ["a", "a", "b", "b", "c", "c"]
    out = cluster_bootstrap_mean_ci(x, groups, n_boot=500, seed=0)
    assert out["mean"] == pytest.approx(0.5) and out["n"] == 6
    assert 0 <= out["ci"][0] <= 0.5 <= out["ci"][1] <= 1  # group means 1, 0, 0.5
    assert cluster_bootstrap_mean_ci([1, 0], ["a", "a"])["ci"] is None


def test_text_dominance_by_hand():
    frame = pd.DataFrame({"attn_image": [[0.4, 0.2]], "attn_description": [[0.3, 0.1]], "attn_question": [[0.1, 0.1]],
                          "tokens_image": [8], "tokens_description": [3], "tokens_question": [1]})
    out = text_dominance(frame, n_boot=10)
    # layer 0: text 0.4 / 4 = 0.1, image 0.4 / 8 = 0.05 -> 2/3; layer 1: 0.05 vs 0.025 -> 2/3
    assert out["per_token"] is True and out["per_layer"]["index"] == pytest.approx([2 / 3, 2 / 3])
    assert out["per_layer"]["text"] == pytest.approx([0.1, 0.05]) and out["index"]["mean"] == pytest.approx(2 / 3)
    mass = text_dominance(frame.drop(columns=["tokens_image", "tokens_description", "tokens_question"]), n_boot=10)
    assert mass["per_token"] is False and mass["per_layer"]["index"] == pytest.approx([0.5, 0.5])  # 0.4 vs 0.4


def test_consistent_control_states_the_image_colour_in_the_conflict_case_words(tmp_path):
    plain = load_cases(generate_color(tmp_path / "plain", groups=3, dv=[0], progress=False))
    cases = load_cases(generate_color(tmp_path / "both", groups=3, dv=[0], progress=False, consistent=True))
    assert "consistent" not in set(plain["control"])  # opt-in: the default set is unchanged
    pd.testing.assert_frame_equal(cases[cases["control"] != "consistent"].reset_index(drop=True),
                                  plain.reset_index(drop=True), check_like=True)
    conflict = cases[cases["control"] == "none"].set_index(["image_id", "dt"])
    consistent = cases[cases["control"] == "consistent"]
    assert len(consistent) == len(conflict)
    for row in consistent.itertuples():
        twin = conflict.loc[(row.image_id, row.dt)]
        assert (row.question, row.image_path, row.template, row.bridge_shape, row.target_shape) == (
            twin.question, twin.image_path, twin.template, twin.bridge_shape, twin.target_shape)
        if row.dt < 2:  # word for word the conflict description, the text colour replaced by the image's
            words, twin_words = re.findall(r"\w+|\W", row.description), re.findall(r"\w+|\W", twin.description)
            assert len(words) == len(twin_words)
            assert {(a, b) for a, b in zip(twin_words, words) if a != b} == {(twin.answer_text, row.answer_vision)}
        else:
            assert row.knowledge_thing in KNOWLEDGE[row.answer_vision] and row.knowledge_thing in row.description


def test_probe_command_end_to_end(tmp_path):
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_model_dir()), "--groups", "2", "--dv", "0", "--n-boot", "20",
                 "--batch-size", "12", "--out", str(out)]) == 0
    table = pd.read_parquet(out / "probes.parquet")
    assert list(table.columns[:8]) == ["layer", "target", "accuracy", "ci_lo", "ci_hi", "lens_accuracy", "lens_ci_lo",
                                       "lens_ci_hi"]
    assert set(table["target"]) == {"follow", "conflict"} or set(table["target"]) == {"conflict"}
    assert sorted(set(table["layer"])) == [-1, 0, 1]  # the tiny LLaVA's embedding output and 2 decoder layers
    conflict = table[table["target"] == "conflict"]
    assert (conflict["n_cases"] == 12).all() and conflict["lens_accuracy"].isna().all()  # 6 conflict + 6 consistent
    assert (out / "probes_summary.json").is_file() and (out / "probes_report.html").is_file()
