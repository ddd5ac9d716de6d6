"""The adapter self-check run on load: every module path and config
attribute the adapter declares resolves, and one tiny forward per modality
layout gives each slot and site its expected kind and shape."""

from __future__ import annotations

import torch
from PIL import Image

from mechmod.backends.forward import run, unembed
from mechmod.backends.sites import Site
from mechmod.errors import MechmodError

#: the sites a forward reads to check the adapter's module paths
CHECKED = ("z", "attn", "attn_contrib", "mlp", "mlp_contrib", "resid")


def layer_paths(adapter) -> dict[str, str]:
    """The declared module paths inside a decoder layer, by adapter field."""
    paths = {"attn_path": adapter.attn_path, "mlp_path": adapter.mlp_path, "o_proj_path": adapter.o_proj_path,
             "post_attn_norm_path": adapter.post_attn_norm_path, "post_mlp_norm_path": adapter.post_mlp_norm_path}
    return {field: path for field, path in paths.items() if path is not None}


def self_check(mllm, backend: str = "nnsight") -> None:
    """Raise a MechmodError naming the family and what differs unless: every
    declared path exists in every decoder layer (a missing one lists the
    modules that do exist), ``o_proj`` takes n_heads x head_dim inputs, and
    in a text-only and an image forward every site has its shape, the
    embedding reaches layer 0, the embedding plus every attention and MLP
    contribution is the last layer's output, the final norm and lm_head on
    it give the model's logits, the vision tower and projector run and the
    image prompt holds image tokens."""
    a = mllm.adapter
    for layer in mllm.layers:
        for path in layer_paths(a).values():
            a.module(layer, path)
    vision, projector = a.module(mllm.model, a.vision_path), a.module(mllm.model, a.projector_path)
    H, dh, D = mllm.n_heads, mllm.head_dim, mllm.d_model
    o_proj = a.module(mllm.layers[0], a.o_proj_path)
    problems = []
    if not isinstance(getattr(o_proj, "weight", None), torch.Tensor) or o_proj.weight.shape[-1] != H * dh:
        problems.append(f"{a.o_proj_path} ({type(o_proj).__name__}) does not take {H} heads x {dh} "
                        f"({a.n_heads_attr}, {a.head_dim_attr or 'd_model / heads'})")
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    for images, desc in (([None], ["a check"]), ([img], [None])):
        enc = mllm.encode(images, desc, ["what color ?"])
        seen: dict[str, torch.Tensor] = {}
        watched = {"embed": mllm.embed, "vision": vision, "projector": projector}
        hooks = [m.register_forward_hook(_recorder(seen, name)) for name, m in watched.items()]
        sites = [Site(0, "resid_in")] + [Site(l, c) for l in range(mllm.n_layers) for c in CHECKED]
        try:
            logits, got = run(mllm, enc.inputs, reads=[(s, lambda x: x[:, -1]) for s in sites], backend=backend)
        finally:
            for h in hooks:
                h.remove()
        problems += _shapes(dict(zip(sites, got)), H, dh, D)
        if problems:
            break
        problems += _sums(mllm, dict(zip(sites, got)), logits, seen.get("embed"))
        if images[0] is not None:
            problems += [f"{a.vision_path if n == 'vision' else a.projector_path} did not run on an image prompt"
                         for n in ("vision", "projector") if n not in seen]
            if "projector" in seen and seen["projector"].shape[-1] != D:
                problems.append(f"{a.projector_path} gives width {seen['projector'].shape[-1]}, not d_model {D}")
            if not bool(enc.spans["image"].any()):
                problems.append(f"no image token (id {mllm.image_token_id}) in the image prompt")
    if problems:
        raise MechmodError(f"{mllm.name} ({mllm.family}) failed its self-check: " + "; ".join(problems)
                           + f"; fix mechmod/models/{mllm.family}.py")


def _recorder(seen: dict, name: str):
    """A forward hook keeping a module's first output under ``name`` (returns None: changes nothing)."""

    def hook(module, args, out) -> None:
        seen.setdefault(name, _tensor(out))
    return hook


def _tensor(out) -> torch.Tensor:
    """A module output's main tensor (HF vision towers return output objects)."""
    if isinstance(out, torch.Tensor):
        return out.detach()
    first = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", None)
    return first.detach() if isinstance(first, torch.Tensor) else torch.empty(0)


def _shapes(got: dict[Site, torch.Tensor], H: int, dh: int, D: int) -> list[str]:
    want = {c: (1, D) for c in ("resid_in",) + CHECKED}
    want["z"] = (1, H, dh)
    bad = [f"site {s} has shape {tuple(x.shape)}, not {want[s.component]}" for s, x in got.items()
           if tuple(x.shape) != want[s.component]]
    return bad[:3]


def _sums(mllm, got: dict[Site, torch.Tensor], logits: torch.Tensor, embedded) -> list[str]:
    """Embedding -> layer 0, the attribution identity, the unembedding."""
    a, L = mllm.adapter, mllm.n_layers
    last = got[Site(L - 1, "resid")].double().cpu()
    scale = max(1.0, float(last.abs().max()))
    tol = (1e-4 if mllm.dtype == torch.float32 else 5e-2) * scale
    problems = []
    first = got[Site(0, "resid_in")].double().cpu()
    if embedded is not None and float((embedded[:, -1].double().cpu() - first).abs().max()) > tol:
        problems.append(f"{a.embed_path}'s output is not what decoder layer 0 receives")
    total = first + sum(got[Site(l, c)].double().cpu() for l in range(L) for c in ("attn_contrib", "mlp_contrib"))
    err = float((total - last).abs().max())
    if not err <= tol:
        norms = f"post-module norms {a.post_attn_norm_path}, {a.post_mlp_norm_path}"
        problems.append(f"embedding + attention and MLP contributions differ from the last layer's output by "
                        f"{err:.3g} (tolerance {tol:.3g}): check {a.attn_path}, {a.mlp_path} and the {norms}")
    with torch.no_grad():
        again = unembed(mllm, got[Site(L - 1, "resid")]).float().cpu()
    tol = 1e-3 if mllm.dtype == torch.float32 else 5e-2 * float(again.abs().max())
    err = float((again - logits.float().cpu()[:, : again.shape[-1]]).abs().max())
    if logits.shape[-1] < again.shape[-1]:
        problems.append(f"logits width {logits.shape[-1]} < lm_head rows {again.shape[-1]}")
    elif not err <= tol:
        problems.append(f"final_norm(lm_head(last resid)) differs from the logits by {err:.3g} (tolerance {tol:.3g}); "
                        f"{a.final_norm_path!r} or {a.lm_head_path!r} is not the real unembedding")
    return problems
