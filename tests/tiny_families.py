"""Tiny random-weight models of every adapter family, built offline.

``build_tiny(family, out_dir)`` saves (``save_pretrained``) a model of the
family's real HF class with 2 decoder layers, d_model 64 and a 2-layer
vision tower on 32-64 px images, together with a real tokenizer of the
family's tokenizer class (a small BPE vocabulary trained here with the
``tokenizers`` library through the class's own normalizer and
pre-tokenizer) and the family's real processor and image processor, so
that ``mechmod.models.load_model(str(out_dir))`` loads it with no network.
With ``chat_template`` (default) the processor carries the user-turn part
of the family's hub chat template (abridged: no system/assistant turns,
videos or tools); without it mechmod falls back on the adapter's
``prompt_format``. ``build_tiny("llava", ...)`` is tests/tiny_llava.py's
2-layer 32-d LLaVA (the organism's builder), so every registered family
has its tiny model here (tests/test_adapter_contract.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny_llava import build_tiny_llava

FAMILIES = ("llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3")  # built here
ALL_FAMILIES = ("llava",) + FAMILIES  # llava: tests/tiny_llava.py (2-layer 32-d, the organism's builder)
COLORS = ("red", "yellow", "blue", "green", "purple", "orange")

# Words every tiny vocabulary knows as whole tokens (with and without a
# leading space, and capitalised): the colour answers and the test prompts.
WORDS = COLORS + (
    "what", "color", "is", "the", "circle", "square", "triangle", "shape", "a", "check", "image", "in", "of",
    "answer", "with", "one", "word", "there", "this", "picture", "shows", "and",
)
PUNCT = "?.,:!'\"()-/[]<>|_"

D_MODEL = 64
LM_LAYERS = 2
SEED = 1234


def _corpus(extra: tuple[str, ...], newlines: bool = True) -> list[str]:
    """Each word alone, after a space, before punctuation (and after a newline)."""
    words = list(WORDS) + [w.capitalize() for w in COLORS + ("what", "the", "a", "there", "this")] + list(extra)
    lines = [" ".join(words), " ".join(words[::-1])]
    lines += [f"{w} {w}" for w in words] + [f"{w}?" for w in words] + [f"{w}." for w in words]
    lines += [f"\n{w}\n" for w in words] if newlines else []
    lines += [" ".join(PUNCT), PUNCT] + [w.upper() for w in COLORS]
    return lines * 3


def _train_bpe(pipeline, corpus: list[str], specials: list[str], alphabet: list[str], vocab_size: int = 600):
    """vocab and merges of a BPE trained on ``corpus`` through ``pipeline``'s
    normalizer and pre-tokenizer."""
    from tokenizers import Tokenizer, models, trainers

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.normalizer = pipeline.normalizer
    tk.pre_tokenizer = pipeline.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    tk.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tk.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def _byte_tokens() -> list[str]:
    return [f"<0x{i:02X}>" for i in range(256)]


def _sentencepiece_like(specials: list[str], extra_words: tuple[str, ...], pieces: tuple[str, ...] = ()):
    """vocab/merges in the SentencePiece-converted style of Llama and Gemma:
    "▁"-prefixed and bare word pieces, byte-fallback tokens (a newline is
    ``<0x0A>`` unless listed in ``pieces``), no piece across words."""
    from tokenizers import pre_tokenizers

    class _P:  # train word by word (Metaspace split), as SentencePiece does
        normalizer = None
        pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)

    corpus = _corpus(extra_words, newlines=False)
    chars = sorted(set("".join(corpus)) - {" "}) + ["▁"]
    vocab, merges = _train_bpe(_P, corpus, specials + _byte_tokens() + list(pieces), chars)
    return vocab, merges


# Abridged from the hub checkpoints' chat templates (user turns, images, text).
CHAT_TEMPLATES = {
    "llava_next": (  # llava-hf/llava-v1.6-mistral-7b-hf
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
        "{{ ' [/INST]' }}{% endif %}{% endfor %}"),
    "qwen2_vl": (  # Qwen/Qwen2-VL-7B-Instruct (Qwen2.5-VL's is the same for these turns)
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "gemma3": (  # google/gemma-3-4b-it
        "{{ bos_token }}{%- for message in messages -%}"
        "{{ '<start_of_turn>' + message['role'] + '\n' }}{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
        "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
        "{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"),
}
CHAT_TEMPLATES["qwen2_5_vl"] = CHAT_TEMPLATES["qwen2_vl"]


# ------------------------------------------------------------- tokenizers
def _tok_llava_next():
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>"]
    vocab, merges = _sentencepiece_like(specials, ("[INST]", "[/INST]"))
    tok = LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                         pad_token="<unk>", add_bos_token=True, legacy=False, padding_side="left",
                         model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def _tok_qwen():
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    probe = Qwen2Tokenizer()
    vocab, merges = _train_bpe(probe._tokenizer, _corpus(("system", "user", "assistant", "You", "helpful")),
                               specials[:1], pre_tokenizers.ByteLevel.alphabet())
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", padding_side="left", model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tok


def _tok_gemma3():
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab, merges = _sentencepiece_like(specials, ("user", "model"), pieces=("\n", "\n\n"))
    mm = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = GemmaTokenizer(vocab=vocab, merges=merges, padding_side="left", model_max_length=8192,
                         add_bos_token=True, extra_special_tokens=mm)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>", *mm.values()]})
    return tok


# ------------------------------------------------------------- families
def _llava_next(tok):
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor, MistralConfig)

    img, patch = 32, 8
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=img, patch_size=patch, projection_dim=32)
    text = MistralConfig(vocab_size=len(tok), hidden_size=D_MODEL, intermediate_size=128,
                         num_hidden_layers=LM_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, sliding_window=None)
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                          image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", image_seq_length=(img // patch) ** 2)
    model = LlavaNextForConditionalGeneration(cfg)
    ip = LlavaNextImageProcessor(size={"shortest_edge": img}, crop_size={"height": img, "width": img},
                                 image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              image_token="<image>")
    return model, proc


def _qwen_image_processors(patch: int):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    factor = patch * 2
    size = {"shortest_edge": 4 * factor * factor, "longest_edge": 16 * factor * factor}  # 32x32 .. 64x64 px
    ip = Qwen2VLImageProcessor(size=size, patch_size=patch, temporal_patch_size=2, merge_size=2)
    vp = Qwen2VLVideoProcessor(size=size, patch_size=patch, temporal_patch_size=2, merge_size=2)
    return ip, vp


def _qwen_text(tok, config_cls):
    return config_cls(vocab_size=len(tok), hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=LM_LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)


def _qwen_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _qwen2_vl(tok):
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor,
                              Qwen2VLTextConfig, Qwen2VLVisionConfig)

    patch = 8
    vision = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=D_MODEL, num_heads=2, mlp_ratio=2,
                                 patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
    cfg = Qwen2VLConfig(text_config=_qwen_text(tok, Qwen2VLTextConfig), vision_config=vision, **_qwen_ids(tok))
    model = Qwen2VLForConditionalGeneration(cfg)
    ip, vp = _qwen_image_processors(patch)
    return model, Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp)


def _qwen2_5_vl(tok):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig)

    patch = 8
    vision = Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                    out_hidden_size=D_MODEL, patch_size=patch, spatial_merge_size=2,
                                    temporal_patch_size=2, window_size=32, fullatt_block_indexes=[1])
    cfg = Qwen2_5_VLConfig(text_config=_qwen_text(tok, Qwen2_5_VLTextConfig), vision_config=vision,
                           **_qwen_ids(tok))
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    ip, vp = _qwen_image_processors(patch)
    return model, Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp)


def _gemma3(tok):
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor,
                              Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig)

    img, patch, mm_tokens = 32, 8, 4
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=img, patch_size=patch, vision_use_head=False)
    text = Gemma3TextConfig(vocab_size=len(tok), hidden_size=D_MODEL, intermediate_size=128,
                            num_hidden_layers=LM_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                            query_pre_attn_scalar=32, sliding_window=16, layer_types=["sliding_attention",
                                                                                      "full_attention"],
                            max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ids = tok.convert_tokens_to_ids
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=mm_tokens,
                       boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                       image_token_index=ids("<image_soft_token>"))
    model = Gemma3ForConditionalGeneration(cfg)
    ip = Gemma3ImageProcessor(size={"height": img, "width": img})
    return model, Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=mm_tokens)


_BUILDERS = {
    "llava_next": (_tok_llava_next, _llava_next),
    "qwen2_vl": (_tok_qwen, _qwen2_vl),
    "qwen2_5_vl": (_tok_qwen, _qwen2_5_vl),
    "gemma3": (_tok_gemma3, _gemma3),
}


def build_tiny(family: str, out_dir: Path, chat_template: bool = True) -> Path:
    """Build and save a tiny random-weight ``family`` model, its tokenizer and
    processor (with the family's chat template unless ``chat_template`` is
    false; llava's has none) under ``out_dir``; returns ``out_dir``. A new
    family adds its builder to ``_BUILDERS``."""
    if family == "llava":
        return build_tiny_llava(Path(out_dir))
    if family not in _BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; have llava, {', '.join(_BUILDERS)}: add one here")
    make_tok, make = _BUILDERS[family]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    tok = make_tok()
    model, proc = make(tok)
    if chat_template:
        proc.chat_template = CHAT_TEMPLATES[family]
    model.save_pretrained(out_dir, safe_serialization=True)
    proc.save_pretrained(out_dir)
    return out_dir
