"""The adapter contract: every registered family, on its tiny random model
(tests/tiny_families.py), and a CPU stub whose modules sit at paths no HF
family uses, pass the same checks. It loads through its self-check; every
site read through the backend layer equals plain PyTorch forward hooks on
the modules its adapter declares; embedding + attention and MLP
contributions = the last layer's output; a mask edit that masks nothing
changes nothing and an image knockout through the mask equals one done by
hand; the TransformerLens bridge reads the same sites where it bridges the
family (and says to use nnsight where it does not)."""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import pytest
import torch
from PIL import Image
from torch import nn
from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
from transformers import AutoProcessor, LlamaConfig
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutput
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from mechmod.backends import Site, eager_attention, run, self_check
from mechmod.backends.tl_backend import computes_attention
from mechmod.errors import MechmodError
from mechmod.models import families, load_model
from mechmod.models.base import MLLM, Adapter
from tests.tiny_families import build_tiny

SUBJECTS = tuple(sorted(families())) + ("stub",)
MODULE_SITES = ("resid_in", "z", "attn", "attn_contrib", "mlp", "mlp_contrib", "resid")
DESCS, QUESTIONS = ["the circle is red .", "There is a blue square in this picture."], ["what color ?"] * 2


# ---------------------------------------------------------------- the stub
class StubBlock(nn.Module):
    """A decoder layer with post-module norms under names no HF family uses."""

    def __init__(self, config, layer):
        super().__init__()
        d = config.hidden_size
        self.norm1, self.mixer, self.mixer_norm = LlamaRMSNorm(d), LlamaAttention(config, layer), LlamaRMSNorm(d)
        self.norm2, self.ffn, self.ffn_norm = LlamaRMSNorm(d), LlamaMLP(config), LlamaRMSNorm(d)
        for norm in (self.mixer_norm, self.ffn_norm):  # not the identity, so a wrong contribution path shows
            norm.weight.data.uniform_(0.5, 1.5)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None):
        a, _ = self.mixer(hidden_states=self.norm1(hidden_states), attention_mask=attention_mask,
                          position_embeddings=position_embeddings)
        h = hidden_states + self.mixer_norm(a)
        return h + self.ffn_norm(self.ffn(self.norm2(h)))


class StubVLM(nn.Module):
    """A CPU stub VLM: 14 px patches -> ``eye`` -> ``bridge`` into the image
    tokens of a 2-layer LM at ``lm.blocks``, read out by ``unembed``."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.lm = nn.Module()
        self.lm.embed = nn.Embedding(config.vocab_size, d)
        self.lm.blocks = nn.ModuleList(StubBlock(config, i) for i in range(config.num_hidden_layers))
        self.lm.norm = LlamaRMSNorm(d)
        self.rotary = LlamaRotaryEmbedding(config)
        self.eye, self.bridge = nn.Linear(3 * 14 * 14, 16), nn.Linear(16, d)
        self.unembed = nn.Linear(d, config.vocab_size, bias=False)

    def set_attn_implementation(self, name):
        self.config._attn_implementation = name

    def forward(self, input_ids, attention_mask=None, pixel_values=None, logits_to_keep=0, **kwargs):
        h = self.lm.embed(input_ids)
        if pixel_values is not None:
            patches = pixel_values.unfold(2, 14, 14).unfold(3, 14, 14)  # [B, 3, 2, 2, 14, 14]
            patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
            image = (input_ids == self.config.image_token_id)[..., None]
            h = h.masked_scatter(image, self.bridge(self.eye(patches)).to(h.dtype))
        pos = torch.arange(h.shape[1], device=h.device)[None].expand(h.shape[0], -1)
        mask = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=attention_mask, cache=None,
                                  position_ids=pos)
        rope = self.rotary(h, position_ids=pos)
        for block in self.lm.blocks:
            h = block(h, attention_mask=mask, position_embeddings=rope)
        h = self.lm.norm(h)
        return CausalLMOutput(logits=self.unembed(h[:, -logits_to_keep:] if logits_to_keep else h))


STUB = Adapter(family="stub", model_types=("stub",), model_class="StubVLM", image_placeholder="<image>",
               prompt_format="USER: {image}\n{text} ASSISTANT:", description="CPU stub", layers_path="lm.blocks",
               final_norm_path="lm.norm", lm_head_path="unembed", embed_path="lm.embed", vision_path="eye",
               projector_path="bridge", attn_path="mixer", mlp_path="ffn", o_proj_path="mixer.o_proj",
               post_attn_norm_path="mixer_norm", post_mlp_norm_path="ffn_norm", n_heads_attr="num_attention_heads",
               head_dim_attr="head_dim")


def build_stub(tiny_llava_dir) -> MLLM:
    """The stub with the tiny LLaVA's processor (28 px images: 4 image tokens), self-checked."""
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    tok = processor.tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
    config.image_token_id = tok.convert_tokens_to_ids("<image>")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    mllm = MLLM(StubVLM(config), processor, STUB, name="stub")
    self_check(mllm)
    return mllm


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module", params=SUBJECTS)
def subject(request, tiny_dir):
    """(tiny model directory or None, the loaded and self-checked model)."""
    if request.param == "stub":
        return None, build_stub(tiny_dir("llava"))
    path = tiny_dir(request.param)
    return path, load_model(str(path))


