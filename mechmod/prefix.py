"""Shared image prefixes: the image part of a prompt is computed once per
image and its KV cache reused by every prompt that shows that image.

In every supported family the image comes before the text, so a prompt is
``prefix + tail`` where the prefix (chat template start and the image
tokens) is the same for the vision-only prompt and for every description
paired with the image. :func:`trace_shared` runs

1. the prefixes of several images in one batched forward (images whose
   prefixes have the same length and tensor shapes), keeping the KV cache
   (and so the vision tower runs once per image);
2. the tails of all prompts of those images in batches, right-padded, over
   their image's prefix: where the attention allows
   (:func:`shares_attention`), the prefix keys and values stay as the prefix
   forward left them, once per image, and the attention splits into the
   prefix part and each row's tail part
   (:mod:`mechmod.backends.shared_prefix`: no copy); else the cache rows of
   each image are copied once into a buffer with room for the tail, which
   the tail fills in place (:func:`cache_rows`). Right padding is exact
   without any mask: pads come after the answer and a causal model's
   answer position never sees them.

The answer-position residuals of every layer are read by
:func:`mechmod.tracing.trace_at`. Cached and uncached results agree to
float32 rounding (tests/test_prefix.py, every family).
"""

from __future__ import annotations

import copy
import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from mechmod.backends.answer_attention import WEIGHTED_KERNELS
from mechmod.backends.shared_prefix import KeysCached, SharedPrefixLayer, SlotPlan, keys_only, shared_prefix
from mechmod.backends.sites import attention_implementation
from mechmod.backends.tl_backend import bridged
from mechmod.errors import MechmodError
from mechmod.tracing import SPANS, ResidualTrace, span_mass, trace_at

_PROBE_QUESTION = "?"
#: cache layers whose update concatenates into a new tensor (never writes into the rows it holds)
CONCATENATING = (DynamicLayer, DynamicSlidingWindowLayer)


@dataclass(frozen=True)
class Prefix:
    """One image's prefix inputs (batch of 1), their length and a grouping key."""

    inputs: dict[str, torch.Tensor]
    length: int

    @property
    def key(self) -> tuple:
        return (self.length,) + tuple((k, tuple(v.shape[1:])) for k, v in sorted(self.inputs.items()))


def image_prefix(mllm, image, device: str | torch.device | None = None) -> Prefix:
    """Encode ``image`` once (image processor, placeholder expansion) and cut
    the prompt before its text tail; the inputs on ``device`` (default the
    model's)."""
    enc = mllm.encode([image], [None], [_PROBE_QUESTION], device=device)
    T = enc.inputs["input_ids"].shape[1]
    tail, _ = mllm.tail(enc.prompts[0])
    if enc.inputs["input_ids"][0, T - len(tail):].tolist() != tail:
        raise MechmodError(f"{mllm.name}: the prompt's text tail does not tokenize apart from its image prefix; "
                           "run without prefix sharing (--no-share-prefix)")
    P = T - len(tail)
    inputs = {k: (v[:, :P] if v.ndim >= 2 and v.shape[:2] == (1, T) else v) for k, v in enc.inputs.items()}
    return Prefix(inputs=inputs, length=P)


