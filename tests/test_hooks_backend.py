"""The hooks backend reads and edits the same tensors as the nnsight
backend: every read-only site equal, edits with equal effects, traces (the
runner's hot path, attention mass included) identical; the site it cannot
reach is refused by name."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mechmod.backends import Site, eager_attention, run
from mechmod.errors import MechmodError
from mechmod.models import load_model
from mechmod.prefix import trace_shared
from mechmod.tracing import trace

PROMPTS = [(None, "What color is the circle?"), ("The circle is blue.", "What color is the circle?")]
COMPONENTS = ("resid_in", "z", "attn", "attn_contrib", "mlp", "mlp_contrib", "resid")


@pytest.fixture(scope="module", params=["llava", "gemma3"])
def model(request, tiny_llava_dir, tiny_dir):
    return load_model(str(tiny_llava_dir if request.param == "llava" else tiny_dir(request.param)))


@pytest.fixture(scope="module")
def encoded(model):
    image = Image.new("RGB", (224, 224), (30, 30, 200))
    return model.encode([image] * len(PROMPTS), [d for d, _ in PROMPTS], [q for _, q in PROMPTS])


def _read_all(mllm, inputs, backend, components=COMPONENTS, edits=()):
    sites = [Site(l, c) for l in range(mllm.n_layers) for c in components]
    logits, got = run(mllm, inputs, edits=edits, reads=[(s, lambda x: x) for s in sites], backend=backend)
    return logits, dict(zip(sites, got))


def test_every_module_site_reads_what_nnsight_reads(model, encoded):
    a_logits, a = _read_all(model, encoded.inputs, "hooks")
    b_logits, b = _read_all(model, encoded.inputs, "nnsight")
    assert torch.equal(a_logits, b_logits)
    for site in a:
        assert torch.equal(a[site], b[site]), site


def test_edits_and_the_mask_have_the_effects_they_have_under_nnsight(model, encoded):
    def knock(m):  # the last query no longer sees the first half of the keys
        m[:, :, -1, : m.shape[-1] // 2] = False
        return m

    edits = [(Site(0, "resid_in"), lambda x: x * 0.5), (Site(0, "z"), lambda z: z * 0), (Site(1, "mask"), knock),
             (Site(1, "mlp_contrib"), lambda x: x + 1.0)]
    a_logits, a = _read_all(model, encoded.inputs, "hooks", ("mask", "resid"), edits)
    b_logits, b = _read_all(model, encoded.inputs, "nnsight", ("mask", "resid"), edits)
    clean, _ = run(model, encoded.inputs, backend="hooks")
    assert not torch.allclose(a_logits, clean)
    assert torch.equal(a_logits, b_logits)
    assert all(torch.equal(a[s], b[s]) for s in a)


def test_pattern_reads_under_eager_and_scores_is_refused(model, encoded):
    with eager_attention(model):
        _, a = _read_all(model, encoded.inputs, "hooks", ("pattern",))
        _, b = _read_all(model, encoded.inputs, "nnsight", ("pattern",))
        assert all(torch.equal(a[s], b[s]) for s in a)
        with pytest.raises(MechmodError, match="'scores'.*nnsight or transformer_lens"):
            run(model, encoded.inputs, reads=[(Site(0, "scores"), lambda x: x)], backend="hooks")


def test_traces_are_identical_to_nnsight_ones(model, encoded):
    for attention in (False, True):
        a, b = (trace(model, encoded, backend=k, attention=attention) for k in ("hooks", "nnsight"))
        assert torch.equal(a.logits, b.logits) and torch.equal(a.resid, b.resid)
        assert attention is False or torch.equal(a.attn, b.attn)
    image = Image.new("RGB", (224, 224), (200, 30, 30))
    a, b = (trace_shared(model, [image], [PROMPTS], batch_size=2, backend=k, attention=True)[0]
            for k in ("hooks", "nnsight"))
    assert torch.equal(a.logits, b.logits) and torch.equal(a.resid, b.resid)
    assert torch.equal(a.span_attention, b.span_attention)
