"""Qwen2.5-VL (``Qwen/Qwen2.5-VL-*-Instruct``): Qwen2-VL's layout with a
windowed-attention ViT."""

from mechmod.models.base import Adapter
from mechmod.models.qwen2_vl import QWEN_PROMPT

ADAPTER = Adapter(
    family="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    model_class="Qwen2_5_VLForConditionalGeneration",
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    prompt_format=QWEN_PROMPT,
    description="Qwen2.5-VL: windowed-attention native-resolution ViT + Qwen2.5 LM with M-RoPE",
    vision_path="model.visual",
    projector_path="model.visual.merger",
    rope_deltas_path="model.rope_deltas",
    head_dim_attr=None,  # Qwen2 configs leave head_dim to hidden_size / heads
    builtin={
        "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
        "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    },
)