class _Room(DynamicLayer):
    """A cache layer whose prefix rows were copied, once, into a buffer with
    room for the tail: the tail's update writes its keys and values there in
    place, and the attention reads the whole buffer (no gather followed by a
    concatenation: one copy of the prefix rows instead of two)."""

    def __init__(self, layer: DynamicLayer, slots: torch.Tensor, room: int):
        super().__init__()
        B, (_, H, P, D) = len(slots), layer.keys.shape
        self.device, self.is_initialized = layer.keys.device, True
        self.buffers = []
        for src in (layer.keys, layer.values):
            buf = src.new_empty(B, H, P + room, D)
            _copy_rows(buf[:, :, :P], src, slots)
            self.buffers.append(buf)
        self.keys, self.values = (b[:, :, :P] for b in self.buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        filled, n = self.keys.shape[-2], key_states.shape[-2]
        if filled + n > self.buffers[0].shape[-2]:  # no room left: concatenate, as DynamicLayer does
            return super().update(key_states, value_states, *args, **kwargs)
        for buf, new in zip(self.buffers, (key_states, value_states)):
            buf[:, :, filled : filled + n] = new
        self.keys, self.values = (b[:, :, : filled + n] for b in self.buffers)
        return self.keys, self.values


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, slots: torch.Tensor) -> None:
    """``dst[i] = src[slots[i]]``, one copy: a broadcast where ``slots``
    stacks the whole of ``src`` several times (a stacked replay), else one
    broadcast per distinct slot (one image's prefix row to its rows)."""
    n, rest = divmod(len(slots), len(src))
    if rest == 0 and torch.equal(slots.cpu(), torch.arange(len(src)).repeat(n)):
        dst.view(n, *src.shape[:1], *dst.shape[1:]).copy_(src.expand(n, *src.shape))
        return
    for slot in slots.unique().tolist():
        rows = torch.nonzero(slots == slot).flatten()
        dst[rows] = src[slot : slot + 1].expand(len(rows), -1, -1, -1)


def with_room(layer, slots: torch.Tensor, room: int) -> DynamicLayer | None:
    """Cache layer ``layer``'s rows ``slots`` copied once into a buffer with
    room for ``room`` more tokens, which their update fills in place
    (:class:`_Room`); None for a layer of another kind than a plain dynamic
    one (sliding windows, static layers)."""
    return _Room(layer, slots, room) if type(layer) in PLAIN_LAYERS else None


#: cache layers holding plain keys and values, whose rows :class:`_Room` can
#: copy and a SharedPrefixLayer can attend over (not sliding windows)
PLAIN_LAYERS = (DynamicLayer, _Room)


def cache_rows(cache, slots: torch.Tensor, room: int = 0, shared: bool = False):
    """A cache holding the prefix rows ``slots``; the shared prefix cache is
    never written.

    With ``shared`` and plain dynamic layers, nothing is copied: each layer
    is a :class:`~mechmod.backends.shared_prefix.SharedPrefixLayer` over the
    prefix cache's own tensors, to be run inside
    :class:`~mechmod.backends.shared_prefix.shared_prefix` (see
    :func:`shares_attention`). With ``room`` (the length of the tail about
    to run) and plain dynamic layers, each layer's rows are copied once
    into a buffer with room for the tail, which the tail's update fills in
    place (:func:`with_room`): one copy of the prefix rows, read by the
    attention kernel as one K (and V) tensor. Otherwise the layers are copied shallowly (selecting and the
    tail's updates rebind their tensors): where every row shows one image
    (one slot), each layer's keys and values are that row expanded over the
    batch, a view, and the tail's update (``DynamicLayer.update``)
    concatenates prefix and tail into a new tensor; rows of several images
    are gathered first (a cache layer that updates in place, such as
    ``StaticLayer``'s ``index_copy_``, cannot take a view whose rows share
    memory), then concatenated: two copies."""
    rows = copy.copy(cache)
    if shared and all(type(layer) in PLAIN_LAYERS for layer in cache.layers):
        plan = SlotPlan(slots)
        rows.layers = [SharedPrefixLayer(layer, plan) for layer in cache.layers]
        return rows
    if room and all(type(layer) in PLAIN_LAYERS for layer in cache.layers):
        rows.layers = [_Room(layer, slots, room) for layer in cache.layers]
        return rows
    rows.layers = [copy.copy(layer) for layer in cache.layers]
    slot = int(slots[0])
    if bool((slots == slot).all()) and all(type(layer) in CONCATENATING for layer in rows.layers):
        for layer in rows.layers:
            layer.keys = layer.keys[slot : slot + 1].expand(len(slots), -1, -1, -1)
            layer.values = layer.values[slot : slot + 1].expand(len(slots), -1, -1, -1)
    else:
        rows.batch_select_indices(slots)
    return rows


