"""Gemma 3 (``google/gemma-3-*-it``), a family beyond the paper's: SigLIP
vision tower, 256 soft image tokens per image, Gemma-3 LM with
interleaved local/global attention."""

from mechmod.models.base import Adapter

ADAPTER = Adapter(
    family="gemma3",
    model_types=("gemma3",),
    model_class="Gemma3ForConditionalGeneration",
    image_placeholder="<start_of_image>",
    prompt_format="<start_of_turn>user\n{image}{text}<end_of_turn>\n<start_of_turn>model\n",
    description="Gemma 3: SigLIP-400M (256 image tokens) + Gemma-3 LM",
    post_attn_norm_path="post_attention_layernorm",  # Gemma norms each module's output before the residual add
    post_mlp_norm_path="post_feedforward_layernorm",
    causal_image=False,  # an image's tokens attend to each other both ways
    builtin={
        "gemma-3-4b": "google/gemma-3-4b-it",
        "gemma-3-12b": "google/gemma-3-12b-it",
    },
)
