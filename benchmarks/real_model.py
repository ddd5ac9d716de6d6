"""Random-weight models of the real checkpoints' HF classes, built from
their real configs, tokenizers, chat templates and processors (no weights).

A real-configs folder holds, per checkpoint, those files (the layout of
``MECHMOD_REAL_CONFIGS``; Gemma 3's ``tokenizer.json`` may be xz-compressed
as ``tokenizer.json.xz``). Weight values do not change what a forward costs
nor how prompts are tokenized, templated and labelled, so a model built
here measures the real checkpoint's speed and token counts. ``shrink``
keeps the vocabulary, special-token ids, image and patch sizes and the
processor but uses a small language model (2 layers, d_model 64) and a
one-layer, 32-wide vision tower: a CPU stand-in with the same prompts.
The tests' real-config models (tests/real_models.py) use the same shrink.
"""

from __future__ import annotations

import lzma
import os
import shutil
from pathlib import Path

from mechmod.errors import MechmodError

ENV = "MECHMOD_REAL_CONFIGS"
D_MODEL, HEADS, KV_HEADS, LM_LAYERS = 64, 4, 2, 2


def config_folder(name: str) -> Path:
    """A checkpoint folder of real files: ``name`` itself, or a folder of
    that name under ``$MECHMOD_REAL_CONFIGS``."""
    for path in (Path(name), Path(os.environ.get(ENV, "")) / name if os.environ.get(ENV) else None):
        if path is not None and (path / "config.json").is_file():
            return path
    raise MechmodError(f"--real-config {name}: no config.json there nor under ${ENV} "
                       f"({os.environ.get(ENV) or 'unset'}); give a real-configs checkpoint folder "
                       "such as .../real-configs/llava-1.5-7b-hf, or set $" + ENV + " and give its family folder name")


def unpacked(src: Path, work: Path) -> Path:
    """``src`` as ``from_pretrained`` reads it: the folder itself, or (with a
    compressed tokenizer) a copy under ``work`` with it decompressed."""
    packed = src / "tokenizer.json.xz"
    if not packed.is_file():
        return src
    out = Path(work) / f"{src.name}-files"
    if not out.is_dir():
        out.mkdir(parents=True)
        for f in src.iterdir():
            if f != packed:
                shutil.copyfile(f, out / f.name)
        with lzma.open(packed) as z:
            (out / "tokenizer.json").write_bytes(z.read())
    return out


def shrink_text(tc) -> None:
    """The language model's config, in place, at the small sizes above."""
    tc.num_hidden_layers = LM_LAYERS
    tc.hidden_size, tc.intermediate_size = D_MODEL, 2 * D_MODEL
    tc.num_attention_heads, tc.num_key_value_heads = HEADS, KV_HEADS
    head_dim = D_MODEL // HEADS
    if getattr(tc, "head_dim", None) is not None:
        tc.head_dim = head_dim
    if getattr(tc, "query_pre_attn_scalar", None) is not None:  # Gemma 3
        tc.query_pre_attn_scalar = head_dim
    if getattr(tc, "layer_types", None):
        kinds = list(dict.fromkeys(tc.layer_types))  # keep every kind of layer the real model has
        tc.layer_types = (kinds * LM_LAYERS)[:LM_LAYERS]
    rope = getattr(tc, "rope_parameters", None) or {}
    if "mrope_section" in rope:  # M-RoPE: temporal, height, width halves of the head dimension
        rope["mrope_section"] = [2, 3, 3]


def shrink_vision(vc) -> None:
    """The vision tower's config, in place, at the small sizes above."""
    if hasattr(vc, "depth"):  # Qwen2-VL / Qwen2.5-VL ViT: the merger outputs the LM's width
        vc.depth, vc.num_heads = 1, 2
        if hasattr(vc, "embed_dim"):  # Qwen2-VL
            vc.embed_dim, vc.hidden_size = 32, D_MODEL
        else:  # Qwen2.5-VL
            vc.hidden_size, vc.intermediate_size, vc.out_hidden_size = 32, 64, D_MODEL
            vc.fullatt_block_indexes = [0]
    else:  # CLIP / SigLIP
        vc.num_hidden_layers, vc.num_attention_heads = 1, 2
        vc.hidden_size, vc.intermediate_size = 32, 64
        if hasattr(vc, "projection_dim"):
            vc.projection_dim = 32


def build_real_model(src: Path, out_dir: Path, shrink: bool, device: str = "cpu", dtype: str = "float32"):
    """The random-weight model of ``src``'s real HF class (shrunk with
    ``shrink``), built on ``device`` in ``dtype`` with sdpa attention; the
    real processor (tokenizer, chat template) is saved under ``out_dir``.
    Returns the model (``save_pretrained(out_dir)`` makes the folder
    loadable by ``mechmod.models.load_model``)."""
    import torch
    import transformers

    from mechmod.models import adapter_for

    out_dir = Path(out_dir)
    files = unpacked(Path(src), out_dir.parent)
    config = transformers.AutoConfig.from_pretrained(files)
    if shrink:
        shrink_text(config.text_config)
        shrink_vision(config.vision_config)
    cls = getattr(transformers, adapter_for(config.model_type).model_class)
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    transformers.AutoProcessor.from_pretrained(files).save_pretrained(out_dir)
    return model.eval()