def shares_attention(mllm, backend: str) -> bool:
    """Whether tails may attend over a shared prefix without copying it
    (:mod:`mechmod.backends.shared_prefix`): the model runs sdpa or eager
    attention (mechmod's kernel takes over for the tails) through the hooks
    or nnsight backend (the TransformerLens bridge computes attention
    itself)."""
    return backend != "transformer_lens" and kernel_runs(mllm)


def cache_kwarg(model) -> str:
    """The name of the KV cache, as the model's forward keyword and as its
    output's field: transformers renamed ``past_key_values`` to ``cache``
    (5.2x) and warns on the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def rope_deltas(mllm) -> torch.Tensor | None:
    """The M-RoPE position offsets of the text after the image that the model
    kept from its last forward (a copy), or None in a family without them."""
    path = mllm.adapter.rope_deltas_path
    if path is None:
        return None
    owner, _, attr = path.rpartition(".")
    value = getattr(mllm.adapter.module(mllm.model, owner) if owner else mllm.model, attr, None)
    if not isinstance(value, torch.Tensor):
        raise MechmodError(f"{mllm.name}: no rope deltas at {path!r} after the prefix forward ({mllm.family} adapter)")
    return value.clone()


def _cat_prefixes(prefixes: Sequence[Prefix]) -> dict[str, torch.Tensor]:
    """The prefixes' inputs stacked; in pinned memory where they come pinned
    (mechmod.loader on a CUDA model), so the copy to the device need not block."""
    out = {}
    for k in prefixes[0].inputs:
        parts = [p.inputs[k] for p in prefixes]
        buf = torch.empty((sum(x.shape[0] for x in parts), *parts[0].shape[1:]), dtype=parts[0].dtype,
                          pin_memory=parts[0].is_pinned())
        out[k] = torch.cat(parts, dim=0, out=buf)
    return out


@dataclass(frozen=True)
class KeptPrefix:
    """One image's prefix forward, kept for tails run later (the written-on
    answers of its undecided rows): its KV cache (batch of 1, its own
    copy), its rope deltas (M-RoPE; else None) and which prefix positions
    are image tokens [1, P]."""

    cache: Any
    deltas: torch.Tensor | None
    image_keys: torch.Tensor

    @property
    def nbytes(self) -> int:
        return _row_bytes(self.cache)

    @property
    def key(self) -> tuple:
        """Kept prefixes with equal keys stack into one cache (:func:`_stacked`)."""
        return (self.image_keys.shape[1],) + tuple((type(layer), tuple(layer.keys.shape[1:]))
                                                   for layer in self.cache.layers)


def _row_bytes(cache) -> int:
    """The bytes of one row of ``cache`` (its keys and values in every layer)."""
    return sum(t[0].numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


#: at most this much of kept prefix caches per :func:`trace_shared` call (the rest is computed again)
KEEP_BYTES = 2 * 2**30


def trace_shared(mllm, images: Sequence[Any], prompts_per_image: Sequence[Sequence[tuple[str | None, str]]],
                 batch_size: int = 8, backend: str = "hooks", attention: bool = False,
                 prefixes: Sequence[Prefix | None] | None = None, reuse: Sequence[KeptPrefix | None] | None = None,
                 keep: Callable[[torch.Tensor], bool] | None = None,
                 kept: dict[int, KeptPrefix] | None = None) -> list[ResidualTrace]:
    """For each image, trace its prompts ``(description or None, question)``
    (or ``(description, question, written token ids)``: the answer position
    is then after the written tokens) over one shared prefix. Returns one
    ResidualTrace per image (rows in the order given); with ``attention``
    its ``span_attention`` holds the answer position's attention mass on the
    image, description and question tokens per layer. ``prefixes``: the
    images' prefixes where already built (mechmod.loader; None: built here).
    ``reuse``: per image a :class:`KeptPrefix` to run its tails over (no
    prefix forward; those of same-shaped images stacked, batch_size at a
    time, into one cache), or None. With ``keep`` (an image's rows' logits [n, V]
    -> whether its prefix will serve again), ``kept[i]`` gets image i's
    prefix where it says so, up to :data:`KEEP_BYTES` in all."""
    if len(images) != len(prompts_per_image):
        raise MechmodError(f"trace_shared: {len(images)} images but {len(prompts_per_image)} prompt lists")
    reuse = reuse or [None] * len(images)
    built = prefixes or [None] * len(images)
    prefixes = {i: built[i] if built[i] is not None else image_prefix(mllm, images[i])
                for i in range(len(images)) if reuse[i] is None}
    logits: list[list[torch.Tensor]] = [[] for _ in images]
    resid: list[list[torch.Tensor]] = [[] for _ in images]
    mass: list[list[torch.Tensor]] = [[] for _ in images]
    groups: dict[tuple, list[int]] = {}  # images of one shape, kept apart from fresh ones
    for i in range(len(images)):
        groups.setdefault(("kept", reuse[i].key) if reuse[i] is not None else ("fresh", prefixes[i].key), []).append(i)
    budget = KEEP_BYTES
    for (kind, _), members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            cache, deltas, image_keys = (_stacked([reuse[i] for i in chunk]) if kind == "kept"
                                         else _prefix_forward(mllm, [prefixes[i] for i in chunk]))
            _tails(mllm, cache, deltas, image_keys, [prompts_per_image[i] for i in chunk], batch_size, backend,
                   attention, [logits[i] for i in chunk], [resid[i] for i in chunk], [mass[i] for i in chunk])
            if kind == "kept" or keep is None or kept is None:
                continue
            size = _row_bytes(cache)  # what keeping one of these images costs
            for slot, i in enumerate(chunk):
                if size <= budget and keep(torch.cat(logits[i])):
                    kept[i], budget = _kept(cache, deltas, image_keys, slot), budget - size
    return [ResidualTrace(logits=torch.cat(lg), resid=torch.cat(rs), span_attention=torch.cat(ms) if ms else None)
            for lg, rs, ms in zip(logits, resid, mass)]


def _prefix_forward(mllm, prefixes: Sequence[Prefix]):
    """The prefixes of a few same-shaped images in one forward: (their KV
    cache, rope deltas or None, image-token positions [images, P]). Where
    mechmod's kernel can take over (:func:`kernel_runs`), the forward stops
    once the last layer's keys and values are cached."""
    inputs = {k: v.to(mllm.device, non_blocking=True) for k, v in _cat_prefixes(prefixes).items()}
    cache = DynamicCache(config=mllm.model.config.get_text_config())
    with torch.no_grad(), keys_only(mllm) if kernel_runs(mllm) else nullcontext():
        try:
            mllm.model(**inputs, **{cache_kwarg(mllm.model): cache}, use_cache=True, logits_to_keep=1)
        except KeysCached:
            pass
    return cache, rope_deltas(mllm), (inputs["input_ids"] == mllm.image_token_id).cpu()


