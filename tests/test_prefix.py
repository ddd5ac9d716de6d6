"""Shared image prefixes give what full prompts give, in every family:
log-probs within 1e-4 (fp32) and identical layer votes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mechmod.answers import LabelSet
from mechmod.models import load_model
from mechmod.prefix import trace_shared
from mechmod.tracing import trace
from tests.tiny_families import ALL_FAMILIES, COLORS

PROMPTS = [
    (None, "What color is the circle?"),
    ("The circle is blue.", "What color is the circle?"),
    ("A banana is red and the circle is the same color as a banana.", "What color is the circle?"),
    ("The square is green.", "What color is the square? Answer with one word."),
]


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def mllm(request, tiny_dir):
    return load_model(str(tiny_dir(request.param)))


def _images():
    return [Image.new("RGB", (800, 600), (200, 30, 30)), Image.new("RGB", (224, 224), (30, 30, 200)),
            Image.new("RGB", (800, 600), (30, 200, 30))]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_cached_prefix_equals_full_prompts(mllm, batch_size):
    images = _images()
    shared = trace_shared(mllm, images, [PROMPTS] * len(images), batch_size=batch_size)
    labels = LabelSet(mllm.tokenizer, COLORS)
    for image, got in zip(images, shared):
        enc = mllm.encode([image] * len(PROMPTS), [d for d, _ in PROMPTS], [q for _, q in PROMPTS])
        ref = trace(mllm, enc)
        assert got.resid.shape == ref.resid.shape
        lp_got, lp_ref = torch.log_softmax(got.logits, -1), torch.log_softmax(ref.logits, -1)
        assert float((lp_got - lp_ref).abs().max()) <= 1e-4
        assert float((got.resid - ref.resid).abs().max()) <= 1e-4
        # identical layer votes under the logit lens
        with torch.no_grad():
            votes_got = labels.top1_labels(mllm.lm_head(mllm.final_norm(got.resid)))
            votes_ref = labels.top1_labels(mllm.lm_head(mllm.final_norm(ref.resid)))
        assert (votes_got == votes_ref).all()


def test_attention_mass_over_a_cached_prefix_equals_full_prompts(mllm):
    from mechmod.tracing import span_mass

    images = _images()[:2]
    shared = trace_shared(mllm, images, [PROMPTS] * len(images), batch_size=3, attention=True)
    for image, got in zip(images, shared):
        enc = mllm.encode([image] * len(PROMPTS), [d for d, _ in PROMPTS], [q for _, q in PROMPTS])
        attn = trace(mllm, enc, attention=True).attn
        ref = span_mass(attn, enc.spans)
        assert got.span_attention.shape == (len(PROMPTS), mllm.n_layers, 3)
        assert float((got.span_attention - ref).abs().max()) <= 1e-4
        assert float(ref[0, :, 1].abs().max()) == 0.0  # the vision-only prompt has no description
        template = ~(enc.spans["image"] | enc.spans["description"] | enc.spans["question"])
        rest = (attn * template[:, None, :]).sum(-1)  # the spans and the template tokens share all the mass
        torch.testing.assert_close(ref.sum(-1) + rest, torch.ones_like(rest), atol=1e-5, rtol=0)


def test_one_image_batch_reads_the_prefix_cache_as_a_view(mllm):
    """A tail batch of one image's prompts expands that image's cache row
    (no copy) and the tails read exactly what gathered rows give."""
    from mechmod.prefix import cache_kwarg, cache_rows, image_prefix

    prefix = image_prefix(mllm, _images()[0])
    with torch.no_grad():
        cache = getattr(mllm.model(**prefix.inputs, use_cache=True, logits_to_keep=1), cache_kwarg(mllm.model))
    slots = torch.zeros(3, dtype=torch.long)
    view, gathered = cache_rows(cache, slots), cache_rows(cache, slots)
    for layer in gathered.layers:
        layer.keys, layer.values = layer.keys[slots], layer.values[slots]
    for a, b, shared in zip(view.layers, gathered.layers, cache.layers):
        assert a.keys.stride(0) == 0 and a.keys.data_ptr() == shared.keys.data_ptr()
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_tail_rows_fill_a_buffer_with_room(mllm):
    """With room for the tail, each plain layer copies its prefix rows once
    into a buffer that the tail's update fills in place: the tail's logits
    (and a further token's, concatenated once the room is used up) equal
    those over gathered, concatenated rows, and the shared cache stays as
    it was."""
    from transformers.cache_utils import DynamicLayer

    from mechmod.prefix import _Room, cache_kwarg, cache_rows, image_prefix

    prefix = image_prefix(mllm, _images()[1])
    inputs = {k: torch.cat([v, v]) if k != "image_grid_thw" and v.shape[0] == 1 else v
              for k, v in prefix.inputs.items()}
    if "image_grid_thw" in inputs:
        return  # M-RoPE: the tail needs the prefix's rope deltas (covered through trace_shared above)
    with torch.no_grad():
        cache = getattr(mllm.model(**inputs, use_cache=True, logits_to_keep=1), cache_kwarg(mllm.model))
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    tail, _ = mllm.tail(mllm.case_prompt("The circle is blue.", "What color is the circle?", with_image=True))
    slots = torch.tensor([0, 1, 0])
    ids = torch.tensor([tail] * 3)
    logits = []
    for room in (len(tail), 0):
        rows = cache_rows(cache, slots, room=room)
        plain = all(type(layer) is DynamicLayer for layer in cache.layers)
        assert all(isinstance(layer, _Room) for layer in rows.layers) == (plain and room > 0)
        mask = torch.ones(3, prefix.length + len(tail), dtype=torch.long)
        with torch.no_grad():
            out = mllm.model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1,
                             **{cache_kwarg(mllm.model): rows})
        logits.append(out.logits[:, -1])
        if room and plain:  # the tail filled the buffer: the attention read it whole, in place
            assert all(layer.keys.data_ptr() == layer.buffers[0].data_ptr() and layer.keys.is_contiguous()
                       for layer in rows.layers)
        mask = torch.ones(3, prefix.length + len(tail) + 1, dtype=torch.long)  # one more token: no room left
        with torch.no_grad():
            out = mllm.model(input_ids=ids[:, -1:], attention_mask=mask, use_cache=True, logits_to_keep=1,
                             **{cache_kwarg(mllm.model): rows})
        logits.append(out.logits[:, -1])
    for a, b in zip(logits[:2], logits[2:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for layer, (k, v) in zip(cache.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


@pytest.mark.parametrize("slots", [[0, 1, 0], [2, 2, 2, 2], [0, 1, 2, 0, 1, 2, 0, 1, 2], [1, 0, 1, 0]])
def test_rows_copied_into_a_buffer_with_room_are_the_selected_rows(slots):
    """with_room copies row slots[i] of each cache tensor into buffer row i
    (a stacked replay's pattern 0..B-1 repeated, one image's row broadcast,
    and mixed slots alike), leaves the room after them, and refuses layers
    it cannot take (None)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    from mechmod.prefix import with_room

    layer = DynamicLayer()
    keys, values = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    layer.update(keys, values)
    slots = torch.tensor(slots)
    roomy = with_room(layer, slots, room=2)
    torch.testing.assert_close(roomy.keys, keys[slots], rtol=0, atol=0)
    torch.testing.assert_close(roomy.values, values[slots], rtol=0, atol=0)
    assert roomy.buffers[0].shape == (len(slots), 2, 7, 4)
    new = torch.randn(len(slots), 2, 2, 4)
    k, _ = roomy.update(new, new)
    torch.testing.assert_close(k, torch.cat([keys[slots], new], dim=2), rtol=0, atol=0)
    assert with_room(DynamicSlidingWindowLayer(sliding_window=4), slots, room=2) is None
