"""Activation patching on the tiny LLaVA: ground truths (source == target,
full residual, last layer's last token), the batched sweep against a naive
per-example per-layer loop with plain PyTorch hooks, span alignment, head
and MLP knock-outs, nnsight == TransformerLens, metrics on hand-made
arrays, the dataset-level study and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mechmod.answers import LabelSet
from mechmod.decoding import extend_inputs
from mechmod.interventions import heads as H
from mechmod.interventions import patch_study
from mechmod.interventions.core import forward
from mechmod.interventions.patching import (PatchSpec, align_positions, changed, critical_window,
                                            first_layer_reaching, flip_rate, flips_by_dh, patch_layers, restoration,
                                            shared_prefix)
from tests.run_helpers import color_dataset

Q = "What color is the circle ?"
RED, BLUE = (200, 30, 30), (30, 30, 200)


def img(rgb):
    return Image.new("RGB", (40, 30), rgb)


def conflict(m, descs=("The circle is red .", "The square is blue ."), colors=(RED, BLUE)):
    return m.encode([img(c) for c in colors], list(descs), [Q] * len(descs))


def vision(m, colors=(RED, BLUE)):
    return m.encode([img(c) for c in colors], [None] * len(colors), [Q] * len(colors))


def clean(m, enc, backend="nnsight"):
    return forward(m, enc.inputs, backend=backend)[0]


@pytest.mark.parametrize("component", ["resid", "attn", "mlp"])
def test_patch_with_source_equal_to_target_changes_nothing(mllm, component):
    enc = conflict(mllm)
    out, src, _ = patch_layers(mllm, enc, enc, PatchSpec(component, "all"))
    assert out.shape == (mllm.n_layers, 2, clean(mllm, enc).shape[-1])
    torch.testing.assert_close(out, clean(mllm, enc).expand_as(out), atol=1e-5, rtol=0)


def test_full_residual_patch_reproduces_the_source_at_every_layer(mllm):
    target = conflict(mllm)
    source = conflict(mllm, descs=("The square is blue .", "The circle is red ."), colors=(BLUE, RED))
    assert source.inputs["input_ids"].shape == target.inputs["input_ids"].shape
    out, src_logits, align = patch_layers(mllm, source, target, PatchSpec("resid", "all"))
    assert (clean(mllm, target) - src_logits).abs().max() > 1e-3  # not vacuous
    for layer in range(mllm.n_layers):  # layer 0 included: all positions from the source = the source's run
        torch.testing.assert_close(out[layer], src_logits, atol=1e-5, rtol=0)
    # 'all' on identical layouts is the identity on every non-pad position
    attended = target.inputs["attention_mask"].bool()
    assert align.valid.sum(1).tolist() == attended.sum(1).tolist()
    assert torch.equal(align.src[align.valid], align.tgt[align.valid])


def test_last_layer_last_token_reproduces_the_source_logits(mllm):
    source, target = vision(mllm), conflict(mllm)  # different lengths
    assert source.inputs["input_ids"].shape[1] != target.inputs["input_ids"].shape[1]
    last = mllm.n_layers - 1
    out, src_logits, _ = patch_layers(mllm, source, target, PatchSpec("resid", "last", layers=(last,)))
    torch.testing.assert_close(out[0], src_logits, atol=1e-5, rtol=0)


def test_alignment_is_by_span(mllm):
    source, target = vision(mllm), conflict(mllm, descs=("The circle is red .", "The circle has the same color as a banana ."))
    al = align_positions(source, target, ("description", "question", "last"))
    Ts, Tt = source.inputs["input_ids"].shape[1], target.inputs["input_ids"].shape[1]
    for i in range(2):
        qs = torch.nonzero(source.spans["question"][i]).flatten().tolist()
        qt = torch.nonzero(target.spans["question"][i]).flatten().tolist()
        pairs = sorted(zip(al.src[i][al.valid[i]].tolist(), al.tgt[i][al.valid[i]].tolist()))
        assert pairs == sorted(list(zip(qs, qt)) + [(Ts - 1, Tt - 1)])  # no description in a vision-only source
        assert [int(source.inputs["input_ids"][i, a]) for a in qs] == [int(target.inputs["input_ids"][i, b]) for b in qt]


def _naive(m, src_enc, tgt_enc, layer, component):
    """Single example, single layer, plain forward hooks, aligned by hand."""
    mod = m.layers[layer] if component == "resid" else m.layers[layer].mlp
    qs = torch.nonzero(src_enc.spans["question"][0]).flatten()
    qt = torch.nonzero(tgt_enc.spans["question"][0]).flatten()
    src_pos = torch.cat([qs, torch.tensor([src_enc.inputs["input_ids"].shape[1] - 1])])
    tgt_pos = torch.cat([qt, torch.tensor([tgt_enc.inputs["input_ids"].shape[1] - 1])])
    saved = {}

    def grab(module, args, out):
        saved["h"] = (out[0] if isinstance(out, tuple) else out)[0, src_pos].clone()

    def put(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[0, tgt_pos] = saved["h"]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    with torch.no_grad():
        hd = mod.register_forward_hook(grab)
        m.model(**src_enc.inputs)
        hd.remove()
        hd = mod.register_forward_hook(put)
        logits = m.model(**tgt_enc.inputs).logits[0, -1]
        hd.remove()
    return logits.float()


def _hooked(m, src_enc, tgt_enc, layer, src_pos, tgt_pos):
    """Batch-1 patch of layer ``layer``'s output at the given positions, plain hooks."""
    saved = {}
    hd = m.layers[layer].register_forward_hook(lambda mod, a, o: saved.__setitem__("h", o[0, src_pos].clone()))
    with torch.no_grad():
        m.model(**src_enc.inputs)
    hd.remove()

    def put(mod, a, o):
        o = o.clone()
        o[0, tgt_pos] = saved["h"]
        return o
    hd = m.layers[layer].register_forward_hook(put)
    with torch.no_grad():
        logits = m.model(**tgt_enc.inputs).logits[0, -1].float()
    hd.remove()
    return logits


