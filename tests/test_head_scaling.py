"""Head scaling on the tiny LLaVA: alpha 1 is the clean forward, alpha 0
at the answer position is the heads' zero-ablation (interventions.heads),
'all' positions differ from 'last'; head names parse."""

import pytest
import torch
from PIL import Image

from mechmod.errors import MechmodError
from mechmod.interventions.core import forward
from mechmod.interventions.head_scaling import HeadScale, default_head_sets, parse_head, scale_heads
from mechmod.interventions.heads import Unit, knockout_units

Q = "What color is the circle ?"


@pytest.fixture(scope="module")
def enc(mllm):
    imgs = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (40, 30), (30, 30, 200))]
    return mllm.encode(imgs, ["The circle is red .", "The circle has the same color as a banana ."], [Q, Q])


def test_alpha_one_is_clean_and_zero_is_the_zero_ablation(mllm, enc):
    head = (1, 1)
    out = scale_heads(mllm, enc, HeadScale((head,), alphas=(1.0, 0.0, 2.0)))
    clean = forward(mllm, enc.inputs)[0]
    torch.testing.assert_close(out[0], clean, atol=1e-6, rtol=0)  # stacked copies: same up to rounding
    zero = knockout_units(mllm, enc, [Unit(1, "head", 1)], mode="zero")[0]
    torch.testing.assert_close(out[1], zero, atol=1e-6, rtol=0)
    assert float((out[2] - clean).abs().max()) > 1e-5  # not vacuous
    first = HeadScale(((0, 1),), alphas=(0.0,))  # layer 0: the other positions reach the answer through layer 1
    every = scale_heads(mllm, enc, HeadScale(first.heads, first.alphas, positions="all"))
    assert float((every[0] - scale_heads(mllm, enc, first)[0]).abs().max()) > 1e-5


def test_head_names_and_default_sets():
    assert parse_head("3.1", 4, 4) == (3, 1) and parse_head("L2H3", 4, 4) == (2, 3)
    with pytest.raises(MechmodError, match="layers 0..3"):
        parse_head("4.0", 4, 4)
    with pytest.raises(MechmodError, match="LAYER.HEAD"):
        parse_head("x", 4, 4)
    s = {"top_heads": {"text": [{"layer": 0, "head": 1}, {"layer": 2, "head": 0}], "vision": []}}
    assert default_head_sets(s, 1) == {"top text-promoting": [(0, 1)]}
    with pytest.raises(MechmodError, match="--head"):
        default_head_sets({"top_heads": {"text": [], "vision": []}})
