"""The nnsight backend: nnsight 0.8's ``NNsight`` around the HF model, every
site read and written at the module the adapter declares for it.

Where each site sits (paths relative to a decoder layer, from the adapter):
``resid_in`` / ``resid`` the layer's input / output; ``mask`` the
``attention_mask`` keyword of ``attn_path``; ``scores`` the input of the
softmax inside the attention function that ``attn_path`` calls (nnsight's
``.source``; eager attention only); ``z`` the input of ``o_proj_path``;
``pattern`` / ``attn`` the attention module's outputs 1 / 0; ``mlp`` the
output of ``mlp_path``; ``attn_contrib`` / ``mlp_contrib`` the output of
``post_attn_norm_path`` / ``post_mlp_norm_path`` (the module's own output
where the family has no such norm)."""

from __future__ import annotations

from itertools import groupby

import torch

from mechmod.backends.sites import Plan, Site, edit_mask, edit_outputs, where
from mechmod.errors import MechmodError

#: the call of the attention kernel in an HF attention module's forward, and
#: the softmax inside HF's eager kernel (nnsight names operations by callable)
ATTENTION_CALL = "attention_interface_"
SOFTMAX = "nn_functional_softmax_0"


def wrapper(mllm):
    """The cached ``NNsight`` wrapper of ``mllm.model``, rebuilt when the
    module tree changed (booting the TransformerLens bridge swaps the
    attention and MLP submodules for bridge components in place)."""
    key = hash(tuple(id(m) for m in mllm.model.modules()))
    if getattr(mllm, "_nnsight_tree", None) == key:
        return mllm._nnsight
    from nnsight import NNsight  # heavy, and replaces sys.excepthook on import: only when a trace runs

    if getattr(mllm.model, "hf_device_map", None):
        class Dispatched(NNsight):
            # nnsight moves the inputs to the first parameter's device, which is
            # 'meta' when accelerate offloads that module (a device map with
            # "cpu"/"disk" entries); the inputs already sit where mllm.encode
            # put them and accelerate's hooks move them from module to module.
            @property
            def device(self):
                return None

        mllm._nnsight = Dispatched(mllm.model)
    else:
        mllm._nnsight = NNsight(mllm.model)
    mllm._nnsight_tree = key
    return mllm._nnsight


def envoy(root, path: str):
    """The envoy at dotted ``path`` below ``root``."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def run(mllm, inputs, plan: Plan) -> torch.Tensor:
    """One forward with ``plan``'s edits and reads; the last position's logits."""
    from nnsight.intervention.interleaver import OutOfOrderError  # with nnsight itself, see wrapper

    edited = [s for s in plan.sites if s.component == "pattern" and plan.edits.get(s)]
    if edited:
        raise MechmodError(f"site {edited[0]}: with nnsight the attention pattern is read-only (it is read where the "
                           "attention module returns it, after use); edit 'scores' or 'mask' instead")
    model = wrapper(mllm)
    adapter = mllm.adapter
    points = groupby(plan.sites, key=lambda s: (s.layer,) + where(adapter, s.component)[:2])
    try:
        with model.trace(**inputs, logits_to_keep=1):
            layers = envoy(model, adapter.layers_path)
            for (layer, path, kind), group in points:
                env = layers[layer] if path is None else envoy(layers[layer], path)
                sites = list(group)
                if kind == "output":
                    _outputs(env, sites, plan, adapter)
                elif kind == "input":
                    new = plan.apply(sites[0], env.input)
                    if new is not None:
                        env.input = new
                elif kind == "mask":
                    _mask(env, sites[0], plan)
                else:
                    _scores(env, sites[0], plan, f"{adapter.layers_path}.{layer}.{path}")
            logits = model.output.logits[:, -1].save()
    except OutOfOrderError as err:  # sites are visited in SITE_COMPONENTS order, which the modules must follow
        raise MechmodError(f"{mllm.name}: a site's module runs earlier in the layer than its site's place in the "
                           f"forward order ({err}); the {mllm.family} adapter declares a post-module norm or module "
                           f"path that is not where it says: fix mechmod/models/{mllm.family}.py") from None
    return logits


def _outputs(env, sites: list[Site], plan: Plan, adapter) -> None:
    """The sites sharing one module output (a tensor or a tuple), in order."""
    new = edit_outputs(env.output, sites, plan, adapter)
    if new is not None:
        env.output = new


def _mask(env, site: Site, plan: Plan) -> None:
    """The ``attention_mask`` keyword of the attention module, as a bool view;
    written back (in the model's kind of mask) only when an edit changed it."""
    args, kwargs = env.inputs
    new = edit_mask(args, kwargs, site, plan)
    if new is not None:
        env.inputs = (args, new)


def _scores(env, site: Site, plan: Plan, path: str) -> None:
    """The softmax input inside the attention kernel the module calls."""
    calls = [n for n in env.source.names if n.startswith(ATTENTION_CALL)]
    if not calls:
        raise MechmodError(f"site {site}: no call of an attention function in {path}'s forward (a TransformerLens "
                           "bridge booted on this model replaces it: reload the model for nnsight)")
    softmax = getattr(env.source, calls[-1]).source
    if SOFTMAX not in softmax.names:
        raise MechmodError(f"site {site}: the attention function of {path} has no softmax ({', '.join(softmax.names)})")
    op = getattr(softmax, SOFTMAX)
    new = plan.apply(site, op.input)
    if new is not None:
        op.input = new