def test_identity_writes_are_left_out_and_change_nothing(mllm):
    """A vision-only source shows the target's image after the same template,
    so its image activations are the target's own: the image patch needs no
    forward, and its result is what hooks writing them give."""
    source, target = vision(mllm), conflict(mllm)
    image = align_positions(source, target, "image")
    assert image.valid.all(1).any()
    assert not changed(image, source, target, mllm.image_token_id).valid.any()
    for i in range(2):  # the shared prefix runs past the image, to the description
        s0, t0, n = shared_prefix(source, target, i, mllm.image_token_id)
        ids = target.inputs["input_ids"][i, t0:]
        assert int(torch.nonzero(ids == mllm.image_token_id).max()) < n
        assert n == int(torch.nonzero(target.spans["description"][i]).min()) - t0
    other = vision(mllm, colors=(BLUE, RED))  # another image: every pair is a write
    assert torch.equal(changed(align_positions(other, target, "image"), other, target, mllm.image_token_id).valid,
                       align_positions(other, target, "image").valid)
    qa = align_positions(source, target, ("question", "last"))  # text after the description: not shared
    assert torch.equal(changed(qa, source, target, mllm.image_token_id).valid, qa.valid)
    out, _, _ = patch_layers(mllm, source, target, PatchSpec("resid", "image"))
    assert torch.equal(out, clean(mllm, target).expand_as(out))
    for i in range(2):
        s1, t1 = (mllm.encode([img((RED, BLUE)[i])], d, [Q]) for d in ([None], [conflict.__defaults__[0][i]]))
        pos = [torch.nonzero(e.spans["image"][0]).flatten() for e in (s1, t1)]
        for layer in range(mllm.n_layers):
            torch.testing.assert_close(out[layer, i], _hooked(mllm, s1, t1, layer, *pos), atol=1e-4, rtol=0)


def test_same_image_by_object_then_by_pixels():
    from mechmod.models.base import same_image

    red = img(RED)
    assert same_image(red, red) and same_image(red, img(RED)) and same_image(red, red.convert("RGBA"))
    assert not same_image(red, img(BLUE)) and not same_image(red, None) and not same_image(None, None)
    assert not same_image(red, red.resize((red.width + 1, red.height)))


