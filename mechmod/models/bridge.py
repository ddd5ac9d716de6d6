"""The TransformerLens backend: TransformerLens 4's ``TransformerBridge``
booted around an MLLM's in-memory HF model (no second copy of the weights).

The bridge names every hook point the TransformerLens way
(``blocks.{i}.hook_in`` / ``hook_out``, ``blocks.{i}.attn.hook_out``, ...),
so TransformerLens users can reuse their hook functions on mechmod runs."""

from __future__ import annotations

from mechmod.errors import MechmodError


def boot_bridge(mllm):
    """A TransformerBridge over ``mllm.model`` (shares its modules)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as err:  # pragma: no cover - declared dependency
        raise MechmodError(f"the transformer_lens backend needs transformer-lens>=4.3 ({err})") from None
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - layout of another TransformerLens version
        SUPPORTED_ARCHITECTURES = None
    arch = type(mllm.model).__name__
    if SUPPORTED_ARCHITECTURES is not None and arch not in SUPPORTED_ARCHITECTURES:
        from mechmod.models import families

        ok = sorted(f for f, a in families().items() if a.model_class in SUPPORTED_ARCHITECTURES)
        raise MechmodError(f"TransformerLens has no bridge for {arch} ({mllm.name}, family {mllm.family}); "
                           f"it bridges the families {', '.join(ok)}; use --backend nnsight")
    source = getattr(mllm.model.config, "_name_or_path", "") or mllm.name
    try:
        bridge = TransformerBridge.boot_transformers(
            source, hf_model=mllm.model, tokenizer=mllm.tokenizer, dtype=mllm.dtype, device=mllm.device)
    except Exception as err:  # TransformerLens raises many kinds; name the model and the way out
        raise MechmodError(f"TransformerLens cannot bridge {mllm.name} ({mllm.family}): {type(err).__name__}: "
                           f"{str(err)[:500]}; use --backend nnsight") from None
    missing = [f"blocks.{i}.hook_out" for i in range(mllm.n_layers) if f"blocks.{i}.hook_out" not in bridge.hook_dict]
    if missing:
        raise MechmodError(f"TransformerLens bridge of {mllm.name} lacks hook points {missing[:3]}...; use --backend nnsight")
    return bridge
