"""Forwards resumed at a decoder layer: an edit of the residual stream at
layer l (site ``resid``, the output of decoder layer l) leaves every
earlier layer as it is in the clean run, so the edited forward can start
from the clean run's layer-l output, edited, and run only decoder layers
l+1.. , the final norm and the unembedding at the answer position: no
vision tower, no projector, no layer up to l.

:func:`record` runs the clean batch once, in segments split at ``cuts``
(each over the KV cache of the ones before it, the first holding every
image token), with plain forward hooks keeping each decoder layer's call
(its arguments after the hidden states: mask, position embeddings, cache)
and output per segment, and the clean cache before each segment.
:func:`sweep_resumed` is :func:`mechmod.interventions.core.sweep` for
edits at ``resid`` sites from one cut on: each chunk of settings of one
layer replays the segments from that cut, the batch stacked once per
setting, over the clean cache of the positions before it (the tail trick
of :func:`mechmod.interventions.core.sweep_tail`).

Equal to the full forward within float rounding where
:func:`mechmod.interventions.core.tails_exact`
(tests/test_patching_resume.py, every family it serves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from transformers.cache_utils import Cache, DynamicCache

from mechmod.backends import Edit, unembed
from mechmod.decoding import Continuation
from mechmod.errors import MechmodError
from mechmod.interventions.core import continuation, tails_exact
from mechmod.prefix import cache_kwarg, cache_rows

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


def record(mllm, inputs: Mapping[str, torch.Tensor], cuts: Sequence[int] = (0,)) -> Record:
    """One clean forward of ``inputs`` in segments starting at ``cuts``,
    keeping every decoder layer's call and output per segment (see the
    module docstring); every image token must come before the second cut."""
    ids = inputs["input_ids"]
    B, T = ids.shape
    cuts = tuple(sorted({0, *(int(c) for c in cuts)}))
    if cuts[-1] >= T or (len(cuts) > 1 and (ids[:, cuts[1]:] == mllm.image_token_id).any()):
        raise MechmodError(f"record: cuts {cuts} must leave every image token in the first segment and the answer "
                           "in the last")
    per_token = {k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[:2] == (B, T)}
    key, rows = cache_kwarg(mllm.model), torch.arange(B, device=mllm.device)
    calls, outputs, caches, cache = [], [], [], None
    for start, end in zip(cuts, cuts[1:] + (T,)):
        if cache is None:
            part = {k: v[:, :end] if k in per_token else v for k, v in inputs.items()}
        else:
            part = {k: v[:, :end] if k == "attention_mask" else v[:, start:end] for k, v in inputs.items()
                    if k in per_token}
            part[key] = cache_rows(cache, rows)
        caches.append(cache)
        calls.append([None] * mllm.n_layers)
        outputs.append([None] * mllm.n_layers)
        handles = _recording(mllm, calls[-1], outputs[-1])
        try:
            with torch.no_grad():
                out = mllm.model(**part, use_cache=True, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
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


def resume(mllm, rec: Record, cut: int, layer: int, h: torch.Tensor) -> torch.Tensor:
    """Decoder layers ``layer``+1.. , the final norm and the unembedding on
    ``h`` ([n*B, T - cut, D], n stacked copies of the recorded batch's
    positions from ``cut`` at the output of ``layer``), segment by segment
    over the clean cache of the positions before ``cut``; the answer logits
    [n*B, V] float32 on CPU."""
    B = rec.batch_size
    n, first = h.shape[0] // B, rec.cuts.index(cut)
    rows = torch.arange(B, device=mllm.device).repeat(n)
    cache = cache_rows(rec.caches[first], rows) if first else DynamicCache(config=mllm.model.config)
    sizes = [int(out[layer].shape[1]) for out in rec.outputs[first:]]
    with torch.no_grad():
        for calls, x in zip(rec.calls[first:], h.split(sizes, dim=1)):
            for i in range(layer + 1, mllm.n_layers):
                args, kwargs = calls[i]
                x = _hidden(mllm.layers[i](x, *_stacked(args, B, n, cache), **_stacked(kwargs, B, n, cache)))
        return unembed(mllm, x[:, -1]).float().cpu()


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
    of one layer share one replay. ``rec_setter`` gives a setting's edits on
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
    by_layer: dict[int, list[int]] = {}
    for i, s in enumerate(settings):
        by_layer.setdefault(_layer_of(rec_setter(s, slice(0, B))), []).append(i)
    out: dict[int, torch.Tensor] = {}
    for layer, members in by_layer.items():
        clean = torch.cat([o[layer] for o in rec.outputs[first:]], dim=1)
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            h = torch.cat([clean] * len(part))
            for j, i in enumerate(part):
                for _, fn in rec_setter(settings[i], slice(j * B, (j + 1) * B)):
                    h = fn(h)
            logits = resume(mllm, rec, cut, layer, h)
            out.update((i, metric(logits[j * B : (j + 1) * B],
                                  continuation(mllm, inputs, setter(settings[i], slice(0, B)), backend)))
                       for j, i in enumerate(part))
    return torch.stack([out[i] for i in range(len(settings))])