def _inputs(mllm, images=True):
    imgs = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 200))]
    return mllm.encode(imgs if images else [None, None], DESCS, QUESTIONS)


def plain_hooks(mllm, inputs) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
    """Answer logits and every module site (and ``pattern`` under eager
    attention) from forward hooks on the adapter's declared modules."""
    a, got, handles = mllm.adapter, {}, []

    def keep(site, index=0):
        def hook(module, args, out):
            x = out[index] if isinstance(out, tuple) else out
            if x is not None:  # no weights outside eager attention
                got[site] = x.detach().clone()
        return hook

    def keep_input(site):
        def hook(module, args, kwargs):
            got[site] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return hook

    for l, layer in enumerate(mllm.layers):
        def pre(path, site):
            return a.module(layer, path).register_forward_pre_hook(keep_input(site), with_kwargs=True)

        def post(path, site, index=0):
            return a.module(layer, path).register_forward_hook(keep(site, index))

        handles += [layer.register_forward_pre_hook(keep_input(Site(l, "resid_in")), with_kwargs=True),
                    pre(a.o_proj_path, Site(l, "z")), post(a.attn_path, Site(l, "attn")),
                    post(a.attn_path, Site(l, "pattern"), index=1),
                    post(a.post_attn_norm_path or a.attn_path, Site(l, "attn_contrib")),
                    post(a.mlp_path, Site(l, "mlp")), post(a.post_mlp_norm_path or a.mlp_path, Site(l, "mlp_contrib")),
                    layer.register_forward_hook(keep(Site(l, "resid")))]
    try:
        with torch.no_grad():
            logits = mllm.model(**inputs).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    for l in range(mllm.n_layers):
        got[Site(l, "z")] = got[Site(l, "z")].unflatten(-1, (mllm.n_heads, mllm.head_dim))
    return logits, got


def read_all(mllm, inputs, components, backend="nnsight"):
    sites = [Site(l, c) for l in range(mllm.n_layers) for c in components]
    logits, got = run(mllm, inputs, reads=[(s, lambda x: x) for s in sites], backend=backend)
    return logits, dict(zip(sites, got))


# ------------------------------------------------------------------ tests
def test_every_registered_family_has_a_tiny_model():
    for family in families():
        assert family in SUBJECTS
    with pytest.raises(ValueError, match="add one here"):
        build_tiny("no_such_family", "unused")


