"""The one place interventions touch a model: edit and read *sites* during a
forward pass, with the nnsight or the TransformerLens backend, and the one
generic batched sweep every intervention is a thin variant of.

A :class:`Site` is (component, layer):

- ``resid``: the output of decoder layer ``layer`` (the residual stream
  after it; ``ResidualTrace.resid[:, layer + 1]`` at the answer position);
- ``attn``: the attention block's output (before it joins the residual);
- ``mlp``: the MLP block's output;
- ``z``: the per-head attention values entering the output projection,
  seen as [N, T, n_heads, d_head] (head h of layer l is ``x[..., h, :]``).

An edit is ``(site, fn)``: ``fn(x) -> x`` gets the site's tensor for the
whole batch (a private clone, so it may write in place) and returns the
tensor that replaces it. A read is ``(site, fn)``: ``fn(x)`` is kept (keep it
small: e.g. a gather of a few positions). Sites sit in the decoder layers'
``self_attn`` / ``mlp`` / ``self_attn.o_proj`` submodules (nnsight) or at
TransformerLens's ``blocks.{l}.hook_out`` / ``attn.hook_out`` /
``mlp.hook_out`` / ``attn.o.hook_in`` (the bridge); an adapter may name
other submodules with ``attn_path`` / ``mlp_path`` / ``o_proj_path``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

from mechmod.errors import MechmodError
from mechmod.names import BACKENDS, SITE_COMPONENTS
from mechmod.tracing import _bridge, _envoy, _nnsight_model

_TL_HOOK = {"resid": "blocks.{l}.hook_out", "attn": "blocks.{l}.attn.hook_out", "mlp": "blocks.{l}.mlp.hook_out",
            "z": "blocks.{l}.attn.o.hook_in"}

S = TypeVar("S")
Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, order=True)
class Site:
    """Where in the forward pass: ``component`` in ``SITE_COMPONENTS`` at
    decoder layer ``layer`` (0-based)."""

    layer: int
    component: str

    def __post_init__(self):
        if self.component not in SITE_COMPONENTS:
            raise MechmodError(f"unknown site component {self.component!r}; one of {SITE_COMPONENTS}")

    @property
    def order(self) -> tuple[int, int]:
        return self.layer, SITE_COMPONENTS.index(self.component)


Edit = tuple[Site, Fn]


def _paths(mllm) -> dict[str, str]:
    a = mllm.adapter
    return {"attn": getattr(a, "attn_path", "self_attn"), "mlp": getattr(a, "mlp_path", "mlp"),
            "z": getattr(a, "o_proj_path", "self_attn.o_proj")}


def _n_heads(mllm) -> int:
    cfg = mllm.model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.num_attention_heads)


def _unpack(out: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """A module output's hidden tensor and how to put a new one back (decoder
    and attention modules may return tuples)."""
    if isinstance(out, tuple):
        return out[0], lambda x: (x,) + tuple(out[1:])
    return out, lambda x: x


def _apply(x: torch.Tensor, site: Site, edits: Sequence[Fn], reads: Sequence[tuple[int, Fn]], saved: dict,
           n_heads: int) -> torch.Tensor | None:
    """Run ``site``'s edits then reads on ``x``; returns the replacement or
    None when nothing was edited. ``z`` is viewed as [N, T, H, d_head]."""
    flat = site.component == "z" and x.ndim == 3
    if flat:
        x = x.unflatten(-1, (n_heads, x.shape[-1] // n_heads))
    new = None
    if edits:
        new = x.clone()
        for fn in edits:
            new = fn(new)
        x = new
    for key, fn in reads:
        saved[key] = fn(x).detach()
    if new is not None and flat:
        new = new.flatten(-2)
    return new


def forward(mllm, inputs: Mapping[str, torch.Tensor], edits: Sequence[Edit] = (),
            reads: Sequence[tuple[Site, Fn]] = (), backend: str = "nnsight") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One no-grad forward of ``inputs`` with ``edits`` applied; returns
    (answer-position logits [N, V] float32 on CPU, the reads' results in
    ``reads`` order)."""
    if backend not in BACKENDS:
        raise MechmodError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    by_site: dict[Site, list[Fn]] = defaultdict(list)
    for site, fn in edits:
        by_site[site].append(fn)
    read_at: dict[Site, list[tuple[int, Fn]]] = defaultdict(list)
    for i, (site, fn) in enumerate(reads):
        read_at[site].append((i, fn))
    for site in set(by_site) | set(read_at):
        if not 0 <= site.layer < mllm.n_layers:
            raise MechmodError(f"site {site} outside the model's {mllm.n_layers} layers")
    sites = sorted(set(by_site) | set(read_at), key=lambda s: s.order)
    saved: dict[int, torch.Tensor] = {}
    H = _n_heads(mllm)
    with torch.no_grad():
        if backend == "nnsight":
            logits = _forward_nnsight(mllm, inputs, sites, by_site, read_at, saved, H)
        else:
            logits = _forward_tl(mllm, inputs, sites, by_site, read_at, saved, H)
    return logits.float().cpu(), [saved[i] for i in range(len(reads))]


