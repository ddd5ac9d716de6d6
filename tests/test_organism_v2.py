"""Organism v2: the training images' distractor policy and its shape-blind
shortcut rates, graded text tiers, the planted conflict preference
(text weight, fine-tune), resumable training, and the oracle balance point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mechmod.data import color as C
from mechmod.data.color.render import render_image
from mechmod.errors import MechmodError
from mechmod.models.organism.model import OrganismConfig
from mechmod.organism.preference import oracle_balance_point, oracle_outcomes
from mechmod.organism.shortcuts import tier_rates
from mechmod.organism.train import conflict_target, train

SMALL = {"groups_per_step": 3, "knowledge_per_step": 2, "vision_per_step": 2}


def _same_colour_contacts(canvas) -> int:
    """4-adjacent visible pixels of two different objects of one colour."""
    colour = np.array([list(C.COLORS).index(o[1]) for o in canvas.objects] + [-1])
    own = canvas.owner
    n = 0
    for a, b in ((own[1:], own[:-1]), (own[:, 1:], own[:, :-1])):
        n += int(((a != b) & (a >= 0) & (b >= 0) & (colour[a] == colour[b])).sum())
    return n


def test_binding_policy_colours():
    """Objects avoid only the text colour and take the target's own colour on
    other shapes; objects of one colour never touch (each is its own
    component); the target sits anywhere in the drawing order; the paper's
    rule is the default."""
    from mechmod.data.color.binding import MIN_OBJECTS, place_binding
    from mechmod.data.color.render import TIERS

    rng = np.random.default_rng(0)
    same_colour, layers = 0, set()
    for g in C.sample_groups(24, seed=1):
        for dv in (0, 3, 8, 12):
            _, info = render_image(g, dv, rng, distractors="binding")
            colours = [d.color for d in info.distractors]
            assert g.text_color not in colours
            assert all(d.shape != g.target_shape for d in info.distractors)
            assert info.n_distractors + 1 >= MIN_OBJECTS
            same_colour += g.vision_color in colours
            layers.add(info.target_layer)
            canvas = place_binding(g, TIERS[dv], rng)
            assert canvas is not None and _same_colour_contacts(canvas) == 0
        _, info = render_image(g, 3, rng)  # default: the paper's rule
        assert not {g.vision_color, g.text_color} & {d.color for d in info.distractors}
        assert info.target_layer == 0
    assert same_colour >= 24 and len(layers) >= 5
    with pytest.raises(MechmodError, match="distractor policy"):
        render_image(g, 1, rng, distractors="none")


def test_default_render_unchanged_by_the_option():
    g = C.sample_groups(2, seed=4)[1]
    a, _ = render_image(g, 9, np.random.default_rng(3))
    b, _ = render_image(g, 9, np.random.default_rng(3), distractors="paper")
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_shape_blind_shortcuts_on_training_pixels():
    """On a sparse, a large-target and a crowded tier, neither a fixed
    shape-blind rule nor a classifier fitted on one seeded set of training
    images scores above 40% on another (the issue's bar; every tier in the
    slow test)."""
    for dv in (1, 5, 10):
        rates = tier_rates(dv, 40, 40, seed=0)
        for rule in ("largest", "fewest_components", "most_concentrated", "classifier"):
            assert rates[rule] <= 0.4, (dv, rule, rates)


def test_largest_object_rule_on_study_pixels():
    """The study's images (the paper's policy) at dv 9-13: the colour of the
    largest object answers at most 40% (target-sized distractors)."""
    for dv in (9, 11):
        rates = tier_rates(dv, 2, 30, seed=3, policy="paper")
        assert rates["largest"] <= 0.4, (dv, rates)


@pytest.mark.slow
def test_shape_blind_shortcuts_every_tier_full():
    from mechmod.organism.shortcuts import training_shortcut_rates

    rates = training_shortcut_rates(200, 200, seed=0)
    for dv, r in rates.items():
        for rule in ("largest", "fewest_components", "most_concentrated", "classifier"):
            assert r[rule] <= 0.4, (dv, rule, r)
    paper = training_shortcut_rates(2, 200, seed=0, tiers=range(9, 14), policy="paper")
    assert all(r["largest"] <= 0.4 for r in paper.values()), paper


def test_text_tiers_fail_at_their_rates():
    from mechmod.organism.data import TEXT_FAILURE, ImagePool, TrainingStream

    stream = TrainingStream(0, ImagePool(0, (1,) * 14, 32, processes=1, patch_size=8), **SMALL)
    for dt, rate in enumerate(TEXT_FAILURE):
        labels = [stream.text_label("red", dt) for _ in range(4000)]
        wrong = np.mean([lab != "red" for lab in labels])
        assert abs(wrong - rate) < 0.025, (dt, wrong)
        assert set(labels) <= set(C.COLORS)
    assert TEXT_FAILURE[0] == 0.0 < TEXT_FAILURE[1] < TEXT_FAILURE[2]


def test_conflict_target_text_weight():
    p_v = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    p_t = torch.tensor([[0.1, 0.8, 0.1], [0.9, 0.1, 0.0]])
    q1 = conflict_target(p_v, p_t, 1.0)
    prod = p_v * p_t
    assert torch.allclose(q1, prod / prod.sum(-1, keepdim=True), atol=1e-6)
    q25 = conflict_target(p_v, p_t, 2.5)
    w = p_v * p_t ** 2.5
    assert torch.allclose(q25, w / w.sum(-1, keepdim=True), atol=1e-6)
    q04 = conflict_target(p_v, p_t, 0.4)
    assert q1[0].argmax() == 1 and q04[0].argmax() == 0  # W < 1: the vision answer wins
    assert q25[0, 1] > q1[0, 1] > q04[0, 1]
    assert torch.allclose(conflict_target(p_v, p_t, 0.0), p_v / p_v.sum(-1, keepdim=True))
    assert torch.allclose(q1.sum(-1), torch.ones(2))


def _tiny_deep() -> OrganismConfig:
    cfg = OrganismConfig.tiny()
    cfg.text_layers = 8
    return cfg


def _run(out, steps, **kw):
    return train(out, seed=3, steps=steps, cfg=_tiny_deep(), threads=1, workers=1, log_every=1, progress=False,
                 vocab_groups=50, pool_per_tier=(2,) * 14, stream_kw=SMALL, warmup=2, binding_layers=(0,), **kw)


def test_train_deep_shrunk_records_weight_device_time(tmp_path):
    r = _run(tmp_path / "org", 3, text_weight=2.5)
    info = json.loads((tmp_path / "org" / "organism.json").read_text())
    assert info["text_weight"] == 2.5 and info["config"]["text_layers"] == 8 and info["base"] is None
    assert info["device"].startswith("cpu") and info["wall_time_s"] >= 0 and info["steps_done"] == 3
    assert info["text_failure"] == [0.0, 0.12, 0.25] and info["image_distractors"] == "binding"
    assert len(r["log"]) == 3 and all(math.isfinite(row["loss_multi"]) for row in r["log"])
    assert not (tmp_path / "org" / "train_state.pt").exists()


def test_finetune_from_tiny_base(tmp_path):
    from click.testing import CliRunner

    from mechmod.cli import _register, cli

    _run(tmp_path / "base", 2)
    _register()
    res = CliRunner().invoke(cli, ["organism", "finetune", "--from", str(tmp_path / "base"), "--out",
                                   str(tmp_path / "ft"), "--text-weight", "0.4", "--steps", "2", "--threads", "1",
                                   "--workers", "1", "--pool-per-tier", "2", "--no-card"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "ft" / "organism.json").read_text())
    assert info["text_weight"] == 0.4 and info["steps_done"] == 2 and info["seed"] == 3
    assert info["base"]["dir"] == str(tmp_path / "base") and info["base"]["steps"] == 2
    a, b = load_file(tmp_path / "base" / "model.safetensors"), load_file(tmp_path / "ft" / "model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    from mechmod.organism import train as T

    _run(tmp_path / "full", 4, save_every=2)
    calls = {"n": 0}
    real = T.Objective.__call__

    def stop_after_two(self, batch, acc):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed after the step-2 save
        return real(self, batch, acc)

    monkeypatch.setattr(T.Objective, "__call__", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", 4, save_every=2)
    assert (tmp_path / "cut" / "train_state.pt").is_file()
    monkeypatch.setattr(T.Objective, "__call__", real)
    r = _run(tmp_path / "cut", 4, save_every=2, resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    full_log = json.loads((tmp_path / "full" / "training_log.json").read_text())
    assert [row["loss_vision"] for row in r["log"]] == pytest.approx([row["loss_vision"] for row in full_log],
                                                                      abs=1e-4)


def _simulated_run(n: int, w_true: float, seed: int = 0) -> pd.DataFrame:
    """Conflicts whose multimodal answer follows argmax p_v * p_t^w_true."""
    rng = np.random.default_rng(seed)
    labels = ["red", "blue", "green", "yellow"]
    rows = []
    for _ in range(n):
        def belief(answer):
            logits = rng.normal(0, 0.3, len(labels))
            logits[labels.index(answer)] += rng.uniform(0.2, 5.0)
            p = np.exp(logits)
            return p / p.sum()
        y_v, y_t = rng.choice(labels, 2, replace=False)
        p_v, p_t = belief(y_v), belief(y_t)
        h = lambda p: float(-(p * np.log(p)).sum())  # noqa: E731
        h_v, h_t = h(p_v), h(p_t)
        rows.append({"p_v": p_v.tolist(), "p_t": p_t.tolist(), "candidates": labels, "y_v": y_v, "y_t": y_t,
                     "dh_rel": 2 * (h_t - h_v) / (h_t + h_v)})
    df = pd.DataFrame(rows)
    return df.assign(follow=oracle_outcomes(df, w_true))


def test_oracle_balance_point_recovers_a_planted_weight():
    df = _simulated_run(600, 2.5)
    decided = df["follow"] != "other"
    assert decided.mean() > 0.9
    bp = oracle_balance_point(df, 2.5, n_boot=200)
    from mechmod.following import balance_point

    direct = balance_point(df["dh_rel"][decided], df["follow"][decided] == "text", n_boot=200)
    assert bp.status == "ok" and bp.estimate == pytest.approx(direct.estimate)
    # the weight moves the balance point: a text preference lies right of a vision one
    assert oracle_balance_point(df, 0.4, n_boot=0).fitted_crossing < oracle_balance_point(df, 1.0, n_boot=0).fitted_crossing \
        < bp.estimate
    # the planted weight explains the outcomes better than the others
    agree = {w: float((oracle_outcomes(df, w) == df["follow"]).mean()) for w in (0.4, 1.0, 2.5, 6.0)}
    assert agree[2.5] == 1.0 and max(v for w, v in agree.items() if w != 2.5) < 0.97
