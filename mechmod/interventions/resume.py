"""Forwards resumed at a decoder layer: an edit of the residual stream at
layer l (site ``resid``, the output of decoder layer l) leaves every
earlier layer as it is in the clean run, so the edited forward can start
from the clean run's layer-l output, edited, and run only decoder layers
l+1.. , the final norm and the unembedding at the answer position: no
vision tower, no projector, no layer up to l.

:func:`record` runs the clean batch once with plain forward hooks keeping
each decoder layer's call (its arguments after the hidden states: mask,
position embeddings, cache) and output; :func:`sweep_resumed` is
:func:`mechmod.interventions.core.sweep` for edits at ``resid`` sites,
each chunk of settings of one layer replayed from the record with the
batch stacked once per setting. Recorded with ``cut`` (the tail trick of
:func:`mechmod.interventions.core.sweep_tail`), only the positions from
``cut`` on are recorded and replayed, every layer attending to the clean
prefix's cached keys and values.

Equal to the full forward within float rounding where :func:`resumable`
(tests/test_patching_resume.py, every family it serves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from transformers.cache_utils import Cache

from mechmod.backends import Edit, Site, unembed
from mechmod.backends.tl_backend import bridged
from mechmod.decoding import Continuation
from mechmod.errors import MechmodError
from mechmod.interventions.core import continuation
from mechmod.prefix import cache_kwarg, cache_rows

S = TypeVar("S")


def resumable(mllm, backend: str) -> bool:
    """Whether :func:`sweep_resumed` equals the full forward for ``mllm``:
    not with the TransformerLens backend nor on a model its bridge has
    booted on (the bridge's hook points sit inside the layers it rewired,
    which a replay of the bare layers would skip), nor in M-RoPE families
    (their position tables are [3, B, T, d], batch second, so the recorded
    calls do not stack along dim 0: they patch with full forwards)."""
    return backend != "transformer_lens" and not bridged(mllm) and mllm.adapter.rope_deltas_path is None


@dataclass(frozen=True)
class Record:
    """A clean forward's decoder layers: per layer its call (``args`` after
    the hidden states, ``kwargs``) and its output [B, T - cut, D]; the
    answer logits [B, V]; with ``cut`` > 0 the clean prefix's KV cache."""

    calls: list[tuple[tuple, dict]]
    outputs: list[torch.Tensor]
    logits: torch.Tensor
    cut: int = 0
    prefix: Any = None

    @property
    def batch_size(self) -> int:
        return int(self.outputs[0].shape[0])


