"""Every adapter family on a tiny random-weight model built offline
(tests/tiny_families.py): loading with its self-check, the three inputs and
their span masks, both tracing backends against a plain HF forward, the
answer labels, and batching."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mechmod.answers import LabelSet
from mechmod.errors import MechmodError
from mechmod.models import load_model
from mechmod.tracing import trace
from tests.tiny_families import COLORS, FAMILIES

TL_FAMILIES = {"llava_next", "qwen2_5_vl", "gemma3"}  # TransformerLens 4.3 bridges these; not Qwen2-VL
DESCS = ["the circle is red .", "There is a blue square in this picture."]
QUESTIONS = ["What color is the circle?", "what color is the square ? Answer with one word."]
LAYOUTS = ("vision", "text", "multimodal")
# What AutoProcessor loads (transformers 5 loads llava_next's LlamaTokenizer files as TokenizersBackend).
CLASSES = {
    "llava_next": ("LlavaNextProcessor", "LlavaNextImageProcessor", "TokenizersBackend"),
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLImageProcessor", "Qwen2Tokenizer"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "Qwen2Tokenizer"),
    "gemma3": ("Gemma3Processor", "Gemma3ImageProcessor", "GemmaTokenizer"),
}


def _images():
    return [Image.new("RGB", (800, 600), (200, 30, 30)), Image.new("RGB", (224, 224), (30, 30, 200))]


def _encode(m, layout):
    images = _images() if layout != "text" else [None, None]
    descs = DESCS if layout != "vision" else [None, None]
    return m.encode(images, descs, QUESTIONS)


@pytest.fixture(scope="session", params=FAMILIES)
def mllm(request, tiny_dir):
    return load_model(str(tiny_dir(request.param)))  # runs the adapter self-check


@pytest.fixture(scope="session")
def traced(mllm):
    """family -> (encoded multimodal batch, nnsight trace, HF forward)."""
    enc = _encode(mllm, "multimodal")
    tr = trace(mllm, enc, backend="nnsight")
    with torch.no_grad():
        out = mllm.model(**enc.inputs, output_hidden_states=True)
    return enc, tr, out


def test_loads_with_real_classes(mllm):
    adapter = mllm.adapter
    assert mllm.family in FAMILIES and type(mllm.model).__name__ == adapter.model_class
    assert (mllm.n_layers, mllm.d_model) == (2, 64) and mllm.dtype == torch.float32
    proc = mllm.processor
    assert (type(proc).__name__, type(proc.image_processor).__name__, type(proc.tokenizer).__name__) == \
        CLASSES[mllm.family]
    for path in (adapter.vision_path, adapter.projector_path):
        assert isinstance(adapter.module(mllm.model, path), torch.nn.Module)
    assert mllm.embed is adapter.module(mllm.model, adapter.embed_path) is mllm.model.get_input_embeddings()
    assert mllm.image_token_id == mllm.model.config.image_token_id
    assert mllm.tokenizer.padding_side == "left"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encode_spans_decode_to_their_text(mllm, layout):
    enc = _encode(mllm, layout)
    ids, spans, tok = enc.inputs["input_ids"].cpu(), enc.spans, mllm.tokenizer
    assert enc.inputs["attention_mask"][:, -1].all()  # left padding: the answer is the last position
    assert (enc.answer_index == ids.shape[1] - 1).all()
    n_img = spans["image"].sum(1)
    assert (n_img > 0).all() if layout != "text" else (n_img == 0).all()
    assert ("pixel_values" in enc.inputs) == (layout != "text")
    named = torch.stack([spans[k] for k in ("image", "description", "question", "template")])
    assert (named.sum(0) <= 1).all()  # disjoint
    assert (named.any(0) == enc.inputs["attention_mask"].bool().cpu()).all()  # padding belongs to none
    for i in range(2):
        text = tok.decode(ids[i][spans["question"][i]])
        assert text.strip() == QUESTIONS[i]
        desc = tok.decode(ids[i][spans["description"][i]]).strip()
        assert desc == (DESCS[i] if layout != "vision" else "")


def test_chat_template_and_prompt_format_agree(mllm):
    """The adapter's fallback prompt_format gives the hub chat template's tokens."""
    for layout in ("vision", "text"):
        chat = _encode(mllm, layout)
        mllm._chat = False
        try:
            plain = _encode(mllm, layout)
        finally:
            mllm._chat = True
        assert torch.equal(chat.inputs["input_ids"], plain.inputs["input_ids"]), (chat.prompts, plain.prompts)
        bos = mllm.tokenizer.bos_token_id
        if bos is not None:  # exactly one BOS per row, even when the template writes it
            assert ((chat.inputs["input_ids"] == bos).sum(1) == 1).all()


def test_nnsight_matches_hf_forward(mllm, traced):
    enc, tr, out = traced
    L, D = mllm.n_layers, mllm.d_model
    assert tuple(tr.resid.shape) == (2, L + 1, D)
    assert tr.logits.shape == (2, mllm.lm_head.weight.shape[0])
    for layer in range(L):  # hidden_states[L] is already normed: checked through the lens below
        torch.testing.assert_close(tr.resid[:, layer], out.hidden_states[layer][:, -1].float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(tr.logits, out.logits[:, -1].float(), atol=1e-4, rtol=0)
    with torch.no_grad():
        lens = mllm.lm_head(mllm.final_norm(tr.resid[:, -1]))
    torch.testing.assert_close(lens, out.logits[:, -1], atol=1e-4, rtol=0)


def test_transformer_lens_backend(mllm, traced):
    enc, tr, _ = traced
    if mllm.family not in TL_FAMILIES:
        with pytest.raises(MechmodError, match="no bridge for .*use --backend nnsight"):
            trace(mllm, enc, backend="transformer_lens")
        return
    tl = trace(mllm, enc, backend="transformer_lens")
    torch.testing.assert_close(tl.resid, tr.resid, atol=1e-4, rtol=0)
    torch.testing.assert_close(tl.logits, tr.logits, atol=1e-4, rtol=0)


def test_batch_equals_one_at_a_time(mllm, traced):
    enc, tr, _ = traced
    padded = (enc.inputs["attention_mask"][:, 0] == 0).nonzero().flatten().tolist()
    assert len(padded) == 1  # the two images give different numbers of tokens, or the texts differ
    i = padded[0]
    one = trace(mllm, mllm.encode([_images()[i]], [DESCS[i]], [QUESTIONS[i]]))
    torch.testing.assert_close(one.logits[0], tr.logits[i], atol=1e-4, rtol=0)
    torch.testing.assert_close(one.resid[0], tr.resid[i], atol=1e-4, rtol=0)


def test_labelset_resolves_every_color(mllm):
    labels = LabelSet(mllm.tokenizer, COLORS)
    tok = mllm.tokenizer
    for color in COLORS:
        ids = labels.token_ids(color)
        assert ids
        pieces = [tok.decode([t]).strip().lower() for t in ids]  # the word, or a prefix of 3+ letters ("YEL")
        assert color in pieces and all(color.startswith(p) and len(p) >= 3 for p in pieces)
        assert tok.encode(" " + color, add_special_tokens=False)[-1] in ids
