"""Direct logit attribution: the parts add up to the model's own logit
difference on every family's tiny model (and the heads to their layer's
attention), the embedding and head shares equal a computation by hand with
plain hooks, and a centring norm is refused."""

import pytest
import torch
from PIL import Image

from mechmod.answers import LabelSet
from mechmod.errors import MechmodError
from mechmod.interventions.attribution import attribute, frozen_scale
from mechmod.models import load_model
from tests.tiny_families import ALL_FAMILIES, COLORS

Q = "What color is the circle ?"


def _encode(mllm):
    imgs = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 200))]
    return mllm.encode(imgs, ["The circle is red .", "The circle is blue ."], [Q, Q])


def _close(parts, whole):
    """|sum - whole| <= 1e-3 * sum |parts| + 1e-5, per case."""
    return ((parts.sum(-1) - whole).abs() <= 1e-3 * parts.abs().sum(-1) + 1e-5).all()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_parts_add_up_on_every_family(family, tiny_dir):
    mllm = load_model(str(tiny_dir(family)))
    a = attribute(mllm, _encode(mllm), LabelSet(mllm.tokenizer, list(COLORS)), ["blue", "green"], ["red", "yellow"])
    parts = [a.embed[:, None], a.attn, a.mlp] + ([a.attn_bias] if a.attn_bias is not None else [])
    assert _close(torch.cat(parts, 1), a.total)
    assert float(a.total.abs().min()) > 1e-4  # not vacuous
    for layer in range(mllm.n_layers):
        assert _close(a.heads[:, layer], a.attn[:, layer])
    assert float(a.residual.abs().max()) < 1e-4


def test_shares_by_hand_on_the_tiny_llava(mllm):
    enc = _encode(mllm)
    labels = LabelSet(mllm.tokenizer, list(COLORS))
    a = attribute(mllm, enc, labels, ["blue", "green"], ["red", "yellow"])
    z, resid = {}, {}
    hooks = [mllm.layers[i].self_attn.o_proj.register_forward_pre_hook(
        lambda m, args, i=i: z.__setitem__(i, args[0][:, -1])) for i in range(mllm.n_layers)]
    hooks.append(mllm.layers[0].register_forward_pre_hook(lambda m, args: resid.__setitem__("emb", args[0][:, -1])))
    hooks.append(mllm.final_norm.register_forward_pre_hook(lambda m, args: resid.__setitem__("h", args[0][:, -1])))
    with torch.no_grad():
        logits = mllm.model(**enc.inputs).logits[:, -1]
    for h in hooks:
        h.remove()
    def best(row, label):  # the label's token variant with the highest logit
        ids = labels.logit_token_ids(label)
        return max(ids, key=lambda i: float(logits[row, i]))
    t = [best(0, "blue"), best(1, "green")]
    v = [best(0, "red"), best(1, "yellow")]
    W, norm = mllm.lm_head.weight, mllm.final_norm
    h = resid["h"]
    d = norm.weight * (W[t] - W[v]) / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    rows = torch.arange(2)
    torch.testing.assert_close(a.total, logits[rows, t] - logits[rows, v], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.embed, (resid["emb"] * d).sum(-1), atol=1e-5, rtol=0)
    H, dh = mllm.n_heads, mllm.head_dim
    for layer in range(mllm.n_layers):
        Wo = mllm.layers[layer].self_attn.o_proj.weight
        for head in range(H):
            share = z[layer][:, head * dh:(head + 1) * dh] @ Wo[:, head * dh:(head + 1) * dh].T
            torch.testing.assert_close(a.heads[:, layer, head], (share * d).sum(-1), atol=1e-5, rtol=0)


def test_a_centring_norm_is_refused():
    x = torch.randn(3, 16)
    assert torch.allclose(frozen_scale(torch.nn.RMSNorm(16), x, "rms") * x, torch.nn.RMSNorm(16)(x), atol=1e-5)
    with pytest.raises(MechmodError, match="not a scale-only norm"):
        frozen_scale(torch.nn.LayerNorm(16), x, "model.norm")
