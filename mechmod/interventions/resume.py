"""Forwards resumed at a decoder layer: an edit of the residual stream at
layer l (site ``resid``, the output of decoder layer l) leaves every
earlier layer as it is in the clean run, so the edited forward can start
from the clean run's layer-l output, edited, and run only decoder layers
l+1.. , the final norm and the unembedding at the answer position: no
vision tower, no projector, no layer up to l.

:func:`record` runs the clean batch once, in segments split at ``cuts``
(each from the decoder's input, over the KV cache of the ones before it),
with plain forward hooks keeping each decoder layer's call
(its arguments after the hidden states: mask, position embeddings, cache)
and output per segment, and the clean cache before each segment.
:func:`sweep_resumed` is :func:`mechmod.interventions.core.sweep` for
edits at ``resid`` sites from one cut on: each chunk of settings replays
the segments from that cut over the clean cache of the positions before
it (the tail trick of :func:`mechmod.interventions.core.sweep_tail`), the
batch stacked once per setting, each setting joining the stack after its
own layer (:func:`resume`): a chunk of settings at every layer runs each
decoder layer once, not once per setting, which on small models saves
more than the compute (per-call overhead dominates there).

Equal to the full forward within float rounding where
:func:`mechmod.interventions.core.tails_exact`
(tests/test_patching_resume.py, every family it serves).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from transformers.cache_utils import Cache, DynamicCache

from mechmod.backends import Edit, unembed
from mechmod.backends.shared_prefix import SharedPrefixLayer, SlotPlan, shared_prefix
from mechmod.decoding import Continuation
from mechmod.errors import MechmodError
from mechmod.interventions.core import continuation, tails_exact
from mechmod.prefix import CONCATENATING, PLAIN_LAYERS, cache_kwarg, cache_rows, kernel_runs, with_room

S = TypeVar("S")


@dataclass(frozen=True)
class Record:
    """A clean forward in segments starting at ``cuts`` (0 first): per
    segment, per decoder layer its call (``args`` after the hidden states,
    ``kwargs``) and its output [B, segment length, D], and the clean KV cache
    of the positions before the segment (None before the first); the answer
    logits [B, V] float32 on CPU."""

    cuts: tuple[int, ...]
    calls: list[list[tuple[tuple, dict]]]
    outputs: list[list[torch.Tensor]]
    caches: list[Any]
    logits: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.outputs[0][0].shape[0])


def _hidden(out) -> torch.Tensor:
    """A decoder layer's output hidden states (bare, or the first of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def _recording(mllm, calls: list, outputs: list) -> list:
    """Hooks on every decoder layer filling ``calls`` and ``outputs`` (per
    layer); returns their handles."""
    def call(args, kwargs, i):
        calls[i] = (args[1:], kwargs) if args else ((), {k: v for k, v in kwargs.items() if k != "hidden_states"})

    handles = []
    for i, layer in enumerate(mllm.layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, kw, i=i: call(a, kw, i), with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, _hidden(o))))
    return handles


class _Embedded(Exception):
    """Stops a forward at the first decoder layer (:func:`embeddings`)."""