def test_loads_through_its_self_check_which_names_a_wrong_path(subject):
    _, mllm = subject
    assert mllm.n_layers == 2 and mllm.n_heads * mllm.head_dim == mllm.adapter.module(
        mllm.layers[0], mllm.adapter.o_proj_path).weight.shape[1]
    children = [n for n, _ in mllm.layers[0].named_children()]
    wrong = MLLM(mllm.model, mllm.processor, dataclasses.replace(mllm.adapter, mlp_path="no_mlp"), name="wrong")
    with pytest.raises(MechmodError, match="no_mlp") as err:
        self_check(wrong)
    assert all(name in str(err.value) for name in children)  # lists the modules that do exist
    a = mllm.adapter  # post-module norms forgotten, or declared where there are none
    norms = dict(post_attn_norm_path=None, post_mlp_norm_path=None) if a.post_attn_norm_path else \
        dict(post_attn_norm_path="post_attention_layernorm")  # Llama's: the MLP's input norm
    with pytest.raises(MechmodError, match="contributions differ"):
        self_check(MLLM(mllm.model, mllm.processor, dataclasses.replace(a, **norms), name="norms"))


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_sites_equal_plain_forward_hooks(subject, kernel):
    _, mllm = subject
    enc = _inputs(mllm)
    weights = ("pattern", "scores") if kernel == "eager" else ()
    with eager_attention(mllm) if kernel == "eager" else nullcontext():
        ref_logits, ref = plain_hooks(mllm, enc.inputs)
        logits, got = read_all(mllm, enc.inputs, MODULE_SITES + weights)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    for site, x in got.items():
        if site.component == "scores":  # no module returns them: they give the pattern
            pattern = got[Site(site.layer, "pattern")]
            torch.testing.assert_close(torch.softmax(x.float(), -1), pattern, atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(x, ref[site], atol=1e-6, rtol=0, msg=f"{mllm.family} {site}")
    assert got[Site(0, "z")].shape[2:] == (mllm.n_heads, mllm.head_dim)


@pytest.mark.parametrize("images", [True, False])
def test_embedding_plus_contributions_is_the_last_residual(subject, images):
    _, mllm = subject
    enc = _inputs(mllm, images)
    _, got = read_all(mllm, enc.inputs, ("resid_in", "attn_contrib", "mlp_contrib", "resid"))
    total = got[Site(0, "resid_in")] + sum(got[Site(l, c)] for l in range(mllm.n_layers)
                                           for c in ("attn_contrib", "mlp_contrib"))
    last = got[Site(mllm.n_layers - 1, "resid")]
    torch.testing.assert_close(total, last, atol=1e-4, rtol=0)


def _knockout_by_hand(mllm, inputs, image):
    """Eager attention, every layer's float mask edited by a plain pre-hook:
    the answer row sees no image token."""
    def hook(module, args, kwargs):
        m = kwargs["attention_mask"].clone()
        m[..., -1, :] = m[..., -1, :].masked_fill(image[:, None, :], torch.finfo(m.dtype).min)
        return args, dict(kwargs, attention_mask=m)

    handles = [mllm.adapter.module(layer, mllm.adapter.attn_path).register_forward_pre_hook(hook, with_kwargs=True)
               for layer in mllm.layers]
    try:
        with eager_attention(mllm), torch.no_grad():
            return mllm.model(**inputs).logits[:, -1]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_mask_edits(subject, kernel):
    _, mllm = subject
    enc = _inputs(mllm)
    image = enc.spans["image"].to(mllm.device)
    assert image.any(1).all()

    def knock(x):
        x[..., -1, :] &= ~image[:, None, :]
        return x

    with eager_attention(mllm) if kernel == "eager" else nullcontext(), torch.no_grad():
        clean, _ = run(mllm, enc.inputs)
        same, _ = run(mllm, enc.inputs, edits=[(Site(l, "mask"), lambda x: x) for l in range(mllm.n_layers)])
        knocked, _ = run(mllm, enc.inputs, edits=[(Site(l, "mask"), knock) for l in range(mllm.n_layers)])
    assert torch.equal(same, clean)
    ref = _knockout_by_hand(mllm, enc.inputs, image)
    assert float((ref - clean).abs().max()) > 1e-4  # not vacuous
    torch.testing.assert_close(knocked, ref, atol=1e-5, rtol=0)


def test_transformer_lens_reads_the_same_sites(subject):
    path, mllm = subject
    if type(mllm.model).__name__ not in SUPPORTED_ARCHITECTURES:  # TransformerLens 4.3: Qwen2-VL, the stub
        with pytest.raises(MechmodError, match="no bridge for .*use --backend nnsight"):
            run(mllm, _inputs(mllm).inputs, reads=[(Site(0, "resid"), lambda x: x)], backend="transformer_lens")
        return
    fresh = load_model(str(path), check=False)  # the bridge rewires the model it boots on
    enc = _inputs(fresh)
    with eager_attention(fresh):
        logits, ref = read_all(fresh, enc.inputs, MODULE_SITES + ("pattern", "scores"))
        weights = ("pattern", "scores") if computes_attention(fresh, 0) else ("pattern",)  # not Qwen2.5-VL
        tl_logits, got = read_all(fresh, enc.inputs, MODULE_SITES + weights, "transformer_lens")
        if "scores" not in weights:  # the bridge wraps HF attention: its hook_attn_scores sees the weights
            with pytest.raises(MechmodError, match="no pre-softmax scores.*use --backend nnsight"):
                read_all(fresh, enc.inputs, ("scores",), "transformer_lens")
    torch.testing.assert_close(tl_logits, logits, atol=1e-4, rtol=0)
    for site, x in got.items():
        if site.component == "scores":  # masked entries: -inf or the dtype's minimum, both mean 'never'
            seen = ref[Site(site.layer, "pattern")] > 0
            torch.testing.assert_close(x[seen], ref[site][seen], atol=1e-4, rtol=0)
        else:
            torch.testing.assert_close(x, ref[site], atol=1e-4, rtol=0, msg=f"{fresh.family} {site}")
    with pytest.raises(MechmodError, match="'mask'.*use --backend nnsight"):
        run(fresh, enc.inputs, edits=[(Site(0, "mask"), lambda x: x)], backend="transformer_lens")
