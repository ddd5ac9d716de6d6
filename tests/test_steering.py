"""Preference steering on the tiny LLaVA: alpha = 0 is the unsteered run,
the batched alpha sweep equals a plain-hook loop, a constructed direction
raises the text answer's logit difference monotonically, nnsight ==
TransformerLens, the direction and the split on hand-made arrays, the
balance-point summary on a simulation with a known shift, the study and the
CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mechmod.decoding import extend_inputs
from mechmod.interventions import steering
from mechmod.interventions.steering import SteerSpec, preference_direction, split_groups, steer, steering_summary
from mechmod.tracing import trace
from tests.run_helpers import color_dataset

Q = "What color is the circle ?"


@pytest.fixture(scope="module")
def enc(mllm):
    imgs = [Image.new("RGB", (40, 30), c) for c in ((200, 30, 30), (30, 30, 200))]
    return mllm.encode(imgs, ["The circle is red .", "The circle has the same color as a banana ."], [Q, Q])


@pytest.mark.parametrize("positions", ["all", "last"])
def test_alpha_zero_reproduces_the_unsteered_run(mllm, enc, positions):
    d = torch.randn(mllm.d_model, generator=torch.Generator().manual_seed(0))
    out = steer(mllm, enc, d, SteerSpec(layer=0, alphas=(-1.0, 0.0, 1.0), positions=positions))
    ref = trace(mllm, enc, keep_resid=False).logits
    torch.testing.assert_close(out[1], ref, atol=1e-5, rtol=0)
    assert (out[2] - ref).abs().max() > 1e-3


def test_batched_alpha_sweep_equals_a_plain_hook_loop(mllm, enc):
    d = torch.randn(mllm.d_model, generator=torch.Generator().manual_seed(1))
    alphas = (-2.0, 0.5, 3.0)
    out = steer(mllm, enc, d, SteerSpec(layer=1, alphas=alphas), chunk=2)
    mask = enc.inputs["attention_mask"].float()
    for k, a in enumerate(alphas):
        hd = mllm.layers[1].register_forward_hook(lambda mod, args, o, a=a: o + a * mask[..., None] * d)
        with torch.no_grad():
            ref = mllm.model(**enc.inputs).logits[:, -1].float()
        hd.remove()
        torch.testing.assert_close(out[k], ref, atol=1e-4, rtol=0)


def test_steering_along_the_direction_raises_the_text_logit_difference_monotonically(mllm, enc):
    # constructed case at the last layer: text-following residuals sit at h + u, vision-following at h - u,
    # u = g * (W_text - W_vision), so the direction is 2u and logit(text) - logit(vision) = u.x / rms(x) rises in alpha
    t, v = (mllm.tokenizer.convert_tokens_to_ids(w) for w in ("red", "blue"))
    W, g = mllm.lm_head.weight.detach(), mllm.final_norm.weight.detach()
    u = g * (W[t] - W[v])
    last = mllm.n_layers - 1
    h = torch.randn(6, mllm.n_layers + 1, mllm.d_model, generator=torch.Generator().manual_seed(2))
    h[:3, last + 1] += u
    h[3:, last + 1] -= u
    d = preference_direction(h, ["text"] * 3 + ["vision"] * 3, last)
    torch.testing.assert_close(d, h[:3, last + 1].mean(0) - h[3:, last + 1].mean(0))
    alphas = tuple(np.linspace(0, 8, 9).tolist())
    logits = steer(mllm, enc, d, SteerSpec(layer=last, alphas=alphas, positions="last"))
    ld = logits[..., t] - logits[..., v]  # [alpha, B]
    assert (ld.diff(dim=0) > 0).all()


def test_backends_agree(mllm, enc):
    d = torch.randn(mllm.d_model, generator=torch.Generator().manual_seed(3))
    spec = SteerSpec(layer=0, alphas=(-1.0, 0.0, 2.0))
    a = steer(mllm, enc, d, spec, backend="hooks")  # the study's default
    for backend in ("nnsight", "transformer_lens"):
        torch.testing.assert_close(a, steer(mllm, enc, d, spec, backend=backend), atol=1e-4, rtol=0)


def test_preference_direction_and_split_on_hand_arrays():
    resid = torch.zeros(4, 3, 2)
    resid[:, 2] = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [5.0, 5.0]])
    d = preference_direction(resid, ["text", "text", "vision", "other"], layer=1)
    torch.testing.assert_close(d, torch.tensor([2.0, 0.0]))
    with pytest.raises(Exception, match="text- and vision-following"):
        preference_direction(resid, ["text", "other", "other", "other"], layer=1)
    # within groups: each group's colours add an offset that the pooled difference keeps and this one cancels
    h = torch.zeros(6, 2, 2)
    h[:, 1] = torch.tensor([[10.0, 0.0], [11.0, 0.0], [12.0, 0.0], [0.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    follow, grp = ["text", "text", "vision", "text", "vision", "vision"], ["g1", "g1", "g1", "g2", "g2", "g2"]
    torch.testing.assert_close(preference_direction(h, follow, 0, grp), torch.tensor([-1.5, 0.0]))  # -1.5 in each group
    torch.testing.assert_close(preference_direction(h, follow, 0), torch.tensor([2.0, 0.0]))  # pooled: 7 - 5, the offset wins
    with pytest.raises(Exception, match="no group holds both"):
        preference_direction(h, ["text", "text", "text", "vision", "vision", "other"], 0, grp)
    groups = ["a", "a", "b", "c", "c", "d"]
    train = split_groups(groups, 0.5, seed=0)
    assert train.any() and (~train).any()
    assert all(len({t for g2, t in zip(groups, train) if g2 == g}) == 1 for g in groups)  # a group on one side
    assert (split_groups(groups, 0.5, seed=0) == train).all()


def test_steering_summary_recovers_a_known_balance_shift():
    rng = np.random.default_rng(0)
    dh = rng.uniform(-2, 2, 4000)
    alphas = [-1.0, 0.0, 1.0]
    follow = [np.where(rng.random(dh.size) < 1 / (1 + np.exp(4 * (dh - 0.5 * a))), "text", "vision") for a in alphas]
    s = steering_summary(alphas, dh, follow, n_boot=0)
    est = [p["balance_point"]["estimate"] for p in s["per_alpha"]]
    np.testing.assert_allclose(est, [-0.5, 0.0, 0.5], atol=0.1)
    assert s["balance_per_alpha"] == pytest.approx(0.5, abs=0.1)
    assert s["per_alpha"][1]["balance_shift"] == 0.0 and s["tfr_per_alpha"] > 0
    json.dumps(s, allow_nan=False)


@pytest.mark.parametrize("shift", [0.4, -0.3])
def test_a_planted_steering_effect_is_recovered_in_balance_point_units(shift):
    """P(text) = sigmoid(a + b (dHrel - c - s alpha)): the balance point
    sits at c + s alpha - a/b, so it moves by s per unit alpha."""
    rng = np.random.default_rng(1)
    dh = rng.uniform(-2, 2, 800)
    alphas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    a, b, c = 0.3, -3.0, 0.2
    follow = [np.where(rng.random(dh.size) < 1 / (1 + np.exp(-(a + b * (dh - c - shift * al)))), "text", "vision")
              for al in alphas]
    s = steering_summary(alphas, dh, follow, n_boot=300, seed=0)
    lo, hi = s["balance_per_alpha_ci"]
    assert lo < shift < hi and not lo < 0 < hi
    assert hi - lo < 0.3
    assert s["balance_per_alpha"] == pytest.approx(shift, abs=0.1)
    assert s["all_alphas_defined"] and s["n_alphas_defined"] == len(alphas)
    still = [np.where(rng.random(dh.size) < 1 / (1 + np.exp(-(a + b * (dh - c)))), "text", "vision") for _ in alphas]
    flat = steering_summary(alphas, dh, still, n_boot=300, seed=0)  # no effect: 0 inside the interval
    assert flat["balance_per_alpha_ci"][0] < 0 < flat["balance_per_alpha_ci"][1]


@pytest.fixture(scope="module")
def dataset():
    return color_dataset(groups=2, dv=(0,))


def _label_by_hand(monkeypatch):
    real = steering.baseline

    def labelled(*a, **k):  # the random tiny model follows neither modality: label the cases by hand
        b = real(*a, **k)
        b.table["y_v"], b.table["y_t"] = b.table["answer_vision"], b.table["answer_text"]
        b.table["follow"] = np.where(np.arange(len(b.table)) % 2 == 0, "text", "vision")
        labelled.clean = b.table.set_index("case_id")["y_m"]
        return b

    monkeypatch.setattr(steering, "baseline", labelled)
    return labelled


def test_steering_study_at_alpha_zero_matches_the_clean_answers(mllm, dataset, monkeypatch):
    from mechmod.data import load_cases

    labelled = _label_by_hand(monkeypatch)
    cfg = steering.SteerStudyConfig(layers=(0,), alphas=(-1.0, 1.0), n_boot=0)
    study = steering.run_steering(mllm, dataset, load_cases(dataset), cfg)
    rows = study.rows
    assert set(rows["alpha"]) == {-1.0, 0.0, 1.0} and study.summary["n_heldout"] == 3
    zero = rows[rows["alpha"] == 0.0].set_index("case_id")
    assert (zero["y_m"] == labelled.clean.loc[zero.index]).all()
    assert study.directions[0].shape == (mllm.d_model,)
    json.dumps(study.summary, allow_nan=False)


def test_steer_cli(mllm, dataset, tmp_path, capsys, monkeypatch):
    from mechmod.cli import main

    args = ["steer", "--model", mllm.name, "--dataset", str(dataset), "--n-boot", "0"]
    assert main(args + ["--out", str(tmp_path / "a"), "--layer", "0"]) == 2  # follows neither modality: one-line error
    assert "text- and vision-following" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "a"), "--layer", "9"]) == 2
    _label_by_hand(monkeypatch)
    out = tmp_path / "b"
    assert main(args + ["--out", str(out), "--layer", "1", "--alpha", "2"]) == 0
    summary = json.loads((out / "steer_summary.json").read_text())
    assert summary["alphas"] == [0.0, 2.0] and set(summary["layers"]) == {"1"}
    assert len(pd.read_parquet(out / "steer_rows.parquet")) == 2 * 3
    assert (out / "steer_directions.safetensors").is_file() and (out / "steer_report.html").stat().st_size > 100_000


@pytest.mark.parametrize("positions", ["all", "last"])
def test_steered_continuation_steers_the_prompt_positions_only(mllm, enc, positions):
    # the continuation of each alpha's copy (3 alphas, chunks of 2) equals a plain forward of the prompt + written
    # tokens with a hook adding alpha * d at the prompt's steered positions ('last': the answer position, not the
    # newest token); the written tokens are not steered
    d = torch.randn(mllm.d_model, generator=torch.Generator().manual_seed(3))
    alphas = (-2.0, 1.0, 3.0)
    mores = []
    steer(mllm, enc, d, SteerSpec(layer=0, alphas=alphas, positions=positions),
          metric=lambda logits, more: mores.append(more) or logits, chunk=2)
    T = enc.inputs["input_ids"].shape[1]
    mask = enc.inputs["attention_mask"].float()
    rows, written = torch.tensor([0, 1]), torch.tensor([[5, 7], [9, 11]])
    extended = extend_inputs(enc.inputs, rows, written, pad_id=0)

    def reference(a, at_end=False):
        def add(mod, args, o):
            h = (o[0] if isinstance(o, tuple) else o).clone()
            if positions == "last":
                h[:, -1 if at_end else T - 1] += a * d
            else:
                h[:, :T] += a * mask[..., None] * d
            return (h, *o[1:]) if isinstance(o, tuple) else h
        hd = mllm.layers[0].register_forward_hook(add)
        with torch.no_grad():
            out = mllm.model(**extended).logits[:, -1].float()
        hd.remove()
        return out
    for a, more in zip(alphas, mores):
        torch.testing.assert_close(more(rows, written), reference(a), atol=1e-4, rtol=0)
    if positions == "last":  # steering the newest token instead would differ
        assert (reference(alphas[0], at_end=True) - reference(alphas[0])).abs().max() > 1e-3