@pytest.mark.parametrize("component", ["resid", "mlp"])
def test_batched_sweep_equals_naive_per_example_per_layer_loop(mllm, component):
    colors, descs = (RED, BLUE), ("The circle is red .", "The circle has the same color as a banana .")
    source, target = vision(mllm, colors), conflict(mllm, descs, colors)
    out, _, _ = patch_layers(mllm, source, target, PatchSpec(component, ("question", "last")), chunk=mllm.n_layers)
    for i in range(2):
        s1 = mllm.encode([img(colors[i])], [None], [Q])
        t1 = mllm.encode([img(colors[i])], [descs[i]], [Q])
        for layer in range(mllm.n_layers):
            torch.testing.assert_close(out[layer, i], _naive(mllm, s1, t1, layer, component), atol=1e-4, rtol=0)


def test_backends_agree(mllm):
    """hooks (the studies' default), nnsight and TransformerLens give equal patches and knock-outs."""
    source, target = vision(mllm), conflict(mllm)
    others = ("nnsight", "transformer_lens")
    for spec in (PatchSpec("resid", ("question", "last")), PatchSpec("attn", "last"), PatchSpec("mlp", "question")):
        a = patch_layers(mllm, source, target, spec, backend="hooks")[0]
        for backend in others:
            b = patch_layers(mllm, source, target, spec, backend=backend)[0]
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    us = H.units(mllm)
    a = H.knockout_units(mllm, target, us, "zero", backend="hooks")
    for backend in others:
        torch.testing.assert_close(a, H.knockout_units(mllm, target, us, "zero", backend=backend), atol=1e-4, rtol=0)
    a = H.patch_units(mllm, source, target, us, backend="hooks")[0]
    for backend in others:
        torch.testing.assert_close(a, H.patch_units(mllm, source, target, us, backend=backend)[0], atol=1e-4, rtol=0)


def test_head_knockout_matches_a_plain_hook_and_mean_of_self_is_identity(mllm):
    target = conflict(mllm)
    us = H.units(mllm)
    out = H.knockout_units(mllm, target, us, "zero", chunk=3)  # chunks of 3 units cross layer boundaries
    n_heads = sum(u.kind == "head" for u in us) // mllm.n_layers
    dh = mllm.d_model // n_heads
    for k, u in enumerate(us):
        if u.kind != "head":
            continue
        o_proj = mllm.layers[u.layer].self_attn.o_proj

        def zero(module, args, h=u.head):
            x = args[0].clone()
            x[:, -1, h * dh:(h + 1) * dh] = 0
            return (x,)

        hd = o_proj.register_forward_pre_hook(zero)
        with torch.no_grad():
            ref = mllm.model(**target.inputs).logits[:, -1].float()
        hd.remove()
        torch.testing.assert_close(out[k], ref, atol=1e-4, rtol=0)
    one = conflict(mllm, descs=("The circle is red .",), colors=(RED,))
    means = H.mean_outputs(mllm, [one], us)
    same = H.knockout_units(mllm, one, us, "mean", means=means)
    torch.testing.assert_close(same, clean(mllm, one).expand_as(same), atol=1e-5, rtol=0)
    src_eq = H.patch_units(mllm, target, target, us)[0]
    torch.testing.assert_close(src_eq, clean(mllm, target).expand_as(src_eq), atol=1e-5, rtol=0)


def test_classify_units_by_sign_and_significance():
    contrib = np.array([[1.0, 1.2, 0.9, 1.1], [-2.0, -2.1, -1.9, -2.0], [1.0, -1.0, 0.5, -0.5]])
    mean, t, label = H.classify_units(contrib, t_min=2.0)
    assert list(label) == ["text", "vision", "neutral"]
    np.testing.assert_allclose(mean, [1.05, -2.0, 0.0])


def test_metrics_on_hand_values():
    np.testing.assert_allclose(restoration([1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 1.0, 2.0], [3.0, 3.0, 1.0, 4.0]),
                               [0.0, 0.5, np.nan, -1.0])
    assert flip_rate(["red", "blue", "red", "red"], ["red", "red", "red", "green"]) == 0.5
    assert flip_rate([], []) is None