def kernel_runs(mllm) -> bool:
    """Whether mechmod's attention kernel can take over ``mllm``'s attention
    (:data:`~mechmod.backends.sites.KERNEL`): it runs sdpa or eager
    attention through transformers' AttentionInterface, not a
    TransformerLens bridge."""
    return not bridged(mllm) and attention_implementation(mllm) in WEIGHTED_KERNELS


def _kept(cache, deltas, image_keys, slot: int) -> KeptPrefix:
    """Image ``slot``'s prefix out of a group's cache, copied (the group's is freed)."""
    own = copy.copy(cache)
    own.layers = [copy.copy(layer) for layer in cache.layers]
    own.batch_select_indices(torch.tensor([slot], device=cache.layers[0].keys.device))
    return KeptPrefix(own, None if deltas is None else deltas[slot : slot + 1].clone(), image_keys[slot : slot + 1])


def _stacked(kept: Sequence[KeptPrefix]):
    """Kept prefixes of same-shaped images as one group's prefix forward:
    (their caches side by side, a copy unless there is one, rope deltas or
    None, image-token positions [images, P])."""
    if len(kept) == 1:
        return kept[0].cache, kept[0].deltas, kept[0].image_keys
    cache = copy.copy(kept[0].cache)
    cache.layers = []
    for j, first in enumerate(kept[0].cache.layers):
        layer = copy.copy(first)
        layer.keys = torch.cat([k.cache.layers[j].keys for k in kept])
        layer.values = torch.cat([k.cache.layers[j].values for k in kept])
        cache.layers.append(layer)
    deltas = None if kept[0].deltas is None else torch.cat([k.deltas for k in kept])
    return cache, deltas, torch.cat([k.image_keys for k in kept])


