import math

import numpy as np
import pytest
import torch

from mechmod.stats import bootstrap_mean_ci, normal_mean_ci, wilson_interval
from mechmod.answers import OTHER, LabelSet
from mechmod.uncertainty import (
    UNCERTAINTY_MEASURES,
    entropy,
    label_counts,
    label_entropy,
    label_margin,
    margin_uncertainty,
    max_prob_uncertainty,
    miller_madow_entropy,
    plugin_entropy,
    prompt_generator,
    relative_uncertainty,
    renyi2_entropy,
    sample_labels,
    sampled_entropy,
)
from test_answers import ID, PIECES, TOK


def test_entropy_uniform_and_one_hot():
    V = 50
    assert entropy(torch.zeros(V)).item() == pytest.approx(math.log(V), abs=1e-5)
    one_hot = torch.full((V,), -float("inf"))
    one_hot[3] = 0.0
    assert entropy(one_hot).item() == pytest.approx(0.0, abs=1e-7)
    assert not torch.isnan(entropy(one_hot))


def test_entropy_hand_computed_three_tokens():
    p = torch.tensor([0.5, 0.25, 0.25])
    h = entropy(p.log())
    assert h.item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)), abs=1e-6)


def test_entropy_is_float32_for_bf16_input():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1000, generator=g) * 3
    ref = entropy(logits)
    out = entropy(logits.bfloat16())
    assert out.dtype == torch.float32
    # bf16 rounding of the logits is the only difference
    assert torch.allclose(out, entropy(logits.bfloat16().float()))
    assert torch.allclose(out, ref, rtol=2e-2)


def test_label_entropy_and_margin():
    p = np.array([[0.2, 0.2, 0.0, 0.0], [0.9, 0.05, 0.05, 0.0]])
    assert label_entropy(p)[0] == pytest.approx(math.log(2), abs=1e-6)
    assert label_margin(p)[0] == pytest.approx(0.0)
    assert label_margin(p)[1] == pytest.approx(0.85, abs=1e-6)
    assert margin_uncertainty(p)[1] == pytest.approx(0.15, abs=1e-6)
    assert set(UNCERTAINTY_MEASURES) == {"entropy", "label_entropy", "margin", "max_prob", "renyi2"}


def test_relative_uncertainty_hand_values_bounds_and_guard():
    dh, deg = relative_uncertainty([1.0, 0.0, 0.5, 0.0], [0.5, 1.0, 0.5, 0.0])
    assert dh[0] == pytest.approx(2 * 0.5 / 1.5)
    assert dh[1] == pytest.approx(-2.0)
    assert dh[2] == 0.0 and not deg[2]
    assert dh[3] == 0.0 and deg[3]
    rng = np.random.default_rng(0)
    dh, _ = relative_uncertainty(rng.exponential(size=1000), rng.exponential(size=1000))
    assert dh.min() >= -2 and dh.max() <= 2


def test_wilson_hand_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 0) == (None, None)


def test_bootstrap_mean_ci_covers_mean():
    x = np.random.default_rng(1).normal(3.0, 1.0, size=400)
    r = bootstrap_mean_ci(x, n_boot=500, seed=0)
    assert r["ci"][0] < 3.0 < r["ci"][1]
    assert r["ci"][1] - r["ci"][0] == pytest.approx(2 * 1.96 / 20, rel=0.25)
    assert bootstrap_mean_ci([], n_boot=10)["mean"] is None


def test_normal_mean_ci_by_hand():
    # mean 2.5, sample sd sqrt(5/3), n 4: half width 1.96 * sqrt(5/3) / 2
    lo, hi = normal_mean_ci([1, 2, 3, 4])
    half = 1.96 * math.sqrt(5 / 3) / 2
    assert (lo, hi) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-12)
    assert normal_mean_ci([0.7]) == [0.7, 0.7]


@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_max_prob_and_renyi2_on_uniform_distributions(n):
    logits = torch.full((60,), -float("inf"))
    logits[:n] = 0.3  # uniform over n tokens, the rest masked
    assert max_prob_uncertainty(logits).item() == pytest.approx(1 - 1 / n, abs=1e-6)
    assert renyi2_entropy(logits).item() == pytest.approx(math.log(n), abs=1e-5)


