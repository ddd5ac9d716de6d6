"""The site vocabulary: where a read or an edit touches the forward pass,
and the one view of each site that every backend hands to user functions.

A :class:`Site` is (layer, component); the components, in forward order
within a decoder layer:

- ``resid_in``: the layer's input, the residual stream before it (layer 0's
  is the embedding output, image features included);
- ``mask``: the layer's 4D attention mask, viewed as bool [N, 1, Tq, K]
  (True: query may attend to key); editable, e.g. for attention knockout;
- ``scores``: pre-softmax attention scores [N, H, Tq, K] (scaled, masked);
  only eager attention and a TransformerLens bridge that computes attention
  itself have them (sdpa never materialises them);
- ``z``: the head outputs entering the output projection, [N, T, H, d_head];
- ``pattern``: the attention weights [N, H, Tq, K], where ``scores`` exist
  (with nnsight read-only: read where the attention module returns them);
- ``attn`` / ``mlp``: the attention / MLP module's output [N, T, D];
- ``attn_contrib`` / ``mlp_contrib``: what that module adds to the residual
  stream: its output after the family's post-module norm (Gemma 3's
  ``post_attention_layernorm`` / ``post_feedforward_layernorm``), the output
  itself where there is none. ``resid_in`` of layer 0 plus every layer's two
  contributions is the last layer's output (the attribution identity);
- ``resid``: the layer's output, the residual stream after it.

An edit is ``(site, fn)``: ``fn(x) -> x`` gets the site's tensor for the
whole batch (a private clone, so it may write in place) and returns its
replacement. A read is ``(site, fn)``: ``fn(x)`` is kept, detached (keep it
small: e.g. a gather of a few positions).
"""

from __future__ import annotations

from collections import defaultdict
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mechmod.errors import MechmodError
from mechmod.names import SITE_COMPONENTS

#: sites that exist only where attention weights are computed explicitly
WEIGHT_SITES = ("scores", "pattern")

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
Read = tuple[Site, Fn]


def attention_implementation(mllm) -> str:
    """The language model's attention kernel (``eager``, ``sdpa``, ...)."""
    config = mllm.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None) or "sdpa"


#: mechmod's attention kernel, registered in transformers' AttentionInterface by
#: mechmod.backends.answer_attention: sdpa's forward, the answer row of attention mass
#: (answer_rows), tails over a shared prefix and prefix forwards that stop once the
#: last layer's keys are cached (mechmod.backends.shared_prefix)
KERNEL = "mechmod_answer_row"


class kernel_context:
    """Base of the contexts that run ``mllm`` on :data:`KERNEL` and, while
    inside, publish themselves in their class's ContextVar ``active`` (the
    kernel reads what they ask of it there)."""

    active: ContextVar

    def __init__(self, mllm):
        self.kernel = attention_kernel(mllm)

    def __enter__(self):
        self.kernel.__enter__()
        self.token = self.active.set(self)
        return self

    def __exit__(self, *exc):
        self.active.reset(self.token)
        self.kernel.__exit__(*exc)
        return False


class attention_kernel:
    """While inside, ``mllm`` runs :data:`KERNEL` (restored on exit)."""

    def __init__(self, mllm):
        self.model = mllm.model

    def __enter__(self):
        self.before = getattr(self.model.config, "_attn_implementation", None) or "sdpa"
        if self.before != KERNEL:
            self.model.set_attn_implementation(KERNEL)
        return self

    def __exit__(self, *exc):
        if self.before != KERNEL:
            self.model.set_attn_implementation(self.before)
        return False


