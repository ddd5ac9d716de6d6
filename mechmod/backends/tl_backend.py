"""The TransformerLens backend: TransformerLens 4's ``TransformerBridge``
booted around an MLLM's in-memory HF model (no second copy of the weights),
every site read and written at the bridge's hook point for it.

The bridge names its hook points the TransformerLens way (``blocks.{l}.hook_in``
/ ``hook_out``, ``blocks.{l}.attn.hook_pattern``, ...), so TransformerLens users
can reuse their hook functions on mechmod runs. Where it reimplements
attention (:func:`computes_attention`), ``scores`` and ``pattern`` exist
whatever the HF attention kernel; it has no hook on the attention mask (use
nnsight for ``mask``)."""

from __future__ import annotations

import torch

from mechmod.backends.sites import Plan, Site
from mechmod.errors import MechmodError

HOOKS = {
    "resid_in": "blocks.{l}.hook_in",
    "scores": "blocks.{l}.attn.hook_attn_scores",
    "z": "blocks.{l}.attn.o.hook_in",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "attn": "blocks.{l}.attn.hook_out",
    "mlp": "blocks.{l}.mlp.hook_out",
    "resid": "blocks.{l}.hook_out",
}
#: a module's contribution to the residual: its post-module norm's output where the family
#: declares one (the bridge's ``ln1_post`` / ``ln2_post``), else the module's own output
POST_NORM_HOOKS = {"attn_contrib": "blocks.{l}.ln1_post.hook_out", "mlp_contrib": "blocks.{l}.ln2_post.hook_out"}
MODULE_OF = {"attn_contrib": "attn", "mlp_contrib": "mlp"}


def boot_bridge(mllm):
    """A TransformerBridge over ``mllm.model`` (shares its modules)."""
    try:  # heavy: imported only when the backend is used
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as err:  # pragma: no cover - declared dependency
        raise MechmodError(f"the transformer_lens backend needs transformer-lens>=4.3 ({err})") from None
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - layout of another TransformerLens version
        SUPPORTED_ARCHITECTURES = None
    arch = type(mllm.model).__name__
    if SUPPORTED_ARCHITECTURES is not None and arch not in SUPPORTED_ARCHITECTURES:
        raise MechmodError(f"TransformerLens has no bridge for {arch} ({mllm.name}, family {mllm.family}); "
                           "use --backend nnsight")
    source = getattr(mllm.model.config, "_name_or_path", "") or mllm.name
    try:
        bridge = TransformerBridge.boot_transformers(
            source, hf_model=mllm.model, tokenizer=mllm.tokenizer, dtype=mllm.dtype, device=mllm.device)
    except Exception as err:  # TransformerLens raises many kinds; name the model and the way out
        raise MechmodError(f"TransformerLens cannot bridge {mllm.name} ({mllm.family}): {type(err).__name__}: "
                           f"{str(err)[:500]}; use --backend nnsight") from None
    missing = [f"blocks.{i}.hook_out" for i in range(mllm.n_layers) if f"blocks.{i}.hook_out" not in bridge.hook_dict]
    if missing:
        raise MechmodError(f"TransformerLens bridge of {mllm.name} lacks hook points {missing[:3]}...; "
                           "use --backend nnsight")
    return bridge


def bridge(mllm):
    """The bridge of ``mllm``, booted once."""
    cached = getattr(mllm, "_tl_bridge", None)
    if cached is None:
        cached = mllm._tl_bridge = boot_bridge(mllm)
    return cached


def bridged(mllm) -> bool:
    """Whether the bridge has booted on ``mllm``: its rewired attention then
    gives wrong results over a KV cache, with either backend."""
    return getattr(mllm, "_tl_bridge", None) is not None


def hook_name(mllm, site: Site) -> str:
    """The bridge's hook point of ``site``; a MechmodError naming the site
    where the bridge has none."""
    c = site.component
    declared = {"attn_contrib": mllm.adapter.post_attn_norm_path, "mlp_contrib": mllm.adapter.post_mlp_norm_path}
    if c in declared:
        pattern = POST_NORM_HOOKS[c] if declared[c] else HOOKS[MODULE_OF[c]]
    elif c in HOOKS:
        pattern = HOOKS[c]
    else:
        raise MechmodError(f"site {site}: the TransformerLens bridge exposes no {c!r} site; use --backend nnsight")
    name = pattern.format(l=site.layer)
    if name not in bridge(mllm).hook_dict:
        raise MechmodError(f"site {site}: the TransformerLens bridge of {mllm.name} has no hook {name}; "
                           "use --backend nnsight")
    return name


def computes_attention(mllm, layer: int) -> bool:
    """Whether the bridge computes layer ``layer``'s attention itself (firing
    ``hook_attn_scores`` before the softmax and ``hook_pattern`` before the
    weights are used) rather than wrapping the HF module and firing both on
    the weights it returned (TransformerLens's generic ``AttentionBridge``,
    e.g. for Qwen2.5-VL)."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return type(bridge(mllm).blocks[layer].attn).forward is not AttentionBridge.forward


def run(mllm, inputs, plan: Plan) -> torch.Tensor:
    """One forward with ``plan``'s edits and reads; the last position's logits."""
    for site in plan.sites:
        edited = site.component == "pattern" and plan.edits.get(site)
        if (site.component == "scores" or edited) and not computes_attention(mllm, site.layer):
            raise MechmodError(f"site {site}: the TransformerLens bridge of {mllm.name} wraps the HF attention and "
                               "fires its hooks on the weights after use (no pre-softmax scores, no pattern edits); "
                               "use --backend nnsight")
    fired: set[Site] = set()

    def hook_for(site):
        def hook(tensor, hook):
            fired.add(site)
            x, rest = (tensor[0], tensor[1:]) if isinstance(tensor, tuple) else (tensor, None)
            new = plan.apply(site, x)
            if new is None:
                return tensor
            return new if rest is None else (new,) + tuple(rest)
        return hook

    hooks = [(hook_name(mllm, s), hook_for(s)) for s in plan.sites]
    with bridge(mllm).hooks(fwd_hooks=hooks):
        out = bridge(mllm).original_model(**inputs, logits_to_keep=1)
    silent = [s for s in plan.sites if s not in fired]
    if silent:
        raise MechmodError(f"site {silent[0]}: the TransformerLens bridge of {mllm.name} did not fire "
                           f"{hook_name(mllm, silent[0])}; use --backend nnsight")
    return out.logits[:, -1]