def _tails(mllm, cache, deltas, image_keys, prompt_lists, batch_size, backend, attention, logits_out, resid_out,
           mass_out) -> None:
    """The tails of each image's prompts (image i = slot i of ``cache``),
    batched by length, their results appended to the images' lists."""
    key = cache_kwarg(mllm.model)
    P = image_keys.shape[1]
    rows = []  # (image slot in this group, tail ids, what each tail token is)
    for slot, prompts in enumerate(prompt_lists):
        for desc, question, *written in prompts:
            ids, kinds = mllm.tail(mllm.case_prompt(desc, question, with_image=True), desc or "", question)
            extra = [int(t) for t in written[0]] if written else []  # tokens written after the prompt
            rows.append((slot, ids + extra, kinds + ["written"] * len(extra)))
    pad = mllm.tokenizer.pad_token_id if mllm.tokenizer.pad_token_id is not None else 0
    share = shares_attention(mllm, backend)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))  # batches of similar lengths: little padding
    done: list[tuple] = [()] * len(rows)  # per row: its logits, residuals and span attention mass
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        part = [rows[i] for i in batch]
        S = max(len(t) for _, t, _ in part)
        ids = torch.full((len(part), S), pad, dtype=torch.long)
        for r, (_, t, _) in enumerate(part):
            ids[r, : len(t)] = torch.tensor(t)
        positions = torch.tensor([len(t) - 1 for _, t, _ in part])
        slots = torch.tensor([slot for slot, _, _ in part], device=mllm.device)
        tail_inputs = {
            "input_ids": ids.to(mllm.device),
            "attention_mask": torch.ones(len(part), P + S, dtype=torch.long, device=mllm.device),
            key: cache_rows(cache, slots, room=S, shared=share),
            "use_cache": True,
        }
        if deltas is not None:  # M-RoPE: text positions continue from the image's, offset per prefix
            tail_inputs["position_ids"] = (torch.arange(P, P + S, device=deltas.device)[None, :]
                                           + deltas.reshape(-1, 1)[slots.to(deltas.device)]).to(mllm.device)
        with shared_prefix(mllm) if share else nullcontext():
            tr = trace_at(mllm, tail_inputs, positions.to(mllm.device), backend=backend, attention=attention)
        for r, (i, (slot, _, kinds)) in enumerate(zip(batch, part)):
            mass = None
            if attention:
                keys = {name: torch.cat([image_keys[slot] if name == "image" else torch.zeros(P, dtype=torch.bool),
                                         torch.tensor([k == name for k in kinds] + [False] * (S - len(kinds)))])
                        for name in SPANS}
                mass = span_mass(tr.attn[r : r + 1], {n: m[None] for n, m in keys.items()})
            done[i] = (tr.logits[r : r + 1], tr.resid[r : r + 1], mass)
    for (slot, _, _), (logits, resid, mass) in zip(rows, done):
        logits_out[slot].append(logits)
        resid_out[slot].append(resid)
        if mass is not None:
            mass_out[slot].append(mass)
