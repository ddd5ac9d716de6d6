"""The one place interventions touch a model: edits and reads at *sites*
during a forward pass (:mod:`mechmod.backends`, with the nnsight or the
TransformerLens backend), and the one generic batched sweep every
intervention is a thin variant of.

A :class:`Site` is (layer, component): the residual stream (``resid_in``,
``resid``), each attention and MLP module's output (``attn``, ``mlp``) and its
contribution to the residual (``attn_contrib``, ``mlp_contrib``), the head
outputs before the output projection (``z``, [N, T, n_heads, d_head]),
attention ``scores`` / ``pattern`` and the attention ``mask``; see
:mod:`mechmod.backends.sites`. An edit is ``(site, fn)``: ``fn(x) -> x`` gets
the site's tensor for the whole batch (a private clone, so it may write in
place) and returns the tensor that replaces it. A read is ``(site, fn)``:
``fn(x)`` is kept (keep it small: e.g. a gather of a few positions).

Where the answer's first token does not decide it (:mod:`mechmod.answers`),
the answer is written on with the intervention still applied
(:func:`continuation`): the written tokens are appended after the prompt
and every edit sees the prompt's positions only, so an edit of "the last
position" keeps editing the answer position and the written tokens are
never edited.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence, TypeVar

import torch

from mechmod.backends import Edit, Site, run
from mechmod.backends.tl_backend import bridged
from mechmod.decoding import Continuation, reforward
from mechmod.errors import MechmodError
from mechmod.names import BACKENDS, SITE_COMPONENTS
from mechmod.prefix import cache_kwarg, cache_rows

S = TypeVar("S")
Fn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["BACKENDS", "SITE_COMPONENTS", "Site", "Edit", "forward", "on_prompt", "continuation", "repeat_inputs", "sweep",
           "sweep_tail", "tails_exact", "chunk_for"]

#: components whose tensors index positions along dims 2 and 3 ([N, H, Tq, K]); the others along dim 1
_PAIR_SITES = ("mask", "scores", "pattern")


def forward(mllm, inputs: Mapping[str, torch.Tensor], edits: Sequence[Edit] = (),
            reads: Sequence[tuple[Site, Fn]] = (), backend: str = "nnsight") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One no-grad forward of ``inputs`` with ``edits`` applied; returns
    (answer-position logits [N, V] float32 on CPU, the reads' results in
    ``reads`` order)."""
    logits, got = run(mllm, inputs, edits, reads, backend)
    return logits.float().cpu(), got


def on_prompt(edits: Sequence[Edit], n_positions: int) -> list[Edit]:
    """``edits`` applied to the first ``n_positions`` positions of their
    sites only (the prompt's, when tokens were appended after it): each
    edit gets that part of the tensor and the rest passes unchanged."""
    def narrowed(site: Site, fn: Fn) -> Edit:
        def edit(x):
            part = (slice(None), slice(None), slice(n_positions), slice(n_positions)) \
                if site.component in _PAIR_SITES else (slice(None), slice(n_positions))
            x[part] = fn(x[part])
            return x
        return site, edit
    return [narrowed(site, fn) for site, fn in edits]


def continuation(mllm, inputs: Mapping[str, torch.Tensor], edits: Sequence[Edit] = (),
                 backend: str = "nnsight") -> Continuation:
    """The :data:`~mechmod.decoding.Continuation` of the batch ``inputs``
    with ``edits`` still applied (:func:`~mechmod.decoding.reforward`): the
    batch runs again with the written tokens appended, every edit on the
    prompt's positions (:func:`on_prompt`)."""
    n = int(inputs["input_ids"].shape[1])
    pad = mllm.tokenizer.pad_token_id
    return reforward(inputs, lambda x: forward(mllm, x, on_prompt(edits, n), backend=backend)[0],
                     0 if pad is None else pad)


