"""The answer position's attention row under sdpa
(mechmod.backends.answer_attention) is eager attention's row, per head,
within 1e-5 in float32 on every family's tiny model, over cached image
prefixes too (Qwen's M-RoPE tails; tails attending over a shared prefix);
flash attention is refused; a run's attention-mass columns equal the eager
path's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.cache_utils import DynamicLayer
from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward

from mechmod import prefix
from mechmod.backends import Site, answer_rows, eager_attention, run
from mechmod.backends.answer_attention import answer_row
from mechmod.backends.shared_prefix import SharedPrefixLayer
from mechmod.backends.sites import attention_implementation
from mechmod.errors import MechmodError
from mechmod.models import load_model
from mechmod.tracing import trace
from tests import run_helpers
from tests.tiny_families import ALL_FAMILIES

DESCS = ["the circle is red .", "There is a blue square in this picture."]
QUESTIONS = ["What color is the circle?", "what color is the square ? Answer with one word."]
ATTENTION_COLUMNS = ("attn_image", "attn_description", "attn_question")


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def mllm(request, tiny_dir):
    return load_model(str(tiny_dir(request.param)))


def _images():
    return [Image.new("RGB", (800, 600), (200, 30, 30)), Image.new("RGB", (224, 224), (30, 30, 200))]


def _eager_rows(mllm, inputs, positions=None) -> list[torch.Tensor]:
    """Eager attention's answer rows [B, heads, K] per layer (answers last, or at ``positions``)."""
    rows, cols = (slice(None), -1) if positions is None else (torch.arange(len(positions)), positions)
    with eager_attention(mllm):
        _, pats = run(mllm, inputs, reads=[(Site(l, "pattern"), lambda w: w[rows, :, cols, :])
                                           for l in range(mllm.n_layers)])
    return [p.float() for p in pats]


