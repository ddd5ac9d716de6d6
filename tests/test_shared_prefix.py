"""Tails attending over a shared prefix without copying it
(mechmod.backends.shared_prefix): the split attention equals sdpa over each
row's concatenated prefix and tail keys, its answer row equals eager's, and
in every family whose cache allows it trace_shared takes that path, with
what full prompts give (tests/test_prefix.py checks the values)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from mechmod.backends.answer_attention import answer_row
from mechmod.backends.shared_prefix import SharedPrefixLayer, SlotPlan, split_attention
from mechmod.errors import MechmodError
from mechmod.models import load_model
from tests.tiny_families import ALL_FAMILIES


def _case(slots, S=5, Sk=5, H=4, H_kv=2, P=7, d=8, images=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    prefix = DynamicLayer()
    prefix.update(torch.randn(images, H_kv, P, d, generator=g), torch.randn(images, H_kv, P, d, generator=g))
    layer = SharedPrefixLayer(prefix, SlotPlan(torch.tensor(slots)))
    B = len(slots)
    layer.keys, layer.values = torch.randn(B, H_kv, Sk, d, generator=g), torch.randn(B, H_kv, Sk, d, generator=g)
    query = torch.randn(B, H, S, d, generator=g)
    full_k = torch.cat([prefix.keys[layer.plan.slots], layer.keys], dim=2)
    full_v = torch.cat([prefix.values[layer.plan.slots], layer.values], dim=2)
    return query, layer, full_k, full_v


def _causal_mask(B, S, P, Sk):
    mask = torch.ones(B, 1, S, P + Sk, dtype=torch.bool)
    mask[..., P:] = torch.arange(Sk)[None, :] <= torch.arange(Sk - S, Sk)[:, None]
    return mask


@pytest.mark.parametrize("slots", [[0, 0, 1, 1, 1], [2, 0, 2, 1], [1], [0, 2, 2]])
@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("S", [5, 1])  # a tail, and one written token after a cached tail
def test_split_attention_equals_sdpa_over_the_concatenated_keys(slots, with_mask, S):
    """Rows of several images, in any order (consecutive slots read the
    prefix as a view, others gather it), GQA, causal by mask or by None."""
    query, layer, k, v = _case(slots, S=S)
    B, H, _, d = query.shape
    P, Sk = layer.prefix_length, layer.keys.shape[2]
    mask = _causal_mask(B, S, P, Sk)
    G = H // k.shape[1]
    ref = F.scaled_dot_product_attention(query, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask,
                                         scale=0.3)
    positions = torch.tensor([S - 1 - (i % S) for i in range(B)])
    out, row = split_attention(query, layer, mask if with_mask else None, 0.3, positions, want_row=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(row, answer_row(query, k, mask, 0.3, positions), atol=1e-6, rtol=1e-5)
    assert split_attention(query, layer, None, 0.3)[1] is None


@pytest.mark.parametrize("fused", [True, False])
def test_attend_returns_sdpa_and_the_log_sum_exp(fused):
    """Both ways of the partial attention (aten's fused CPU kernel; matmuls,
    as on a GPU): sdpa's output under an additive mask broadcast over heads
    and queries, and the log-sum-exp of the masked scores; a query whose
    keys are all masked gets zeros."""
    from mechmod.backends.shared_prefix import attend

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 4, 8, generator=g) for _ in range(3))
    k, v = k.repeat(1, 1, 2, 1), v.repeat(1, 1, 2, 1)  # 8 keys
    hidden = torch.zeros(3, 8, dtype=torch.bool)
    hidden[0, :3], hidden[2] = True, True  # image 2: every key hidden
    bias = torch.zeros(3, 8).masked_fill(hidden, float("-inf"))[:, None, None, :]
    out, lse = attend(q, k, v, bias, 0.3, fused=fused)
    scores = torch.matmul(q, k.transpose(-1, -2)) * 0.3 + bias
    ref = F.scaled_dot_product_attention(q[:2], k[:2], v[:2], attn_mask=bias[:2], scale=0.3)
    torch.testing.assert_close(out[:2], ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse[:2], torch.logsumexp(scores[:2], dim=-1), atol=1e-5, rtol=1e-5)
    assert float(out[2].abs().max()) == 0.0


@pytest.mark.parametrize("fused", [True, False])
def test_split_attention_takes_either_partial_attention(fused, monkeypatch):
    """The split through the matmul path too (the one a GPU takes), with
    pads hidden in the prefix and a query that sees no key."""
    import functools

    import mechmod.backends.shared_prefix as sp

    monkeypatch.setattr(sp, "attend", functools.partial(sp.attend, fused=fused))
    query, layer, k, v = _case([0, 1, 0, 2], S=3, Sk=3)
    P = layer.prefix_length
    mask = _causal_mask(4, 3, P, 3)
    mask[[0, 2], :, :, :2] = False  # image 0's left pads
    mask[3, :, :, :P] = False  # image 2: its whole prefix pads
    mask[3, :, 0, P:] = False  # and row 3's first query a pad: it sees nothing
    G = query.shape[1] // k.shape[1]
    ref = F.scaled_dot_product_attention(query, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask,
                                         scale=0.3).transpose(1, 2)
    out, row = sp.split_attention(query, layer, mask, 0.3, want_row=True)
    torch.testing.assert_close(out[:3], ref[:3], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[3, 1:], ref[3, 1:], atol=1e-6, rtol=1e-5)
    assert float(out[3, 0].abs().max()) == 0.0
    torch.testing.assert_close(row, answer_row(query, k, mask, 0.3), atol=1e-6, rtol=1e-5)


def test_padded_keys_are_masked_in_the_tail_and_in_the_prefix():
    """A right pad in a row's tail and left pads in an image's prefix (a
    stacked replay of left-padded rows: each row its own 'image', several
    copies of it) are hidden as sdpa hides them; where queries of one image
    would see different prefix keys the split declines (None) and the keys
    are copied."""
    query, layer, k, v = _case([0, 1, 0, 1], S=3, Sk=3)
    P = layer.prefix_length
    mask = _causal_mask(4, 3, P, 3)
    mask[1, :, :, -1] = False  # row 1's last tail key: padding seen by nobody
    mask[[0, 2], :, :, :2] = False  # image 0's first two prefix keys: left pads, in both its rows
    G = query.shape[1] // k.shape[1]
    ref = F.scaled_dot_product_attention(query, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask)
    out, row = split_attention(query, layer, mask, query.shape[-1] ** -0.5, want_row=True)
    torch.testing.assert_close(out[[0, 2, 3]], ref.transpose(1, 2)[[0, 2, 3]], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[1, :2], ref.transpose(1, 2)[1, :2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(row, answer_row(query, k, mask, query.shape[-1] ** -0.5), atol=1e-6, rtol=1e-5)
    assert float(row[0, :, :2].abs().max()) == 0.0
    mask[2, :, :, 2] = False  # one of image 0's rows only: the split cannot take it, the caller copies the keys
    assert split_attention(query, layer, mask, 1.0) is None
    assert split_attention(query, layer, torch.zeros(4, 1, 3, P + 3), 1.0) is None  # an additive mask
    keys, values = layer.materialized()
    assert torch.equal(keys, k) and torch.equal(values, v)


def test_a_query_that_sees_no_key_gets_zeros_not_nan():
    """A left pad inside a replayed segment: masked from every key (its own
    prefix all pads), its output is 0, so no NaN reaches a later layer."""
    query, layer, k, v = _case([0, 1], S=2, Sk=2)
    P = layer.prefix_length
    mask = _causal_mask(2, 2, P, 2)
    mask[1, :, :, :P] = False  # row 1 (image 1): every prefix key a pad
    mask[1, :, 0, P:] = False  # and its first query a pad too: it sees nothing
    out, _ = split_attention(query, layer, mask, 1.0)
    assert torch.isfinite(out).all() and float(out[1, 0].abs().max()) == 0.0
    G = query.shape[1] // k.shape[1]
    ref = F.scaled_dot_product_attention(query, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask,
                                         scale=1.0)
    torch.testing.assert_close(out[0], ref.transpose(1, 2)[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[1, 1], ref.transpose(1, 2)[1, 1], atol=1e-6, rtol=1e-5)


def test_a_shared_layer_refuses_to_run_outside_its_context():
    _, layer, _, _ = _case([0])
    with pytest.raises(MechmodError, match="outside"):
        layer.update(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def mllm(request, tiny_dir):
    return load_model(str(tiny_dir(request.param)))


def test_tails_share_the_prefix_where_the_cache_allows(mllm, monkeypatch):
    """Families whose decoder caches are plain dynamic layers run their
    tails over SharedPrefixLayers (nothing copied, the model's kernel
    restored after); Gemma 3's sliding-window layers keep the copied rows."""
    from PIL import Image

    import mechmod.prefix as prefix
    from mechmod.backends.sites import attention_implementation

    seen = []
    original = prefix.cache_rows

    def spy(*args, **kwargs):
        rows = original(*args, **kwargs)
        seen.append({type(layer) for layer in rows.layers})
        return rows

    monkeypatch.setattr(prefix, "cache_rows", spy)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    prefix.trace_shared(mllm, [image], [[(None, "What color is the circle?"), ("The circle is blue.", "What?")]],
                        attention=True)
    shared = [SharedPrefixLayer in kinds for kinds in seen]
    assert seen and (all(shared) if mllm.family != "gemma3" else not any(shared))
    assert attention_implementation(mllm) == "sdpa"


