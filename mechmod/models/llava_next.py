"""LLaVA-NeXT / LLaVA-1.6 (``llava-hf/llava-v1.6-*-hf``): any-resolution
tiling, so the number of image tokens depends on the image size."""

from mechmod.models.base import Adapter

ADAPTER = Adapter(
    family="llava_next",
    model_types=("llava_next",),
    model_class="LlavaNextForConditionalGeneration",
    image_placeholder="<image>\n",  # the hub chat templates put each image as "<image>\n" before the text
    prompt_format="[INST] {image}{text} [/INST]",
    description="LLaVA-NeXT (1.6): CLIP ViT-L/14-336 with any-resolution tiles + Mistral/Vicuna",
    builtin={
        "llava-1.6-mistral-7b": "llava-hf/llava-v1.6-mistral-7b-hf",
        "llava-1.6-vicuna-7b": "llava-hf/llava-v1.6-vicuna-7b-hf",
    },
)