def _assert_rows_equal(got: dict[int, torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert sorted(got) == list(range(len(ref)))
    for layer, want in enumerate(ref):
        assert got[layer].shape == want.shape and got[layer].dtype == torch.float32
        assert float((got[layer] - want).abs().max()) <= 1e-5, f"layer {layer}"


def test_answer_rows_equal_eager_per_head_under_an_sdpa_forward(mllm):
    enc = mllm.encode(_images(), DESCS, QUESTIONS)  # left-padded batch of two prompts
    plain, _ = run(mllm, enc.inputs)
    with answer_rows(mllm) as rec:
        assert attention_implementation(mllm) == "mechmod_answer_row"
        logits, _ = run(mllm, enc.inputs)
    assert attention_implementation(mllm) == "sdpa"  # restored
    assert torch.equal(logits, plain)  # the forward is sdpa's
    _assert_rows_equal(rec.rows, _eager_rows(mllm, enc.inputs))
    assert rec.weights().shape == (2, mllm.n_layers, enc.inputs["input_ids"].shape[1])
    padded = enc.inputs["attention_mask"] == 0  # the shorter prompt's left pads: no weight there
    assert padded.any() and all(float(rec.rows[l][padded[:, None, :].expand_as(rec.rows[l])].abs().max()) == 0.0
                                for l in rec.rows)


def _copied(layer):
    """A shared-prefix cache layer as a plain one: each row's prefix copied
    before its tail keys (other layers as they are)."""
    if not isinstance(layer, SharedPrefixLayer):
        return layer
    plain = DynamicLayer()
    slots = layer.plan.slots
    plain.update(torch.cat([layer.prefix_keys[slots], layer.keys], dim=2),
                 torch.cat([layer.prefix_values[slots], layer.values], dim=2))
    return plain


def test_answer_rows_over_a_cached_prefix_equal_eager(mllm, monkeypatch):
    """The tails run over a cached image prefix (Qwen: M-RoPE positions
    offset by the image's rope deltas): each tail forward's rows equal eager
    attention on a copy of the same cache."""
    checked = []

    def both(m, inputs, positions, backend="nnsight", attention=False):
        key = prefix.cache_kwarg(m.model)
        ours, eager = (dict(inputs, **{key: copy.deepcopy(inputs[key])}) for _ in range(2))  # a tail extends its cache
        eager[key].layers = [_copied(layer) for layer in eager[key].layers]  # eager reads one K/V tensor per row
        with answer_rows(m, positions) as rec:
            run(m, ours)
        _assert_rows_equal(rec.rows, _eager_rows(m, eager, positions))
        checked.append(len(positions))
        return traced_at(m, inputs, positions, backend, attention)

    traced_at = prefix.trace_at
    monkeypatch.setattr(prefix, "trace_at", both)
    prompts = [(None, QUESTIONS[0]), (DESCS[0], QUESTIONS[0]), (DESCS[1], QUESTIONS[1])]
    prefix.trace_shared(mllm, _images()[:1], [prompts], batch_size=3, attention=True)
    assert checked == [3]


def test_answer_row_is_eagers_with_softcap_gqa_and_sliding_window():
    """The row function on its own against an HF eager kernel (Gemma's, which
    soft-caps): an additive mask, a bool mask and no mask (causal within a
    sliding window) give eager's rows."""
    g = torch.Generator().manual_seed(0)
    B, H, H_kv, Q, K, d, window = 2, 4, 2, 5, 9, 8, 3
    q, k, v = torch.randn(B, H, Q, d, generator=g), torch.randn(B, H_kv, K, d, generator=g), torch.randn(B, H_kv, K, d)
    at = torch.arange(K - Q, K)[:, None]
    allowed = (torch.arange(K) <= at) & (torch.arange(K) > at - window)  # [Q, K], the queries are the last keys
    additive = torch.zeros(Q, K).masked_fill(~allowed, torch.finfo(torch.float32).min).expand(B, 1, Q, K)
    module = torch.nn.Module()
    module.num_key_value_groups, module.head_dim = H // H_kv, d
    _, ref = eager_attention_forward(module, q, k, v, additive, scaling=0.3, softcap=2.0)
    pos = torch.tensor([4, 2])
    want = ref[torch.arange(B), :, pos]
    for mask in (additive, allowed.expand(B, 1, Q, K), None):
        got = answer_row(q, k, mask, 0.3, pos, sliding_window=window if mask is None else None, softcap=2.0)
        assert float((got - want).abs().max()) <= 1e-6
    last = answer_row(q, k, None, 0.3, None, sliding_window=window, softcap=2.0)
    assert float((last - ref[:, :, -1]).abs().max()) <= 1e-6


def test_flash_attention_is_refused(tiny_llava_dir):
    m = load_model(str(tiny_llava_dir))
    enc = m.encode(_images(), DESCS, QUESTIONS)
    m.model.config.get_text_config()._attn_implementation = "flash_attention_2"
    with pytest.raises(MechmodError, match="runs flash_attention_2 attention, which computes no attention weights.*"
                                           "sdpa or eager attention.*--no-attention"):
        trace(m, enc, attention=True)


def test_a_runs_attention_mass_equals_the_eager_paths(tmp_path, tiny_llava_dir):
    """The default (nnsight) run reads the rows under sdpa over cached image
    prefixes; the TransformerLens run reads the bridge's pattern hook under
    eager attention on whole prompts (the bridge has no cached-tail path)."""
    from mechmod import runner
    from mechmod.lenses import LogitLens, Unembed

    ds = run_helpers.color_dataset(groups=1)
    ours = run_helpers.reference_results(1)
    m = load_model(str(tiny_llava_dir))  # bridged below: never the shared instance
    cfg = run_helpers.run_config(ds, batch_size=4, backend="transformer_lens", share_prefix=False)
    runner.run_study(m, LogitLens(Unembed.from_model(m)), ds, tmp_path / "tl", cfg, progress=False)
    eager = run_helpers.pd.read_parquet(run_helpers.RunDir(tmp_path / "tl").results)
    a, b = ours.sort_values("case_id").reset_index(drop=True), eager.sort_values("case_id").reset_index(drop=True)
    assert a["case_id"].tolist() == b["case_id"].tolist()
    for column in ATTENTION_COLUMNS:
        x, y = np.stack(a[column].to_numpy()), np.stack(b[column].to_numpy())
        assert x.shape == y.shape and np.isfinite(x).all() and x.std() > 0
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0, err_msg=column)
