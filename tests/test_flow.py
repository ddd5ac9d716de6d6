"""Attention knockout between spans on the tiny LLaVA: a span the answer
never attends changes nothing; blocking image, description and question
into the last position in every layer equals a forward whose answer row
has those keys masked by hand (it still reads itself and the template);
windows; flash attention is refused; the CLI has --help."""

import pytest
import torch
from PIL import Image

from mechmod.backends import eager_attention
from mechmod.errors import MechmodError
from mechmod.interventions.core import forward
from mechmod.interventions.flow import Knockout, check_kernel, knockout_setter, windows

Q = "What color is the circle ?"


@pytest.fixture(scope="module")
def enc(mllm):
    imgs = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (40, 30), (30, 30, 200))]
    return mllm.encode(imgs, ["The circle is red .", "The circle has the same color as a banana ."], [Q, Q])


def _edits(spans, flows, layers):
    setter = knockout_setter(spans)
    return [e for f in flows for e in setter(Knockout(f, 0, layers), slice(None))]


def test_a_span_the_answer_never_attends_changes_nothing(mllm, enc):
    pad = enc.inputs["attention_mask"] == 0  # left padding: masked for every query already
    assert pad.any()
    spans = dict(enc.spans, image=pad)
    clean = forward(mllm, enc.inputs)[0]
    knocked = forward(mllm, enc.inputs, _edits(spans, ["image->last"], mllm.n_layers))[0]
    assert torch.equal(knocked, clean)


def _by_hand(mllm, inputs, keys):
    def hook(module, args, kwargs):
        m = kwargs["attention_mask"].clone()
        m[..., -1, :] = m[..., -1, :].masked_fill(keys[:, None, :], torch.finfo(m.dtype).min)
        return args, dict(kwargs, attention_mask=m)

    handles = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in mllm.layers]
    try:
        with torch.no_grad():
            return mllm.model(**inputs).logits[:, -1]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_blocking_every_span_into_the_last_position_equals_masking_by_hand(mllm, enc, kernel):
    s = enc.spans
    keys = s["image"] | s["description"] | s["question"]
    assert not keys[:, -1].any() and s["template"].any()
    flows = ["image->last", "description->last", "question->last"]
    if kernel == "sdpa":
        knocked = forward(mllm, enc.inputs, _edits(s, flows, mllm.n_layers))[0]
    with eager_attention(mllm):
        if kernel == "eager":
            knocked = forward(mllm, enc.inputs, _edits(s, flows, mllm.n_layers))[0]
        ref = _by_hand(mllm, enc.inputs, keys).float()
        clean = forward(mllm, enc.inputs)[0]
    assert float((ref - clean).abs().max()) > 1e-4  # not vacuous
    torch.testing.assert_close(knocked, ref, atol=1e-5, rtol=0)


def test_windows_and_kernel(mllm):
    assert windows(8) == [(s, s + 2) for s in range(7)] and windows(2) == [(0, 1), (1, 2)]
    assert windows(4, 4) == [(0, 4)]
    with pytest.raises(MechmodError, match="choose 1..4"):
        windows(4, 5)
    with pytest.raises(MechmodError, match="unknown flow"):
        Knockout("last->image", 0, 1)
    mllm.model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(MechmodError, match="sdpa or eager"):
            check_kernel(mllm)
    finally:
        mllm.model.config._attn_implementation = "sdpa"


@pytest.mark.parametrize("command", ["attribute", "flow", "scale-heads"])
def test_cli_help(command, capsys):
    from mechmod.cli import main

    assert main([command, "--help"]) == 0
    assert "--run" in capsys.readouterr().out
