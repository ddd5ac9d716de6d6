import math

import numpy as np
import pytest
import torch

from mechmod.stats import bootstrap_mean_ci, wilson_interval
from mechmod.uncertainty import (
    UNCERTAINTY_MEASURES,
    entropy,
    label_entropy,
    label_margin,
    margin_uncertainty,
    relative_uncertainty,
)


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
    assert set(UNCERTAINTY_MEASURES) == {"entropy", "label_entropy", "margin"}


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
