"""Patched forwards resumed at the patched layer (mechmod.interventions.resume)
equal full patched forwards in every family they serve, over the whole
prompt and over a cached prefix; M-RoPE families patch with full forwards.
In every family a source sharing the target's image and template has the
target's own activations there (the writes patching leaves out)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mechmod.interventions.core import forward, sweep, tails_exact
from mechmod.interventions.patching import (PatchSpec, align_positions, changed, patch_groups, patch_setter,
                                            source_activations, tail_start)
from mechmod.interventions.resume import record, sweep_resumed
from mechmod.models import load_model
from tests.tiny_families import ALL_FAMILIES

Q = "What color is the circle?"
GROUPS = ("image", "question", "last")


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def mllm(request, tiny_dir):
    return load_model(str(tiny_dir(request.param)))


def _pair(mllm):
    """A vision-only source and a conflict target of unequal text lengths (padded)."""
    red, blue = Image.new("RGB", (224, 224), (200, 30, 30)), Image.new("RGB", (224, 224), (30, 30, 200))
    source = mllm.encode([red, blue], [None, None], [Q, Q])
    target = mllm.encode([blue, red], ["The circle is blue.", "A banana is red and the circle has its color."], [Q, Q])
    return source, target


def test_resumed_sweep_equals_full_forwards(mllm):
    if not tails_exact(mllm, "hooks"):
        assert mllm.adapter.rope_deltas_path is not None  # only M-RoPE families fall back to full forwards
        return
    source, target = _pair(mllm)
    aligns = [align_positions(source, target, g) for g in GROUPS]
    layers = list(range(mllm.n_layers))
    _, acts = source_activations(mllm, source, "resid", layers, aligns, "hooks")
    setter = patch_setter("resid", acts, aligns)
    settings = [(k, layer) for k in range(len(GROUPS)) for layer in layers]
    full = sweep(mllm, target.inputs, settings, setter, backend="hooks")
    clean = forward(mllm, target.inputs, backend="hooks")[0]
    assert float((full - clean).abs().max()) > 1e-3  # the patches move the logits

    cut = tail_start(target, aligns[1], mllm.image_token_id)
    assert cut > 0
    for rec in (record(mllm, target.inputs), record(mllm, target.inputs, (cut,))):  # one segment, then two
        torch.testing.assert_close(rec.logits, clean, atol=1e-4, rtol=0)
        got = sweep_resumed(mllm, target.inputs, rec, 0, settings, setter, setter, chunk=2)
        torch.testing.assert_close(got, full, atol=1e-4, rtol=0)
    tail = [(k, layer) for k in (1, 2) for layer in layers]
    got = sweep_resumed(mllm, target.inputs, rec, cut, tail, patch_setter("resid", acts, aligns, cut), setter, chunk=3)
    torch.testing.assert_close(got, full[len(layers):], atol=1e-4, rtol=0)


def test_resumed_sweep_refuses_other_sites(mllm):
    if not tails_exact(mllm, "hooks"):
        return
    from mechmod.errors import MechmodError
    from mechmod.interventions.core import Site

    _, target = _pair(mllm)
    with pytest.raises(MechmodError, match="one 'resid' site"):
        sweep_resumed(mllm, target.inputs, record(mllm, target.inputs), 0, [0],
                      lambda s, rows: [(Site(0, "mlp"), lambda x: x)], lambda s, rows: [])


def test_a_shared_image_prefix_has_the_targets_own_activations(mllm):
    _, target = _pair(mllm)  # its images: blue, red
    source = mllm.encode([Image.new("RGB", (224, 224), c) for c in ((30, 30, 200), (200, 30, 30))], [None, None], [Q, Q])
    image = align_positions(source, target, "image")
    assert image.valid.any() and not changed(image, source, target, mllm.image_token_id).valid.any()
    layers = list(range(mllm.n_layers))
    _, (src,) = source_activations(mllm, source, "resid", layers, [image], "hooks")
    same = align_positions(target, target, "image")
    _, (tgt,) = source_activations(mllm, target, "resid", layers, [same], "hooks")
    assert torch.equal(image.valid, same.valid)
    for layer in layers:  # left padding differs between the two batches: equal to float rounding
        scale = float(tgt[layer][image.valid].abs().max())
        torch.testing.assert_close(src[layer][image.valid], tgt[layer][same.valid], atol=1e-5 * scale, rtol=0)
    (out,), _, clean, _ = patch_groups(mllm, source, target, [PatchSpec("resid", "image")], backend="hooks")
    assert torch.equal(out, clean.expand_as(out))


def test_a_cut_inside_an_image_of_a_padded_row(mllm):
    """Rows of unequal length: the short row's description starts before the
    long-padded row's image ends. Where image tokens attend causally the
    record cuts there and the resumed sweep equals full forwards; Gemma 3's
    record refuses the cut."""
    if not tails_exact(mllm, "hooks"):
        return
    from mechmod.errors import MechmodError

    blue, red = Image.new("RGB", (224, 224), (30, 30, 200)), Image.new("RGB", (224, 224), (200, 30, 30))
    descs = ["The circle is blue.", "A banana is red and the circle has its color, like a ripe red apple."]
    target = mllm.encode([blue, red], descs, [Q, Q])
    source = mllm.encode([blue, red], ["A square is red.", "The square is blue and the circle is green."], [Q, Q])
    aligns = [align_positions(source, target, "description")]
    writes = changed(aligns[0], source, target, mllm.image_token_id)
    cut = tail_start(target, writes, mllm.image_token_id, inside_images=True)
    assert cut > 0 and (target.inputs["input_ids"][:, cut:] == mllm.image_token_id).any()  # inside row 0's image
    if not mllm.adapter.causal_image:
        with pytest.raises(MechmodError, match="attend both ways"):
            record(mllm, target.inputs, (cut,))
        return
    layers = list(range(mllm.n_layers))
    _, acts = source_activations(mllm, source, "resid", layers, [writes], "hooks")
    settings = [(0, layer) for layer in layers]
    full = sweep(mllm, target.inputs, settings, patch_setter("resid", acts, [writes]), backend="hooks")
    rec = record(mllm, target.inputs, (cut,))
    torch.testing.assert_close(rec.logits, forward(mllm, target.inputs, backend="hooks")[0], atol=1e-4, rtol=0)
    got = sweep_resumed(mllm, target.inputs, rec, cut, settings, patch_setter("resid", acts, [writes], cut),
                        patch_setter("resid", acts, [writes]), chunk=3)
    torch.testing.assert_close(got, full, atol=1e-4, rtol=0)


def test_a_cut_inside_a_rows_left_padding_replays_exactly(mllm):
    """Rows of very unequal lengths, cut where the shorter row is still
    padding (inside the longer row's image, where image tokens attend
    causally): the short row's replayed pad queries see no key at all (its
    shared-prefix attention gives them zeros, not NaN); the replay still
    equals the clean forward (every layer's clean output resumed unchanged)."""
    if not tails_exact(mllm, "hooks") or not mllm.adapter.causal_image:
        return
    from mechmod.interventions.resume import resume

    red = Image.new("RGB", (224, 224), (200, 30, 30))
    long = "A banana is red and the circle has the same color as the banana in the picture, which is red."
    target = mllm.encode([red, red], ["Red.", long], [Q, Q])
    pads = int((target.inputs["attention_mask"][0] == 0).sum())
    assert pads >= 4 and bool(target.inputs["attention_mask"][1].all())  # the short row is left-padded
    cut = pads - 2
    rec = record(mllm, target.inputs, (cut,))
    first = rec.cuts.index(cut)
    outs = [torch.cat([o[layer] for o in rec.outputs[first:]], dim=1) for layer in range(mllm.n_layers)]
    got = resume(mllm, rec, cut, [(layer, outs[layer]) for layer in range(mllm.n_layers - 1)])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, rec.logits.repeat(mllm.n_layers - 1, 1), atol=1e-4, rtol=0)
