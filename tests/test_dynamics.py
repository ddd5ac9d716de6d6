import numpy as np
import pytest

from mechmod.dynamics import (
    NO_LAYER,
    commit_layer,
    count_oscillations,
    count_oscillations_batch,
    counted,
    counted_votes,
    last_sign_change,
    layer_bands,
    layer_votes,
    oscillation_summary,
    switch_arrivals,
    switch_rate_summary,
    switch_rates,
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
    assert commit_layer([True, False]) == NO_LAYER
    assert commit_layer(np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)).tolist() == [1, NO_LAYER]
    # columns led by the embedding output: column j is layer j - 1
    assert commit_layer([True, True, True], first_layer=-1) == -1
    assert commit_layer([True, False, True], first_layer=-1) == 1
    assert commit_layer([False, False], first_layer=-1) == NO_LAYER


def test_last_sign_change():
    assert last_sign_change([1.0, -2.0, 3.0, 4.0]) == 2
    assert last_sign_change([1.0, 0.0, 2.0]) is None
    assert last_sign_change([-1.0, 0.0, 2.0, 1.0]) == 2
    assert last_sign_change([-1.0, 0.0, 2.0, 1.0], first_layer=-1) == 1


def test_counted_drops_the_embedding_output_unless_asked():
    per_residual = np.array([["e", "l0", "l1"], ["E", "m0", "m1"]], dtype=object)  # ResidualTrace layout
    assert counted(per_residual, False).tolist() == [["l0", "l1"], ["m0", "m1"]]
    assert counted(per_residual, True).tolist() == per_residual.tolist()
    assert counted_votes([["text", "vision"], ["other", "text"]]).tolist() == [["text", "vision"], ["other", "text"]]
    assert counted_votes([["text", "vision"]], ["vision"]).tolist() == [["vision", "text", "vision"]]


def test_switch_arrivals_by_hand():
    votes = np.array([
        ["vision", "other", "text", "text", "vision"],   # switches arrive at columns 2 and 4
        ["other", "text", "text", "other", "text"],      # none
        ["text", "vision", "other", "other", "other"],   # column 1
        ["other", "other", "other", "vision", "text"],   # column 4
    ], dtype=object)
    assert switch_arrivals(votes).astype(int).tolist() == [
        [0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1]]
    assert count_oscillations_batch(votes).tolist() == [2, 0, 1, 1]


def test_switch_rates_by_hand():
    votes = np.array([
        ["vision", "other", "text", "text", "vision", "vision"],
        ["other", "text", "text", "other", "text", "text"],
        ["text", "vision", "other", "other", "other", "other"],
        ["other", "other", "other", "vision", "text", "other"],
    ], dtype=object)
    r = switch_rates(votes, first_layer=0, n_boot=200)
    assert r["n"] == 4 and r["layers"] == [0, 1, 2, 3, 4, 5]
    assert r["switches"] == [0, 1, 1, 0, 2, 0] and sum(r["switches"]) == count_oscillations_batch(votes).sum()
    assert r["rate"] == [0.0, 0.25, 0.25, 0.0, 0.5, 0.0]
    assert r["total"] == 1.0 == count_oscillations_batch(votes).mean()
    # thirds of 6 decoder layers: 0-1, 2-3, 4-5 hold 1, 1 and 2 of the 4 switches
    assert r["band_shares"] == {"early": 0.25, "middle": 0.25, "late": 0.5}
    assert r["band"] == {"name": "late", "layers": [4, 5], "share": 0.5}
    assert all(lo <= m <= hi for lo, m, hi in zip(r["ci_lo"], r["rate"], r["ci_hi"]))
    # led by an embedding output voting 'vision' in every case (layer -1): rows 1 and 2 gain a switch
    led = switch_rates(np.column_stack([np.full(4, "vision", dtype=object), votes]), first_layer=-1, n_boot=50)
    assert led["layers"] == [-1, 0, 1, 2, 3, 4, 5]
    assert led["switches"] == [0, 1, 2, 1, 0, 2, 0]
    assert led["rate"] == [0.0, 0.25, 0.5, 0.25, 0.0, 0.5, 0.0] and led["total"] == 1.5
    assert led["band"] == {"name": "early", "layers": [0, 1], "share": 0.5}
    none = switch_rates(np.full((3, 4), "text", dtype=object), n_boot=50)
    assert none["rate"] == [0.0] * 4 and none["band"] is None and none["total"] == 0.0
    assert switch_rates(np.empty((0, 4), dtype=object))["rate"] is None


def test_layer_bands():
    assert layer_bands(8) == {"early": [0, 1, 2], "middle": [3, 4, 5], "late": [6, 7]}
    assert layer_bands(3) == {"early": [0], "middle": [1], "late": [2]}


def test_switch_rates_sum_to_the_mean_oscillations_by_group():
    rng = np.random.default_rng(1)
    votes = rng.choice(np.array(["vision", "text", "other"], dtype=object), size=(300, 9))
    regions = rng.choice(np.array(["ambiguous", "clear"], dtype=object), size=300)
    controls = rng.choice(np.array(["none", "none", "text_irrelevant"], dtype=object), size=300)
    rates = switch_rate_summary(votes, regions, controls, n_boot=50)
    osc = oscillation_summary(count_oscillations_batch(votes), regions, controls, n_boot=50)
    assert set(rates) == set(osc) == {"ambiguous", "clear", "control_text_irrelevant"}
    osc_counts = count_oscillations_batch(votes)
    for k in rates:
        assert rates[k]["n"] == osc[k]["n"]
        members = (controls == k.removeprefix("control_")) if k.startswith("control_") else \
            (controls == "none") & (regions == k)
        assert sum(rates[k]["switches"]) == osc_counts[members].sum()  # exactly: integer counts
        assert rates[k]["total"] == osc[k]["mean"]  # the same mean, computed the same way
        assert sum(rates[k]["rate"]) == pytest.approx(osc[k]["mean"], abs=1e-12)  # float sums differ in the last bit


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
