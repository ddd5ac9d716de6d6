"""Architecture, tokenizer and processor of the organism.

A tiny LLaVA-1.5-style model built from scratch: a shallow CLIP vision tower,
a two-layer GELU projector and a small Llama language model, with a
word-level tokenizer and a CLIP image processor, all standard Hugging Face
classes so that ``AutoProcessor.from_pretrained`` and
``LlavaForConditionalGeneration.from_pretrained`` load the checkpoint offline.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "<s>", "</s>")
PROMPT_WORDS = ("USER", "ASSISTANT", ":", "\n")

# Same split as tokenizers' Whitespace pre-tokenizer: runs of word characters,
# runs of other non-space characters.
_WORD_RE = re.compile(r"\w+|[^\w\s]+")


@dataclass
class OrganismConfig:
    """Everything that fixes the architecture (saved with the checkpoint)."""

    # 224 px squashed images in 28 px patches: 64 image tokens, and a dv 0-4
    # target (80-200 px of 800x600) keeps 22-75 px, so its outline survives
    # the resize. Binding a shape to its colour needs the shape of a patch's
    # object, which a 28 px patch shows only in part: six tower layers (v1:
    # three) let each patch read its neighbours before the projector, at a
    # fraction of the cost of finer patches (16 px: 196 tokens, ~2x the step
    # time of this config for the LM alone). Eight LM layers (v1: four) give
    # the layer-wise studies room for votes to oscillate. ~4.4 M parameters:
    # three checkpoints take ~26 MB in bf16, ~53 MB in float32.
    image_size: int = 224
    patch_size: int = 28
    vision_hidden: int = 128
    vision_layers: int = 6
    vision_heads: int = 4
    vision_mlp: int = 512
    text_hidden: int = 160
    text_layers: int = 8
    text_heads: int = 4
    text_mlp: int = 512
    max_positions: int = 256

    @classmethod
    def tiny(cls) -> "OrganismConfig":
        """A tiny shape of the same design (smoke tests): 2 LM layers."""
        return cls(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                   text_hidden=32, text_layers=2, text_heads=2, text_mlp=64)

    @property
    def n_image_tokens(self) -> int:
        # strategy "default" drops CLS: one token per patch
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def prompt(text: str, with_image: bool) -> str:
    """The LLaVA-1.5 prompt the organism is trained on (answer = next token)."""
    if with_image:
        return f"USER: {IMAGE_TOKEN}\n{text} ASSISTANT:"
    return f"USER: {text} ASSISTANT:"


def words_of(texts: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for t in texts:
        out.update(_WORD_RE.findall(t.replace(IMAGE_TOKEN, " ")))
    return out


def build_tokenizer(words: Iterable[str]):
    """Word-level fast tokenizer: BOS prepended, left padding, ``<image>``
    special. Unknown words map to ``[UNK]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab_words = sorted(set(words) - set(SPECIAL_TOKENS) - {IMAGE_TOKEN})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in vocab_words:
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="[UNK]",
        pad_token="[PAD]",
        padding_side="left",
        model_max_length=512,
    )
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def build_processor(tokenizer, cfg: OrganismConfig):
    from transformers import CLIPImageProcessor, LlavaProcessor

    size = cfg.image_size
    ip = CLIPImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},  # squash, never crop the 4:3 images
        do_center_crop=False,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
    )


def llava_config(cfg: OrganismConfig, tokenizer, vocab_size: int | None = None, vision_feature_layer: int = -1):
    """The ``LlavaConfig`` of an organism-shaped model (also the benchmark's
    larger shapes): ``vocab_size`` pads the embedding beyond the tokenizer;
    a shallow tower reads its last layer (-1), LLaVA-1.5 its penultimate (-2)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_mlp,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_mlp,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=cfg.n_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer,
        projector_hidden_act="gelu",
    )
    config.pad_token_id = tokenizer.pad_token_id
    return config


def build_model(cfg: OrganismConfig, tokenizer, seed: int = 0):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = llava_config(cfg, tokenizer)
    model = LlavaForConditionalGeneration(config)
    # eager attention: the training reads attention weights (binding aid);
    # identical maths to sdpa, and every tracer handles it
    model.set_attn_implementation("eager")
    model.eval()
    return model