def _nnsight_current(mllm):
    """The cached nnsight wrapper, rebuilt when the module tree changed
    (booting the TransformerLens bridge swaps the attention and MLP
    submodules for bridge components in place; the decoder layers stay)."""
    key = hash(tuple(id(m) for m in mllm.model.modules()))
    if getattr(mllm, "_nnsight_tree", None) != key:
        mllm._nnsight = None
        mllm._nnsight_tree = key
    return _nnsight_model(mllm)


def _forward_nnsight(mllm, inputs, sites, by_site, read_at, saved, H) -> torch.Tensor:
    model = _nnsight_current(mllm)
    paths = _paths(mllm)
    with model.trace(**inputs, logits_to_keep=1):
        layers = _envoy(model, mllm.adapter.layers_path)
        for site in sites:
            layer = layers[site.layer]
            env = layer if site.component == "resid" else _envoy(layer, paths[site.component])
            if site.component == "z":
                new = _apply(env.input, site, by_site[site], read_at[site], saved, H)
                if new is not None:
                    env.input = new
            else:
                x, pack = _unpack(env.output)
                new = _apply(x, site, by_site[site], read_at[site], saved, H)
                if new is not None:
                    env.output = pack(new)
        logits = model.output.logits[:, -1].save()
    return logits


def _forward_tl(mllm, inputs, sites, by_site, read_at, saved, H) -> torch.Tensor:
    bridge = _bridge(mllm)

    def hook_for(site):
        def hook(tensor, hook):
            x, pack = _unpack(tensor)
            new = _apply(x, site, by_site[site], read_at[site], saved, H)
            return tensor if new is None else pack(new)
        return hook

    hooks = [(_TL_HOOK[s.component].format(l=s.layer), hook_for(s)) for s in sites]
    with bridge.hooks(fwd_hooks=hooks):
        out = bridge.original_model(**inputs, logits_to_keep=1)
    return out.logits[:, -1]


def repeat_inputs(inputs: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """``k`` stacked copies of a batch along dim 0 (every tensor input, pixel
    values and image grids included, keeps its row order per copy)."""
    return {name: torch.cat([v] * k, dim=0) if isinstance(v, torch.Tensor) and v.ndim > 0 else v
            for name, v in inputs.items()}


def sweep(mllm, inputs: Mapping[str, torch.Tensor], settings: Sequence[S],
          setter: Callable[[S, slice], Sequence[Edit]], metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
          chunk: int | None = None, backend: str = "nnsight") -> torch.Tensor:
    """The generic batched sweep: for each setting, the edits ``setter(setting,
    rows)`` on a copy of the batch. ``chunk`` settings share one forward, the
    batch stacked ``chunk`` times along dim 0 (copy j = rows
    ``slice(j*B, (j+1)*B)``); ``metric`` maps a copy's answer logits [B, V]
    to per-row values (default: the logits). Returns
    [n_settings, B, ...] stacked metric values."""
    B = int(inputs["input_ids"].shape[0])
    settings = list(settings)
    if not settings:
        raise MechmodError("sweep: no settings")
    chunk = len(settings) if chunk is None else max(1, int(chunk))
    metric = metric or (lambda x: x)
    out = []
    for start in range(0, len(settings), chunk):
        part = settings[start : start + chunk]
        edits = [e for j, s in enumerate(part) for e in setter(s, slice(j * B, (j + 1) * B))]
        logits, _ = forward(mllm, repeat_inputs(inputs, len(part)), edits, backend=backend)
        out.extend(metric(logits[j * B : (j + 1) * B]) for j in range(len(part)))
    return torch.stack(out)


def chunk_for(batch: int, max_rows: int) -> int:
    """Settings per forward so that a forward holds at most ``max_rows`` rows."""
    return max(1, int(max_rows) // max(1, int(batch)))