def repeat_inputs(inputs: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """``k`` stacked copies of a batch along dim 0 (every tensor input, pixel
    values and image grids included, keeps its row order per copy)."""
    return {name: torch.cat([v] * k, dim=0) if isinstance(v, torch.Tensor) and v.ndim > 0 else v
            for name, v in inputs.items()}


def sweep(mllm, inputs: Mapping[str, torch.Tensor], settings: Sequence[S],
          setter: Callable[[S, slice], Sequence[Edit]],
          metric: Callable[[torch.Tensor, Continuation], torch.Tensor] | None = None,
          chunk: int | None = None, backend: str = "nnsight") -> torch.Tensor:
    """The generic batched sweep: for each setting, the edits ``setter(setting,
    rows)`` on a copy of the batch. ``chunk`` settings share one forward, the
    batch stacked ``chunk`` times along dim 0 (copy j = rows
    ``slice(j*B, (j+1)*B)``); ``metric(logits, more)`` maps a copy's answer
    logits [B, V] to per-row values (default: the logits), ``more`` being
    the copy's :func:`continuation` (its setting's edits on one copy, run
    only if the metric writes on). Returns [n_settings, B, ...] stacked
    metric values."""
    B = int(inputs["input_ids"].shape[0])
    settings = list(settings)
    if not settings:
        raise MechmodError("sweep: no settings")
    chunk = len(settings) if chunk is None else max(1, int(chunk))
    metric = metric or (lambda x, more: x)
    out = []
    for start in range(0, len(settings), chunk):
        part = settings[start : start + chunk]
        edits = [e for j, s in enumerate(part) for e in setter(s, slice(j * B, (j + 1) * B))]
        logits, _ = forward(mllm, repeat_inputs(inputs, len(part)), edits, backend=backend)
        out.extend(metric(logits[j * B : (j + 1) * B], continuation(mllm, inputs, setter(s, slice(0, B)), backend))
                   for j, s in enumerate(part))
    return torch.stack(out)


def tails_exact(mllm, backend: str) -> bool:
    """Whether forwards over a clean cache equal full forwards for ``mllm``:
    :func:`sweep_tail`, and the resumed sweeps of
    :mod:`mechmod.interventions.resume`. Not with the TransformerLens backend
    nor on a model its bridge has booted on (the rewired attention is wrong
    over a KV cache, and its hook points sit inside the layers it rewired,
    which a replay of the bare layers would skip), nor in M-RoPE families
    (their left-padded tails differ by ~3e-3 in Qwen2-VL, and their position
    tables are [3, B, T, d], batch second, so recorded layer calls do not
    stack along dim 0)."""
    return backend != "transformer_lens" and not bridged(mllm) and mllm.adapter.rope_deltas_path is None


def sweep_tail(mllm, inputs: Mapping[str, torch.Tensor], cut: int, settings: Sequence[S],
               tail_setter: Callable[[S, slice], Sequence[Edit]], setter: Callable[[S, slice], Sequence[Edit]],
               metric: Callable[[torch.Tensor, Continuation], torch.Tensor] | None = None,
               chunk: int | None = None, backend: str = "nnsight") -> torch.Tensor:
    """:func:`sweep` for edits at positions ``cut`` and later only: the
    batch's first ``cut`` positions (every image token among them) run once,
    clean, and their KV cache serves each forward, which computes the
    positions from ``cut`` on. ``tail_setter`` gives a setting's edits on
    those positions (prompt position p is p - cut), ``setter`` the same
    edits on the whole prompt (for the metric's continuation, which runs the
    whole batch again, as in :func:`sweep`). Equal to :func:`sweep` within
    float rounding, where :func:`tails_exact`."""
    ids = inputs["input_ids"]
    B, T = ids.shape
    if not tails_exact(mllm, backend):
        raise MechmodError(f"sweep_tail: tails over a cache are not exact for {mllm.name} with {backend}; use sweep")
    if not 0 < cut < T or (ids[:, cut:] == mllm.image_token_id).any():
        raise MechmodError(f"sweep_tail: cut {cut} must leave every image token before it and the answer after it")
    settings = list(settings)
    if not settings:
        raise MechmodError("sweep_tail: no settings")
    per_token = {k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[:2] == (B, T)}
    with torch.no_grad():
        out = mllm.model(**{k: v[:, :cut] if k in per_token else v for k, v in inputs.items()}, use_cache=True,
                         logits_to_keep=1)
    key = cache_kwarg(mllm.model)
    cache = getattr(out, key)
    chunk = len(settings) if chunk is None else max(1, int(chunk))
    metric = metric or (lambda x, more: x)
    results = []
    for start in range(0, len(settings), chunk):
        part = settings[start : start + chunk]
        rows = torch.arange(B).repeat(len(part))
        tail = {k: torch.cat([inputs[k] if k == "attention_mask" else inputs[k][:, cut:]] * len(part))
                for k in per_token}
        tail.update({key: cache_rows(cache, rows.to(mllm.device)), "use_cache": True})
        edits = [e for j, s in enumerate(part) for e in tail_setter(s, slice(j * B, (j + 1) * B))]
        logits, _ = forward(mllm, tail, edits, backend=backend)
        results.extend(metric(logits[j * B : (j + 1) * B], continuation(mllm, inputs, setter(s, slice(0, B)), backend))
                       for j, s in enumerate(part))
    return torch.stack(results)


def chunk_for(batch: int, max_rows: int) -> int:
    """Settings per forward so that a forward holds at most ``max_rows`` rows."""
    return max(1, int(max_rows) // max(1, int(batch)))