def embeddings(mllm, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The first decoder layer's input for ``inputs`` [B, T, D]: the token
    embeddings with every image's features in place (the vision tower runs,
    no decoder layer does)."""
    got = {}

    def stop(module, args, kwargs):
        got["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Embedded

    handle = mllm.layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.no_grad():
            mllm.model(**inputs, use_cache=False, logits_to_keep=1)
    except _Embedded:
        return got["h"]
    finally:
        handle.remove()
    raise MechmodError(f"{mllm.name}: the forward never reached decoder layer 0")  # pragma: no cover


def record(mllm, inputs: Mapping[str, torch.Tensor], cuts: Sequence[int] = (0,)) -> Record:
    """One clean forward of ``inputs`` in segments starting at ``cuts``,
    keeping every decoder layer's call and output per segment (see the
    module docstring). The segments run from the decoder's input
    (:func:`embeddings`, the vision tower once), so a cut may fall inside an
    image where image tokens attend causally (``Adapter.causal_image``);
    elsewhere every image token must come before the second cut."""
    ids = inputs["input_ids"]
    B, T = ids.shape
    cuts = tuple(sorted({0, *(int(c) for c in cuts)}))
    inside = len(cuts) > 1 and bool((ids[:, cuts[1]:] == mllm.image_token_id).any())
    if cuts[-1] >= T or (inside and not mllm.adapter.causal_image):
        raise MechmodError(f"record: cuts {cuts} must leave every image token in the first segment ({mllm.family}'s "
                           "image tokens attend both ways) and the answer in the last")
    emb = embeddings(mllm, inputs)
    per_token = {k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[:2] == (B, T)
                 and k != "input_ids"}
    key, rows = cache_kwarg(mllm.model), torch.arange(B, device=mllm.device)
    calls, outputs, caches, cache = [], [], [], None
    for start, end in zip(cuts, cuts[1:] + (T,)):
        part = {k: inputs[k][:, :end] if k == "attention_mask" else inputs[k][:, start:end] for k in per_token}
        part["inputs_embeds"] = emb[:, start:end]
        if cache is not None:
            part[key] = cache_rows(cache, rows, room=end - start)
        caches.append(cache)
        calls.append([None] * mllm.n_layers)
        outputs.append([None] * mllm.n_layers)
        handles = _recording(mllm, calls[-1], outputs[-1])
        try:
            with torch.no_grad():
                out = mllm.model(**part, use_cache=True, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
        cache = getattr(out, key)
    return Record(cuts=cuts, calls=calls, outputs=outputs, caches=caches, logits=out.logits[:, -1].float().cpu())


def _stacked(x, B: int, n: int, cache):
    """A recorded call argument for ``n`` stacked copies of the batch:
    batch-first tensors repeated along dim 0, the KV cache replaced by
    ``cache``, tuples, lists and dicts element by element, the rest as is."""
    if isinstance(x, Cache):
        return cache
    if isinstance(x, torch.Tensor):
        return torch.cat([x] * n) if x.ndim and x.shape[0] == B and n > 1 else x
    if isinstance(x, (tuple, list)):
        return type(x)(_stacked(v, B, n, cache) for v in x)
    if isinstance(x, dict):
        return {k: _stacked(v, B, n, cache) for k, v in x.items()}
    return x


def _stacked_cache(cache, B: int, counts: Sequence[int], room: int, shared: bool):
    """A shallow copy of ``cache`` whose layer i holds its ``B`` rows
    ``counts[i]`` times (the stack that reaches decoder layer i): with
    ``shared``, plain layers attend over the record's rows without copying
    them (a :class:`~mechmod.backends.shared_prefix.SharedPrefixLayer`, each
    recorded row its own prefix, to run inside ``shared_prefix``); else the
    rows are copied once into a buffer with room for the ``room`` positions
    replayed where the layer allows (:func:`mechmod.prefix.with_room`), else
    selected, or, kept once, shared as :func:`mechmod.prefix.cache_rows`
    does (its update concatenates into a new tensor, never writing the
    record's)."""
    out = copy.copy(cache)
    out.layers, plans = [], {}  # one slot plan per stack height, shared by its layers
    for layer, n in zip(cache.layers, counts):
        slots = torch.arange(B, device=layer.keys.device).repeat(n)
        if n and shared and type(layer) in PLAIN_LAYERS:
            if n not in plans:
                plans[n] = SlotPlan(slots)
            out.layers.append(SharedPrefixLayer(layer, plans[n]))
            continue
        stacked = with_room(layer, slots, room) if n else None
        if stacked is None:
            stacked = copy.copy(layer)
            if n > 1 or (n == 1 and type(layer) not in CONCATENATING):
                stacked.batch_select_indices(slots)
        out.layers.append(stacked)
    return out


def resume(mllm, rec: Record, cut: int, entries: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Decoder layers after each entry's, the final norm and the unembedding:
    entry k = (layer l_k, h_k [B, T - cut, D]: the recorded batch's positions
    from ``cut`` at the output of l_k), segment by segment over the clean
    cache of the positions before ``cut`` (attended without copies where
    mechmod's kernel can take over the model's attention,
    :func:`mechmod.prefix.kernel_runs`: :mod:`mechmod.backends.shared_prefix`).
    The entries run stacked along dim 0, each joining the stack after its
    own layer, so that every decoder layer runs once for all the entries
    that reach it. Returns the answer logits [len(entries) * B, V] float32
    on CPU, entry k in rows ``k*B:(k+1)*B``."""
    B, L = rec.batch_size, mllm.n_layers
    first = rec.cuts.index(cut)
    order = sorted(range(len(entries)), key=lambda k: entries[k][0])  # stacking order
    sizes = [int(out[0].shape[1]) for out in rec.outputs[first:]]
    parts = [entries[k][1].split(sizes, dim=1) for k in range(len(entries))]
    counts = [sum(entries[k][0] < i for k in order) for i in range(L)]
    share = bool(first) and kernel_runs(mllm)
    cache = (_stacked_cache(rec.caches[first], B, counts, room=sum(sizes), shared=share) if first
             else DynamicCache(config=mllm.model.config))
    with torch.no_grad(), shared_prefix(mllm) if share else nullcontext():
        for seg, calls in enumerate(rec.calls[first:]):
            x = None
            for i in range(entries[order[0]][0] + 1, L + 1):
                joining = [parts[k][seg] for k in order if entries[k][0] == i - 1]
                if joining:
                    x = torch.cat(([] if x is None else [x]) + joining)
                if i < L:
                    args, kwargs = calls[i]
                    n = counts[i]
                    x = _hidden(mllm.layers[i](x, *_stacked(args, B, n, cache), **_stacked(kwargs, B, n, cache)))
        logits = unembed(mllm, x[:, -1]).float().cpu()
    out = torch.empty_like(logits)
    for j, k in enumerate(order):
        out[k * B : (k + 1) * B] = logits[j * B : (j + 1) * B]
    return out


def _layer_of(edits: Sequence[Edit]) -> int:
    """The one layer whose ``resid`` site a setting's edits touch."""
    sites = {site for site, _ in edits}
    if len(sites) != 1 or next(iter(sites)).component != "resid":
        raise MechmodError(f"sweep_resumed: a setting must edit one 'resid' site, not {sorted(sites)}")
    return next(iter(sites)).layer


def sweep_resumed(mllm, inputs: Mapping[str, torch.Tensor], rec: Record, cut: int, settings: Sequence[S],
                  rec_setter: Callable[[S, slice], Sequence[Edit]], setter: Callable[[S, slice], Sequence[Edit]],
                  metric: Callable[[torch.Tensor, Continuation], torch.Tensor] | None = None,
                  chunk: int | None = None, backend: str = "hooks") -> torch.Tensor:
    """:func:`mechmod.interventions.core.sweep` for settings that each edit one
    ``resid`` site at positions ``cut`` (one of ``rec.cuts``) and later,
    resumed from ``rec`` (:func:`record` of ``inputs``): ``chunk`` settings
    share one stacked replay (:func:`resume`). ``rec_setter`` gives a setting's edits on
    the positions from ``cut`` (prompt position p is p - ``cut``),
    ``setter`` on the whole prompt (for the metric's continuation, a full
    forward as in :func:`core.sweep`)."""
    settings = list(settings)
    if not settings:
        raise MechmodError("sweep_resumed: no settings")
    if not tails_exact(mllm, backend):
        raise MechmodError(f"sweep_resumed: resumed forwards are not exact for {mllm.name} with {backend}; use sweep")
    if cut not in rec.cuts:
        raise MechmodError(f"sweep_resumed: cut {cut} is not one of the record's {rec.cuts}")
    B, first = rec.batch_size, rec.cuts.index(cut)
    chunk = len(settings) if chunk is None else max(1, int(chunk))
    metric = metric or (lambda x, more: x)
    layers = [_layer_of(rec_setter(s, slice(0, B))) for s in settings]
    clean = {layer: torch.cat([o[layer] for o in rec.outputs[first:]], dim=1) for layer in set(layers)}
    out = []
    for start in range(0, len(settings), chunk):
        part = range(start, min(start + chunk, len(settings)))
        entries = []
        for i in part:
            h = clean[layers[i]].clone()
            for _, fn in rec_setter(settings[i], slice(0, B)):
                h = fn(h)
            entries.append((layers[i], h))
        logits = resume(mllm, rec, cut, entries)
        out.extend(metric(logits[j * B : (j + 1) * B],
                          continuation(mllm, inputs, setter(settings[i], slice(0, B)), backend))
                   for j, i in enumerate(part))
    return torch.stack(out)
