"""The hooks backend: plain PyTorch forward hooks at the adapter's modules.

The sites sit where the nnsight backend puts them (the same module inputs
and outputs, :func:`mechmod.backends.nnsight_backend.where`), so both read
the same tensors and give equal results; but a forward costs only its hook
calls, without nnsight's per-trace setup (tracing's hot path runs here by
default: ``python -m benchmarks.tracing_overhead`` measures the difference). The
``scores`` site lives inside the attention function, where no module hook
reaches: it needs nnsight or the TransformerLens bridge."""

from __future__ import annotations

from contextlib import ExitStack
from itertools import groupby

import torch

from mechmod.backends.sites import Plan, Site, edit_mask, edit_outputs, where
from mechmod.errors import MechmodError


def run(mllm, inputs, plan: Plan) -> torch.Tensor:
    """One forward with ``plan``'s edits and reads; the last position's logits."""
    adapter = mllm.adapter
    if any(s.component == "scores" for s in plan.sites):
        raise MechmodError("site 'scores': the hooks backend reaches module inputs and outputs only, not the softmax "
                           "inside the attention function; use --backend nnsight or transformer_lens")
    points = groupby(plan.sites, key=lambda s: (s.layer,) + where(adapter, s.component)[:2])
    with ExitStack() as hooks:
        for (layer, path, kind), group in points:
            module = mllm.layers[layer] if path is None else adapter.module(mllm.layers[layer], path)
            sites = list(group)
            if kind == "output":
                handle = module.register_forward_hook(_output_hook(sites, plan, adapter))
            elif kind == "input":
                handle = module.register_forward_pre_hook(_input_hook(sites[0], plan), with_kwargs=True)
            else:  # the one other kind hooks reach: the attention module's mask keyword
                handle = module.register_forward_pre_hook(_mask_hook(sites[0], plan), with_kwargs=True)
            hooks.callback(handle.remove)
        out = mllm.model(**inputs, logits_to_keep=1)
    return out.logits[:, -1]


def _output_hook(sites: list[Site], plan: Plan, adapter):
    """The sites sharing one module output (a tensor or a tuple), in order."""

    def hook(module, args, out):
        return edit_outputs(out, sites, plan, adapter)

    return hook


def _input_hook(site: Site, plan: Plan):
    """A module's first input (positional, else ``hidden_states``)."""

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        new = plan.apply(site, x)
        if new is None:
            return None
        return ((new, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=new))

    return hook


def _mask_hook(site: Site, plan: Plan):
    """The ``attention_mask`` keyword of the attention module, as a bool view
    (as in the nnsight backend)."""

    def hook(module, args, kwargs):
        new = edit_mask(args, kwargs, site, plan)
        return None if new is None else (args, new)

    return hook