def test_first_layer_and_critical_window_on_hand_arrays():
    assert first_layer_reaching([0.1, 0.3, 0.6, 0.9]) == 2
    assert first_layer_reaching([0.1, 0.5], layers=[4, 7]) == 7
    assert first_layer_reaching([0.1, np.nan, 0.2]) is None
    w = critical_window([0.0, 0.1, 0.5, 0.4, 0.0])
    assert (w["start"], w["end"], w["length"]) == (2, 3, 2) and w["share"] == pytest.approx(0.9)
    w = critical_window([0.3, 0.3, 0.3, 0.1])  # 0-2 holds 0.9, 1-3 only 0.7
    assert (w["start"], w["end"]) == (0, 2)
    w = critical_window([-1.0, 0.85, 0.15], layers=[10, 11, 12])  # negatives count as 0
    assert (w["start"], w["end"]) == (11, 11)
    assert critical_window([0.0, -0.2]) is None
    bins = flips_by_dh([-1.0, -0.9, 1.0, 1.1], [[0, 1], [0, 1], [0, 0], [1, 1]], bins=2)
    assert [b["n"] for b in bins] == [2, 2]
    assert bins[0]["flip_rate"] == [0.0, 1.0] and bins[0]["first_50"] == 1
    assert bins[1]["flip_rate"] == [0.5, 0.5] and bins[1]["first_50"] == 0


@pytest.fixture(scope="module")
def dataset():
    return color_dataset(groups=1, dv=(0,))


def test_patch_study_tables_and_ground_truth(mllm, dataset, monkeypatch):
    from mechmod.data import load_cases

    real = patch_study.baseline

    def labelled(*a, **k):  # the random tiny model answers 'other': give it answers so that pairs exist
        b = real(*a, **k)
        t = b.table
        t["y_v"], t["y_t"], t["y_m"], t["y_ctrl"] = t["answer_vision"], t["answer_text"], t["answer_text"], t["answer_vision"]
        return b

    monkeypatch.setattr(patch_study, "baseline", labelled)
    cfg = patch_study.PatchStudyConfig(directions=("V->C", "I->C"), positions=("question", "last"), knockouts=("zero",))
    study = patch_study.run_patching(mllm, dataset, load_cases(dataset), cfg)
    n = study.summary["n_pairs"]
    assert n == {"V->C": 3, "I->C": 3}
    assert len(study.layers) == 6 * 2 * mllm.n_layers
    last = study.layers[(study.layers["positions"] == "last") & (study.layers["layer"] == mllm.n_layers - 1)]
    np.testing.assert_allclose(last["ld_patched"], last["ld_source"], atol=1e-4)
    np.testing.assert_allclose(last["restoration"], 1.0, atol=1e-3)
    assert len(study.summary["curves"]) == 4
    assert set(study.summary["units"]) == {"patch V->C", "patch I->C", "knockout zero"}
    knocked = study.units[study.units["analysis"] == "knockout zero"]
    for u in study.summary["units"]["knockout zero"]:  # the t-test by hand on the unit's contributions
        c = knocked.loc[knocked["unit"] == u["unit"], "contrib"].to_numpy(float)
        t = c.mean() / (c.std(ddof=1) / np.sqrt(len(c)))
        assert u["promotes"] == ("text" if t >= cfg.t_min else "vision" if t <= -cfg.t_min else "neutral"), u
    json.dumps(study.summary, allow_nan=False)


def test_patch_cli_writes_results(mllm, dataset, tmp_path):
    from mechmod.cli import main

    out = tmp_path / "out"
    rc = main(["patch", "--model", mllm.name, "--dataset", str(dataset), "--out", str(out), "--positions", "last",
               "--knockout", "zero"])
    assert rc == 0
    summary = json.loads((out / "patch_summary.json").read_text())
    assert {"curves", "n_pairs", "units", "balance_point"} <= set(summary)
    units = pd.read_parquet(out / "patch_units.parquet")
    assert {a: sum(u["n"] for u in per) for a, per in summary["units"].items()} == \
        units["analysis"].value_counts().to_dict()
    assert (out / "patch_layers.parquet").is_file() and (out / "patch_report.html").stat().st_size > 100_000


# ------------------------------------------- writing on with the patch applied
def _captured(settings_out):
    """A sweep metric that keeps each setting's continuation (``more``)."""
    def metric(logits, more):
        settings_out.append(more)
        return logits
    return metric


