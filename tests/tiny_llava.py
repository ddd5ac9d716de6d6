"""A tiny random-weight LLaVA (2-layer 32-d Llama + 2-layer CLIP at 28 px)
with a real word-level tokenizer and LlavaProcessor, built offline and
saved in HF format: the unit-test subject for the llava family."""

from __future__ import annotations

from pathlib import Path

WORDS = ("USER ASSISTANT : . ? , a an the is what color shape please use one word to answer this question "
         "circle square triangle rectangle pentagon hexagon red yellow blue green purple orange Red Blue "
         "sapphire banana same as check in image picture").split()


def build_tiny_llava(out: Path, seed: int = 0) -> Path:
    from mechmod.data.color import COLORS, TARGET_SHAPES
    from mechmod.data.knowledge import KNOWLEDGE
    from mechmod.models.organism.model import OrganismConfig, build_model, build_processor, build_tokenizer

    words = set(WORDS) | set(COLORS) | set(TARGET_SHAPES)
    for things in KNOWLEDGE.values():
        for thing in things:
            words.update(thing.replace(",", " ").split())
    # the generators' templates: every word of a small generated dataset's text
    cfg = OrganismConfig(image_size=28, patch_size=14, vision_hidden=32, vision_layers=2, vision_heads=2,
                         vision_mlp=64, text_hidden=32, text_layers=2, text_heads=2, text_mlp=64, max_positions=512)
    tok = build_tokenizer(words | _dataset_words())
    model = build_model(cfg, tok, seed=seed)
    proc = build_processor(tok, cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    return out


def _dataset_words() -> set[str]:
    from mechmod.organism.data import all_training_texts
    from mechmod.models.organism.model import words_of

    return words_of(all_training_texts(n_groups=200, seed=0))