def test_max_prob_and_renyi2_one_hot_two_point_and_float32():
    one_hot = torch.full((2, 9), -1e4)
    one_hot[:, 4] = 0.0
    assert torch.allclose(max_prob_uncertainty(one_hot), torch.zeros(2), atol=1e-7)
    assert torch.allclose(renyi2_entropy(one_hot), torch.zeros(2), atol=1e-6)
    two = torch.tensor([0.75, 0.25]).log()  # by hand: 1 - 0.75; -log(0.75^2 + 0.25^2) = -log(0.625)
    assert max_prob_uncertainty(two).item() == pytest.approx(0.25, abs=1e-6)
    assert renyi2_entropy(two).item() == pytest.approx(-math.log(0.625), abs=1e-6)
    assert renyi2_entropy(two).item() < entropy(two).item()  # Renyi-2 <= Shannon
    assert renyi2_entropy(two.bfloat16()).dtype == torch.float32
    assert max_prob_uncertainty(two.bfloat16()).dtype == torch.float32


def test_miller_madow_on_hand_counts():
    assert miller_madow_entropy([20, 0, 0]) == pytest.approx(0.0)  # one category seen: no correction
    assert miller_madow_entropy([10, 10, 0]) == pytest.approx(math.log(2) + 1 / 40)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert plugin_entropy([[2, 1, 1]])[0] == pytest.approx(h)
    assert miller_madow_entropy([[2, 1, 1]])[0] == pytest.approx(h + 2 / 8)
    with pytest.raises(ValueError):
        plugin_entropy([0, 0])


def test_miller_madow_is_less_biased_than_the_plugin():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    truth = float(-(p * np.log(p)).sum())
    counts = np.random.default_rng(0).multinomial(20, p, size=4000)
    bias_plugin = plugin_entropy(counts).mean() - truth
    bias_mm = miller_madow_entropy(counts).mean() - truth
    assert bias_plugin < -0.05  # the plug-in underestimates from 20 draws
    assert abs(bias_mm) < abs(bias_plugin) / 3


def test_label_counts_keep_other_as_its_own_category():
    counts = label_counts([["red", "blue", "red", "black"], [OTHER, OTHER]], ["red", "blue"])
    assert counts.tolist() == [[2, 1, 1], [0, 0, 2]]
    assert sampled_entropy([["red"] * 20], ["red", "blue"])[0] == 0.0
    assert sampled_entropy([["red"] * 10 + ["x"] * 10], ["red", "blue"])[0] == pytest.approx(math.log(2) + 1 / 40)


def _fixed(pieces_probs: dict[str, float]) -> torch.Tensor:
    logits = torch.full((len(PIECES),), -float("inf"))
    for piece, q in pieces_probs.items():
        logits[ID[piece]] = math.log(q)
    return logits


def test_sampled_answers_converge_to_the_known_answer_distribution():
    """First token: 'Blue' 0.5, 'red' 0.3, 'B' 0.2; after 'B' the fixed
    next logits write 'lue' (blue) or 'lack' (black: other) half and half.
    True label distribution: blue 0.6, red 0.3, other 0.1."""
    labels = LabelSet(TOK, ["red", "blue"])
    first = torch.stack([_fixed({"▁Blue": 0.5, "▁red": 0.3, "▁B": 0.2}), _fixed({"▁red": 1.0})])
    then = _fixed({"lue": 0.5, "lack": 0.5})
    calls = []

    def continuation(rows, written):
        calls.append(rows.tolist())
        return then.expand(len(rows), -1)

    k = 3000
    answers = sample_labels(first, continuation, labels, k, [prompt_generator(0, "a"), prompt_generator(0, "b")])
    freq = label_counts(answers, labels.labels) / k
    assert freq[0] == pytest.approx([0.3, 0.6, 0.1], abs=0.03)
    assert freq[1].tolist() == [1.0, 0.0, 0.0]
    assert all(len(set(rows)) == len(rows) for rows in calls)  # a prompt row at most once per call
    p = np.array([0.3, 0.6, 0.1])
    assert sampled_entropy(answers, labels.labels)[0] == pytest.approx(-(p * np.log(p)).sum(), abs=0.03)
    again = sample_labels(first, continuation, labels, k, [prompt_generator(0, "a"), prompt_generator(0, "b")])
    assert again == answers  # seeded: deterministic on CPU
    other_seed = sample_labels(first, continuation, labels, k, [prompt_generator(1, "a"), prompt_generator(1, "b")])
    assert other_seed[0] != answers[0]


def test_sampled_answers_without_continuation_or_at_a_stop_token_are_other():
    labels = LabelSet(TOK, ["red", "blue"])
    first = _fixed({"▁B": 1.0})[None]
    assert sample_labels(first, None, labels, 20, [prompt_generator(0, "x")]) == [[OTHER] * 20]
    stop = _fixed({"</s>": 1.0})
    assert sample_labels(first, lambda rows, w: stop.expand(len(rows), -1), labels, 20,
                         [prompt_generator(0, "x")]) == [[OTHER] * 20]