def _hidden(out) -> torch.Tensor:
    """A decoder layer's output hidden states (bare, or the first of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def record(mllm, inputs: Mapping[str, torch.Tensor], cut: int = 0) -> Record:
    """One clean forward of ``inputs`` keeping every decoder layer's call and
    output. ``cut`` > 0: the first ``cut`` positions run first, clean, and
    only the rest is recorded, over their KV cache (every image token must
    come before ``cut``, as in :func:`mechmod.interventions.core.sweep_tail`)."""
    ids = inputs["input_ids"]
    B, T = ids.shape
    if cut and (not 0 < cut < T or (ids[:, cut:] == mllm.image_token_id).any()):
        raise MechmodError(f"record: cut {cut} must leave every image token before it and the answer after it")
    per_token = {k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[:2] == (B, T)}
    run, prefix = dict(inputs, use_cache=False), None
    with torch.no_grad():
        if cut:
            prefix = getattr(mllm.model(**{k: v[:, :cut] if k in per_token else v for k, v in inputs.items()},
                                        use_cache=True, logits_to_keep=1), cache_kwarg(mllm.model))
            run = {k: v if k == "attention_mask" else v[:, cut:] for k, v in inputs.items() if k in per_token}
            run.update({cache_kwarg(mllm.model): cache_rows(prefix, torch.arange(B, device=mllm.device)),
                        "use_cache": True})
        calls: list = [None] * mllm.n_layers
        outputs: list = [None] * mllm.n_layers
        handles = []
        for i, layer in enumerate(mllm.layers):
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, kw, i=i: calls.__setitem__(i, (a[1:], kw) if a else
                                                        ((), {k: v for k, v in kw.items() if k != "hidden_states"})),
                with_kwargs=True))
            handles.append(layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, _hidden(o))))
        try:
            logits = mllm.model(**run, logits_to_keep=1).logits[:, -1]
        finally:
            for h in handles:
                h.remove()
    return Record(calls=calls, outputs=outputs, logits=logits.float().cpu(), cut=cut, prefix=prefix)


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


def resume(mllm, rec: Record, layer: int, h: torch.Tensor) -> torch.Tensor:
    """Decoder layers ``layer``+1.. , the final norm and the unembedding on
    ``h`` ([n*B, T - cut, D], n stacked copies of the recorded batch at the
    output of ``layer``); the answer logits [n*B, V] float32 on CPU."""
    B = rec.batch_size
    n = h.shape[0] // B
    cache = cache_rows(rec.prefix, torch.arange(B, device=mllm.device).repeat(n)) if rec.cut else None
    with torch.no_grad():
        for i in range(layer + 1, mllm.n_layers):
            args, kwargs = rec.calls[i]
            h = _hidden(mllm.layers[i](h, *_stacked(args, B, n, cache), **_stacked(kwargs, B, n, cache)))
        return unembed(mllm, h[:, -1]).float().cpu()


def _layer_of(edits: Sequence[Edit]) -> int:
    """The one layer whose ``resid`` site a setting's edits touch."""
    sites = {site for site, _ in edits}
    if len(sites) != 1 or next(iter(sites)).component != "resid":
        raise MechmodError(f"sweep_resumed: a setting must edit one 'resid' site, not {sorted(sites)}")
    return next(iter(sites)).layer


def sweep_resumed(mllm, inputs: Mapping[str, torch.Tensor], rec: Record, settings: Sequence[S],
                  rec_setter: Callable[[S, slice], Sequence[Edit]], setter: Callable[[S, slice], Sequence[Edit]],
                  metric: Callable[[torch.Tensor, Continuation], torch.Tensor] | None = None,
                  chunk: int | None = None, backend: str = "hooks") -> torch.Tensor:
    """:func:`mechmod.interventions.core.sweep` for settings that each edit one
    ``resid`` site, resumed from ``rec`` (:func:`record` of ``inputs``):
    ``chunk`` settings of one layer share one replay. ``rec_setter`` gives a
    setting's edits on the recorded positions (prompt position p is p -
    ``rec.cut``), ``setter`` on the whole prompt (for the metric's
    continuation, a full forward as in :func:`core.sweep`)."""
    settings = list(settings)
    if not settings:
        raise MechmodError("sweep_resumed: no settings")
    if not resumable(mllm, backend):
        raise MechmodError(f"sweep_resumed: resumed forwards are not exact for {mllm.name} with {backend}; use sweep")
    B = rec.batch_size
    chunk = len(settings) if chunk is None else max(1, int(chunk))
    metric = metric or (lambda x, more: x)
    by_layer: dict[int, list[int]] = {}
    for i, s in enumerate(settings):
        by_layer.setdefault(_layer_of(rec_setter(s, slice(0, B))), []).append(i)
    out: dict[int, torch.Tensor] = {}
    for layer, members in by_layer.items():
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            h = torch.cat([rec.outputs[layer]] * len(part))
            for j, i in enumerate(part):
                for _, fn in rec_setter(settings[i], slice(j * B, (j + 1) * B)):
                    h = fn(h)
            logits = resume(mllm, rec, layer, h)
            out.update((i, metric(logits[j * B : (j + 1) * B],
                                  continuation(mllm, inputs, setter(settings[i], slice(0, B)), backend)))
                       for j, i in enumerate(part))
    return torch.stack([out[i] for i in range(len(settings))])
