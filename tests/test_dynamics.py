import numpy as np
import pytest

from mechmod.dynamics import (
    commit_layer,
    count_oscillations,
    count_oscillations_batch,
    last_sign_change,
    layer_votes,
    oscillation_summary,
)


@pytest.mark.parametrize(
    "seq,expected",
    [
        (["vision", "other", "text"], 1),  # the paper's example
        (["vision", "text", "vision"], 2),  # the paper's example
        (["other", "other"], 0),
        (["text", "text", "other", "text"], 0),
        (["vision", "text", "other", "other", "vision", "text"], 3),
        ([], 0),
    ],
)
def test_count_oscillations_hand_sequences(seq, expected):
    assert count_oscillations(seq) == expected


def test_batch_equals_scalar_on_random_sequences():
    rng = np.random.default_rng(0)
    votes = rng.choice(np.array(["vision", "text", "other"], dtype=object), size=(200, 17))
    batch = count_oscillations_batch(votes)
    assert [count_oscillations(list(r)) for r in votes] == batch.tolist()


def test_layer_votes():
    top = np.array([["red", "blue", "green"], ["blue", "blue", "other"]], dtype=object)
    v = layer_votes(top, ["red", "red"], ["blue", "blue"])
    assert v.tolist() == [["vision", "text", "other"], ["text", "text", "other"]]


def test_commit_layer():
    assert commit_layer([False, True, False, True, True]) == 3
    assert commit_layer([True, True]) == 0
    assert commit_layer([True, False]) == -1
    assert commit_layer(np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)).tolist() == [1, -1]


def test_last_sign_change():
    assert last_sign_change([1.0, -2.0, 3.0, 4.0]) == 2
    assert last_sign_change([1.0, 0.0, 2.0]) is None
    assert last_sign_change([-1.0, 0.0, 2.0, 1.0]) == 2


def test_oscillation_summary_means():
    osc = np.array([2, 4, 0, 1, 0, 0])
    reg = np.array(["ambiguous", "ambiguous", "clear", "clear", "ambiguous", "clear"], dtype=object)
    ctl = np.array(["none", "none", "none", "none", "text_irrelevant", "text_irrelevant"], dtype=object)
    s = oscillation_summary(osc, reg, ctl, n_boot=200)
    assert s["ambiguous"]["mean"] == 3.0 and s["ambiguous"]["n"] == 2
    assert s["clear"]["mean"] == 0.5
    assert s["control_text_irrelevant"]["mean"] == 0.0 and s["control_text_irrelevant"]["n"] == 2


def test_logit_diff_by_dh_bins_by_hand():
    from mechmod.dynamics import logit_diff_by_dh

    dh = np.array([-1.2, -0.9, 0.1, 0.2, 3.0])  # 3.0 is outside the edges
    diffs = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, -2.0], [2.0, 0.0], [9.0, 9.0]])
    out = logit_diff_by_dh(dh, diffs, edges=[-2.0, -1.0, 0.0, 1.0])
    assert out["n"] == [1, 1, 2]
    assert out["mean"] == [[1.0, 2.0], [3.0, 4.0], [1.0, -1.0]]
    assert out["centers"] == [-1.5, -0.5, 0.5] and out["n_layers"] == 2
    empty = logit_diff_by_dh(np.array([0.5]), np.array([[1.0, 1.0]]), edges=[-1.0, 0.0, 1.0])
    assert empty["mean"][0] is None and empty["n"] == [0, 1]


def test_pick_case_study_prefers_the_image_whose_descriptions_disagree():
    from mechmod.dynamics import pick_case_study

    images = ["a", "a", "a", "b", "b", "b", "c", "c"]
    dts = [0, 1, 2, 0, 1, 2, 0, 1]
    final = [1.0, 1.1, 0.9, -3.0, 0.5, 4.0, -10.0, 10.0]  # c spreads most but lacks dt 2
    assert pick_case_study(images, dts, final) == "b"
    assert pick_case_study(["x"], [0], [0.0]) is None