class Plan:
    """One forward's edits and reads, grouped by site in forward order;
    :meth:`apply` runs them on a site's tensor, :meth:`results` returns the
    reads in the order they were asked."""

    def __init__(self, mllm, edits: Sequence[Edit], reads: Sequence[Read], backend: str):
        self.edits: dict[Site, list[Fn]] = defaultdict(list)
        for site, fn in edits:
            self.edits[site].append(fn)
        self.reads: dict[Site, list[tuple[int, Fn]]] = defaultdict(list)
        for i, (site, fn) in enumerate(reads):
            self.reads[site].append((i, fn))
        self.n_reads = len(reads)
        self.sites = sorted(set(self.edits) | set(self.reads), key=lambda s: s.order)
        self.n_heads = mllm.n_heads
        self.saved: dict[int, torch.Tensor] = {}
        for site in self.sites:
            if not 0 <= site.layer < mllm.n_layers:
                raise MechmodError(f"site {site} outside the model's {mllm.n_layers} layers")
        weights = sorted({s.component for s in self.sites if s.component in WEIGHT_SITES})
        kernel = attention_implementation(mllm)
        if weights and backend != "transformer_lens" and kernel != "eager":
            raise MechmodError(
                f"site {weights[0]!r}: {mllm.name} runs {kernel} attention, which computes no pre-softmax scores "
                "or weights; sites 'scores' and 'pattern' exist under eager attention and the TransformerLens "
                "bridge: wrap the call in `with mechmod.backends.eager_attention(mllm):` or use --backend "
                "transformer_lens")
        if any(s.component == "mask" for s in self.sites) and kernel not in ("eager", "sdpa"):
            raise MechmodError(f"site 'mask': {mllm.name} runs {kernel} attention, whose mask is no 4D tensor; "
                               "load the model with eager or sdpa attention")

    def apply(self, site: Site, x: torch.Tensor) -> torch.Tensor | None:
        """Run ``site``'s edits then reads on ``x`` (its view, see the module
        docstring); returns the replacement, or None when nothing was edited.
        ``z`` arrives flat [N, T, H * d_head] and leaves flat."""
        flat = site.component == "z" and x.ndim == 3
        if flat:
            x = x.unflatten(-1, (self.n_heads, x.shape[-1] // self.n_heads))
        new = None
        if self.edits.get(site):
            new = x.clone()
            for fn in self.edits[site]:
                new = fn(new)
            x = new
        for key, fn in self.reads.get(site, ()):
            self.saved[key] = fn(x).detach()
        if new is not None and flat:
            new = new.flatten(-2)
        return new

    def results(self) -> list[torch.Tensor]:
        return [self.saved[i] for i in range(self.n_reads)]


# ------------------------------------------------------------- mask views
def where(adapter, component: str) -> tuple[str | None, str, int]:
    """(module path relative to the layer or None for the layer itself, what
    to touch there, tuple element of an output) of a site component."""
    a = adapter
    return {
        "resid_in": (None, "input", 0),
        "mask": (a.attn_path, "mask", 0),
        "scores": (a.attn_path, "scores", 0),
        "z": (a.o_proj_path, "input", 0),
        "pattern": (a.attn_path, "output", 1),
        "attn": (a.attn_path, "output", 0),
        "attn_contrib": (a.post_attn_norm_path or a.attn_path, "output", 0),
        "mlp": (a.mlp_path, "output", 0),
        "mlp_contrib": (a.post_mlp_norm_path or a.mlp_path, "output", 0),
        "resid": (None, "output", 0),
    }[component]


def edit_outputs(out, sites: list[Site], plan: Plan, adapter):
    """A module output (a tensor or a tuple) with ``plan``'s edits of the
    sites sharing it applied in order, or None when nothing changed."""
    parts = list(out) if isinstance(out, tuple) else [out]
    changed = False
    for site in sites:
        i = where(adapter, site.component)[2]
        if parts[i] is None:  # an attention module gives no weights outside eager attention
            raise MechmodError(f"site {site}: the attention module returned no weights; use eager attention")
        new = plan.apply(site, parts[i])
        if new is not None:
            parts[i], changed = new, True
    if not changed:
        return None
    return tuple(parts) if isinstance(out, tuple) else parts[0]


def edit_mask(args, kwargs: dict, site: Site, plan: Plan) -> dict | None:
    """The attention module's keywords with ``plan``'s edit of its
    ``attention_mask`` (seen as a bool view, written back in the model's
    kind of mask), or None when the edit changes nothing."""
    native = kwargs.get("attention_mask")
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    past = int(cache.get_seq_length(site.layer)) if cache is not None else 0
    view = allowed_view(native, hidden.shape[0], hidden.shape[1], past, hidden.device)
    new = plan.apply(site, view)
    if new is None or torch.equal(new, view):
        return None
    return dict(kwargs, attention_mask=native_mask(new, native))


def allowed_view(native: torch.Tensor | None, batch: int, queries: int, past: int,
                 device: torch.device) -> torch.Tensor:
    """A 4D HF attention mask as bool [N, 1, Tq, K], True where a query may
    attend: sdpa's bool mask as is, eager's additive float mask where it is
    not the dtype's minimum, and sdpa's None (a plain causal forward) as the
    causal mask it stands for (``past`` cached keys before the queries)."""
    if native is None:
        keys = past + queries
        causal = torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=past)
        return causal.expand(batch, 1, queries, keys)
    if native.dtype == torch.bool:
        return native
    return native > torch.finfo(native.dtype).min / 2


def native_mask(allowed: torch.Tensor, native: torch.Tensor | None) -> torch.Tensor:
    """``allowed`` back in the kind of mask the model was given (bool for
    sdpa, additive float for eager, keeping the values it had where a key
    stays allowed)."""
    if native is None or native.dtype == torch.bool:
        return allowed
    was = allowed_view(native, 0, 0, 0, native.device)
    zero = torch.zeros((), dtype=native.dtype, device=native.device)
    low = torch.full((), torch.finfo(native.dtype).min, dtype=native.dtype, device=native.device)
    return torch.where(allowed, torch.where(was, native, zero), low)
