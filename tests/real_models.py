"""Random-weight models shrunk from the real checkpoints' configs, with the
real tokenizers, chat templates and processors.

``MECHMOD_REAL_CONFIGS`` names a folder holding, per checkpoint, its
tokenizer, chat template, processor and model configs (no weights; see
``FOLDERS``; Gemma 3's ``tokenizer.json`` may be xz-compressed as
``tokenizer.json.xz``). ``build_real(family, out_dir)`` saves a model of
the family's real HF class whose config is the real one with a small
language model (2 layers, d_model 64) and a one-layer, 32-wide vision
tower; vocabulary, special-token ids, image and patch sizes and the
processor are the real ones, so prompts, image-token counts and answer
tokens are exactly the checkpoint's. The files are test data only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from benchmarks.real_model import ENV, shrink_text, shrink_vision, unpacked

FOLDERS = {
    "llava": "llava-1.5-7b-hf",
    "llava_next": "llava-v1.6-mistral-7b-hf",
    "qwen2_vl": "qwen2-vl-7b-instruct",
    "qwen2_5_vl": "qwen2.5-vl-7b-instruct",
    "gemma3": "gemma-3-4b-it",
}
# Image tokens of one 800x600 image, as the real checkpoints count them.
IMAGE_TOKENS_800x600 = {"llava": 576, "llava_next": 2340, "qwen2_vl": 609, "qwen2_5_vl": 609, "gemma3": 256}

SEED = 1234


def real_configs() -> Path | None:
    """The real-configs folder, or None when ``MECHMOD_REAL_CONFIGS`` is unset
    or names no folder."""
    value = os.environ.get(ENV)
    return Path(value) if value and Path(value).is_dir() else None


def source_dir(family: str, work: Path) -> Path:
    """The family's real files as ``from_pretrained`` reads them: the folder
    itself, or (with a compressed tokenizer) a copy under ``work`` with it
    decompressed."""
    return unpacked(real_configs() / FOLDERS[family], work)


def shrunk_config(family: str, work: Path):
    """The real config with the small sizes of the module docstring
    (:mod:`benchmarks.real_model`'s shrink, shared with the benchmark)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(source_dir(family, work))
    shrink_text(config.text_config)
    shrink_vision(config.vision_config)
    return config


def build_real(family: str, out_dir: Path, chat_template: bool = True) -> Path:
    """Save the shrunk random-weight ``family`` model with the real
    processor under ``out_dir``; without ``chat_template`` the processor is
    saved without its template (the tokenizer keeps its own, if any)."""
    import transformers

    from mechmod.models import adapter_for

    out_dir = Path(out_dir)
    src = source_dir(family, out_dir.parent)
    config = shrunk_config(family, out_dir.parent)
    torch.manual_seed(SEED)
    model = getattr(transformers, adapter_for(config.model_type).model_class)(config)
    processor = transformers.AutoProcessor.from_pretrained(src)
    if not chat_template:
        processor.chat_template = None
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