def _hooked_next_logits(mllm, inputs, module, hook):
    """Plain HF forward of ``inputs`` with a forward hook on ``module``: the last position's logits."""
    hd = module.register_forward_hook(hook)
    with torch.no_grad():
        out = mllm.model(**inputs).logits[:, -1].float()
    hd.remove()
    return out


def test_patched_continuation_keeps_the_patch_at_its_prompt_positions(mllm):
    # the continuation of each layer's patched copy (sweep over stacked copies, chunk 2 of 3 layers) equals a plain
    # forward of the prompt + written tokens with a hook writing the source's residual at the same absolute positions
    source, target = vision(mllm), conflict(mllm)
    spec = PatchSpec("resid", ("question", "last"), layers=(1, 0, 1))  # 3 copies, chunks of 2
    mores: list = []
    patch_layers(mllm, source, target, spec, _captured(mores), chunk=2)
    assert len(mores) == 3
    align = align_positions(source, target, spec.positions)
    src_out = {}
    hds = [mllm.layers[l].register_forward_hook(
        lambda m, a, o, l=l: src_out.__setitem__(l, (o[0] if isinstance(o, tuple) else o).detach()))
        for l in spec.layers]
    with torch.no_grad():
        mllm.model(**source.inputs)
    for hd in hds:
        hd.remove()
    rows, written = torch.tensor([0, 1]), torch.tensor([[5, 7], [9, 11]])
    extended = extend_inputs(target.inputs, rows, written, pad_id=0)
    for layer, more in zip(spec.layers, mores):
        def write(module, args, out, layer=layer):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            for i in range(2):
                v = align.valid[i]
                h[i, align.tgt[i][v]] = src_out[layer][i, align.src[i][v]].to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h
        ref = _hooked_next_logits(mllm, extended, mllm.layers[layer], write)
        torch.testing.assert_close(more(rows, written), ref, atol=1e-4, rtol=0)
    unpatched = _hooked_next_logits(mllm, extended, mllm.layers[0], lambda m, a, o: o)
    assert (mores[1](rows, written) - unpatched).abs().max() > 1e-3  # layer 0 patch still applied: not vacuous


def test_unit_knockout_continuation_knocks_out_the_answer_position_not_the_written_token(mllm):
    # a unit edit addresses "the last position": while writing on it stays on the prompt's answer position
    target = conflict(mllm)
    unit = H.Unit(1, "mlp")
    mores: list = []
    H.knockout_units(mllm, target, [unit, H.Unit(0, "mlp")], "zero", metric=_captured(mores), chunk=2)
    T = target.inputs["input_ids"].shape[1]
    rows, written = torch.tensor([1]), torch.tensor([[5, 7, 9]])
    extended = extend_inputs(target.inputs, rows, written, pad_id=0)

    def zero_at(pos):
        def hook(module, args, out):
            out = out.clone()
            out[:, pos] = 0
            return out
        return hook
    mlp = mllm.layers[1].mlp
    ref = _hooked_next_logits(mllm, extended, mlp, zero_at(T - 1))[rows]
    torch.testing.assert_close(mores[0](rows, written), ref, atol=1e-4, rtol=0)
    naive = _hooked_next_logits(mllm, extended, mlp, zero_at(-1))[rows]
    assert (naive - ref).abs().max() > 1e-3  # knocking out the newest token instead would differ


def test_patch_study_flip_reads_the_patched_continuation(mllm, monkeypatch):
    # an undecided top-1 piece is written on through the sweep's continuation, and the word it writes decides the flip
    labels = LabelSet(mllm.tokenizer, ["red", "blue"])
    calls = []

    def fake_predict(self, logits, continuation=None, max_new_tokens=4):
        calls.append(continuation)
        return ["red"] * logits.shape[0] if continuation is not None else ["other"] * logits.shape[0]
    monkeypatch.setattr(LabelSet, "predict", fake_predict)
    metric = patch_study._pair_metric(labels, ["red", "red"], ["blue", "blue"])
    out, _, _ = patch_layers(mllm, vision(mllm), conflict(mllm), PatchSpec("resid", "last", layers=(0, 1)), metric)
    assert out[..., 1].eq(1).all() and len(calls) == 2 and all(callable(c) for c in calls)
