"""The backend layer's own rules on the tiny LLaVA: dispatch errors, sites
that exist only under eager attention, read-only and order rules, the mask
view on hand-built masks, and edits seen by later sites. (Every site against
plain hooks, per family: tests/test_adapter_contract.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mechmod.backends import SITE_COMPONENTS, Site, eager_attention, run, self_check
from mechmod.backends.sites import allowed_view, attention_implementation, native_mask
from mechmod.errors import MechmodError
from mechmod.models.base import MLLM
from mechmod.tracing import trace


@pytest.fixture(scope="module")
def enc(mllm):
    return mllm.encode([None, None], ["the circle is red .", "a"], ["what color ?", "what color is the circle ?"])


def test_dispatch_refuses_unknown_backends_components_and_layers(mllm, enc):
    with pytest.raises(MechmodError, match="unknown backend 'baukit'"):
        run(mllm, enc.inputs, backend="baukit")
    with pytest.raises(MechmodError, match="unknown site component 'heads'"):
        Site(0, "heads")
    with pytest.raises(MechmodError, match="outside the model's 2 layers"):
        run(mllm, enc.inputs, reads=[(Site(2, "resid"), lambda x: x)])
    assert SITE_COMPONENTS[0] == "resid_in" and SITE_COMPONENTS[-1] == "resid"


def test_scores_and_pattern_need_eager_attention(mllm, enc):
    assert attention_implementation(mllm) == "sdpa"
    for component in ("scores", "pattern"):
        with pytest.raises(MechmodError, match=f"site '{component}'.*sdpa.*eager_attention"):
            run(mllm, enc.inputs, reads=[(Site(0, component), lambda x: x)])
    with eager_attention(mllm):
        assert attention_implementation(mllm) == "eager"
        _, (scores, pattern) = run(mllm, enc.inputs, reads=[(Site(1, "scores"), lambda x: x),
                                                            (Site(1, "pattern"), lambda x: x)])
        with pytest.raises(MechmodError, match="read-only"):
            run(mllm, enc.inputs, edits=[(Site(1, "pattern"), lambda x: x)])
    assert attention_implementation(mllm) == "sdpa"  # restored
    torch.testing.assert_close(torch.softmax(scores.float(), -1), pattern, atol=1e-6, rtol=0)
    assert (pattern[0, :, -1, 0] > 0).all() and (pattern[1, :, -1, 0] == 0).all()  # row 1 is left-padded
    assert trace(mllm, enc, attention=True).attn.shape == (2, 2, enc.inputs["input_ids"].shape[1])


def test_scores_edits_change_the_answer_like_a_mask(mllm, enc):
    """Scores at the dtype minimum are keys nobody attends: the same as masking them."""
    def low(x):
        x[..., -1, 3] = torch.finfo(x.dtype).min
        return x

    def masked(x):
        x[..., -1, 3] = False
        return x

    with eager_attention(mllm):
        clean, _ = run(mllm, enc.inputs)
        a, _ = run(mllm, enc.inputs, edits=[(Site(l, "scores"), low) for l in range(2)])
        b, _ = run(mllm, enc.inputs, edits=[(Site(l, "mask"), masked) for l in range(2)])
    assert float((a - clean).abs().max()) > 1e-4
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_an_edit_is_what_later_sites_see(mllm, enc):
    one = lambda x: x + 1  # noqa: E731
    _, (out0, in1) = run(mllm, enc.inputs, edits=[(Site(0, "resid"), one)],
                         reads=[(Site(0, "resid"), lambda x: x), (Site(1, "resid_in"), lambda x: x)])
    _, (clean0,) = run(mllm, enc.inputs, reads=[(Site(0, "resid"), lambda x: x)])
    torch.testing.assert_close(out0, clean0 + 1, atol=1e-6, rtol=0)
    torch.testing.assert_close(in1, out0, atol=0, rtol=0)


def test_mask_view_of_hand_built_masks():
    causal = allowed_view(None, 2, 2, 1, torch.device("cpu"))  # 2 queries after 1 cached key
    assert causal.shape == (2, 1, 2, 3)
    assert causal[0, 0].tolist() == [[True, True, False], [True, True, True]]
    low = torch.finfo(torch.float32).min
    additive = torch.tensor([[[[0.0, low], [0.0, 0.0]]]])
    view = allowed_view(additive, 1, 2, 0, torch.device("cpu"))
    assert view.tolist() == [[[[True, False], [True, True]]]]
    assert torch.equal(native_mask(view, additive), additive)
    knocked = view.clone()
    knocked[..., 1, 0] = False
    assert native_mask(knocked, additive)[0, 0, 1].tolist() == [low, 0.0]
    assert native_mask(knocked, view.clone()).dtype == torch.bool


def test_a_post_module_norm_that_runs_before_its_module_is_named(mllm):
    early = dataclasses.replace(mllm.adapter, post_attn_norm_path="input_layernorm")
    with pytest.raises(MechmodError, match="not where it says: fix mechmod/models/llava.py"):
        self_check(MLLM(mllm.model, mllm.processor, early, name="early"))
