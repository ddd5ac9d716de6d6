"""LLaVA-1.5 (``llava-hf/llava-1.5-*-hf``) and the model organism, which is
a tiny LLaVA trained by mechmod (``mechmod.models.organism``)."""

from mechmod.models.base import Adapter

ADAPTER = Adapter(
    family="llava",
    model_types=("llava",),
    model_class="LlavaForConditionalGeneration",
    image_placeholder="<image>",
    prompt_format="USER: {image}\n{text} ASSISTANT:",
    description="LLaVA-1.5: CLIP ViT-L/14-336 + MLP projector + Vicuna/Llama (576 image tokens)",
    builtin={
        "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
        "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    },
)
