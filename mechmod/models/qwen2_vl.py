"""Qwen2-VL (``Qwen/Qwen2-VL-*-Instruct``): native-resolution ViT with 2x2
patch merging; image tokens ``<|image_pad|>`` between vision start/end."""

from mechmod.models.base import Adapter

QWEN_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
               "{image}{text}<|im_end|>\n<|im_start|>assistant\n")

ADAPTER = Adapter(
    family="qwen2_vl",
    model_types=("qwen2_vl",),
    model_class="Qwen2VLForConditionalGeneration",
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    prompt_format=QWEN_PROMPT,
    description="Qwen2-VL: native-resolution ViT (2x2 merge) + Qwen2 LM with M-RoPE",
    vision_path="model.visual",
    projector_path="model.visual.merger",
    rope_deltas_path="model.rope_deltas",
    head_dim_attr=None,  # Qwen2 configs leave head_dim to hidden_size / heads
    builtin={
        "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
        "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    },
)