def test_a_prefix_forward_stops_once_the_last_layer_has_cached_its_keys(mllm):
    """The prefix forward of every family stops at its last decoder layer's
    attention (that layer's MLP never runs) with every layer's keys and
    values of the prefix cached; outside it, the same forward runs whole."""
    from PIL import Image

    from mechmod.prefix import _prefix_forward, image_prefix

    ran = []
    mlp = mllm.adapter.module(mllm.layers[-1], mllm.adapter.mlp_path)
    handle = mlp.register_forward_hook(lambda *args: ran.append(True))
    try:
        prefix = image_prefix(mllm, Image.new("RGB", (64, 64), (200, 30, 30)))
        cache, _, image_keys = _prefix_forward(mllm, [prefix])
        assert not ran
        assert len(cache.layers) == len(mllm.layers) and image_keys.shape == (1, prefix.length)
        assert all(layer.keys.shape[-2] == min(prefix.length, getattr(layer, "sliding_window", None) or prefix.length)
                   for layer in cache.layers)
        with torch.no_grad():
            mllm.model(**prefix.inputs)
        assert ran
    finally:
        handle.remove()


def test_backends_agree_over_a_shared_prefix(mllm):
    """hooks and nnsight both run the tails over the shared prefix: equal
    logits, residuals and attention mass (the TransformerLens backend runs
    whole prompts: its bridge computes attention itself)."""
    from PIL import Image

    from mechmod.prefix import trace_shared

    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    prompts = [[(None, "What color is the circle?"), ("The circle is blue.", "What color is the circle?")]] * 2
    a, b = (trace_shared(mllm, images, prompts, batch_size=3, backend=backend, attention=True)
            for backend in ("hooks", "nnsight"))
    for x, y in zip(a, b):
        torch.testing.assert_close(x.logits, y.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(x.resid, y.resid, atol=1e-5, rtol=0)
        torch.testing.assert_close(x.span_attention, y.span_attention, atol=1e-6, rtol=0)


def test_the_kernel_copies_the_keys_where_the_split_declines():
    """mechmod's kernel, handed a shared layer whose mask the split cannot
    take (queries of one image seeing different prefix keys), attends over
    the layer's materialized keys: sdpa's output."""
    from types import SimpleNamespace

    from mechmod.backends.answer_attention import answer_row_attention
    from mechmod.backends.shared_prefix import shared_prefix

    query, layer, k, v = _case([0, 0], S=3, Sk=0)
    P = layer.prefix_length
    mask = _causal_mask(2, 3, P, 3)
    mask[1, :, :, 0] = False  # row 1 hides a prefix key row 0 sees: one image, two views
    config = SimpleNamespace(_attn_implementation="sdpa")
    model = SimpleNamespace(config=config,
                            set_attn_implementation=lambda name: setattr(config, "_attn_implementation", name))
    G = query.shape[1] // k.shape[1]
    module = SimpleNamespace(num_key_value_groups=G, is_causal=True, training=False)
    new_k, new_v = torch.randn(2, k.shape[1], 3, k.shape[3]), torch.randn(2, k.shape[1], 3, k.shape[3])
    with shared_prefix(SimpleNamespace(model=model)):
        key, value = layer.update(new_k, new_v)
        out, _ = answer_row_attention(module, query, key, value, mask, scaling=0.5)
    assert config._attn_implementation == "sdpa"  # restored
    full_k, full_v = torch.cat([k, new_k], dim=2), torch.cat([v, new_v], dim=2)
    ref = F.scaled_dot_product_attention(query, full_k.repeat_interleave(G, 1), full_v.repeat_interleave(G, 1),
                                         attn_mask=mask, scale=0.5)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_split_attention_in_bfloat16_returns_bfloat16_close_to_sdpa():
    """The dtype a GPU run uses: bf16 query and caches, float32 maths inside,
    the output cast back (sdpa in bf16 rounds the same values)."""
    query, layer, k, v = _case([0, 1, 1], S=4, Sk=4)
    layer.prefix_keys, layer.prefix_values = layer.prefix_keys.bfloat16(), layer.prefix_values.bfloat16()
    layer.keys, layer.values = layer.keys.bfloat16(), layer.values.bfloat16()
    q = query.bfloat16()
    out, _ = split_attention(q, layer, None, 0.3)
    assert out.dtype == torch.bfloat16
    G = query.shape[1] // k.shape[1]
    mask = _causal_mask(3, 4, layer.prefix_length, 4)
    ref = F.scaled_dot_product_attention(q.float(), k.bfloat16().float().repeat_interleave(G, 1),
                                         v.bfloat16().float().repeat_interleave(G, 1), attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out.float(), ref.transpose(1, 2), atol=1e-2, rtol=1e-2)
