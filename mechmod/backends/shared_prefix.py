"""Attention of text tails over a shared image prefix, without copying it.

Tails of prompts that show the same image attend to that image's prefix
keys and values (:mod:`mechmod.prefix`). Handing an attention kernel one
K/V tensor per row means copying the prefix into every row: on LLaVA-1.5
(576 image tokens) that is ~0.3 GB per row in bf16 on the 7B model. Here a
tail's cache layer (:class:`SharedPrefixLayer`) keeps the prefix once per
image, as the prefix forward left it, plus the rows' own tail keys, and
the attention splits in two (as Hydragen does): every tail query of one
image against that image's prefix in one batched matmul (no causal mask:
the prefix comes before every tail token), and each row's queries against
its own tail keys (causal); the two partial softmaxes are merged by their
maxima and sums. The maths runs in float32 (GQA: a key head serves its
group of query heads without being repeated) and equals sdpa over the
concatenated keys to float32 rounding (tests/test_shared_prefix.py).

The split runs inside mechmod's attention kernel
(:mod:`mechmod.backends.answer_attention`), which also reads the answer
row from the same scores when attention mass is asked for:
:class:`shared_prefix` switches the model to that kernel for the tail
forwards, and each shared layer's update hands itself to the attention
call that follows it.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
from transformers.cache_utils import DynamicLayer

from mechmod.backends.sites import kernel_context
from mechmod.errors import MechmodError


class SlotPlan:
    """Where each row of a tail batch reads its prefix: ``slots`` [B] (row ->
    image of the prefix cache), the images ``present`` (read as the slice
    ``span`` where consecutive, else gathered), each row's ``image`` among
    them and its ``rank`` there: the queries of one image are stacked,
    padded to the most rows any image has (``width``)."""

    def __init__(self, slots: torch.Tensor):
        slots = slots.long()
        present, image = torch.unique(slots, return_inverse=True)
        self.slots, self.image = slots, image
        self.present = present
        lo, n = int(present[0]), len(present)
        self.span = slice(lo, lo + n) if int(present[-1]) - lo + 1 == n else None
        rank = torch.zeros_like(slots)
        for i in range(n):  # a row's rank among its image's rows, in batch order
            rows = torch.nonzero(image == i).flatten()
            rank[rows] = torch.arange(len(rows), device=slots.device)
        self.rank, self.n_images, self.width = rank, n, int(rank.max()) + 1

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The present images' prefix tensors of ``x`` [images, ...] (a view where consecutive)."""
        return x[self.span] if self.span is not None else x[self.present.to(x.device)]


class SharedPrefixLayer(DynamicLayer):
    """A tail batch's cache layer over a shared prefix: ``prefix_keys`` /
    ``prefix_values`` [images, H_kv, P, d] (the prefix cache's own tensors,
    never copied), the rows' :class:`SlotPlan`, and in ``keys`` / ``values``
    the rows' tail keys and values (those of the forwards so far). Its
    sequence length counts the prefix, so positions and masks come out as
    over a full cache; the attention must split (:class:`shared_prefix`)."""

    def __init__(self, layer: DynamicLayer, plan: SlotPlan):
        super().__init__()
        self.prefix_keys, self.prefix_values, self.plan = layer.keys, layer.values, plan
        B, (_, H, _, d) = len(plan.slots), layer.keys.shape
        self.device, self.is_initialized = layer.keys.device, True
        self.keys = layer.keys.new_empty(B, H, 0, d)
        self.values = layer.values.new_empty(B, H, 0, d)

    @property
    def prefix_length(self) -> int:
        return self.prefix_keys.shape[-2]

    def get_seq_length(self) -> int:
        return self.prefix_length + self.keys.shape[-2]

    def materialized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's prefix then tail keys and values, copied [B, H_kv, P + S_k, d]."""
        slots = self.plan.slots.to(self.prefix_keys.device)
        return (torch.cat([self.prefix_keys[slots], self.keys], dim=-2),
                torch.cat([self.prefix_values[slots], self.values], dim=-2))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        ctx = _ACTIVE.get()
        if ctx is None:
            raise MechmodError("a shared-prefix cache layer was run outside `mechmod.backends.shared_prefix`: its "
                               "keys are the tail's only, so a plain attention kernel would ignore the prefix")
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        ctx.pending = self
        return self.keys, self.values


def split_attention(query: torch.Tensor, layer: SharedPrefixLayer, mask: torch.Tensor | None, scaling: float,
                    answer_positions: torch.Tensor | None = None, want_row: bool = False):
    """Attention of ``query`` [B, H, S, d] (post-RoPE) over ``layer``'s prefix
    then its tail keys (the last S of them are the queries' own), with
    ``mask`` as sdpa receives it (bool [B or 1, 1 or H, S, P + S_k], True =
    attend) or None (causal). In the prefix the mask may hide keys (a
    left-padded row's pads), the same ones from every query of an image's
    rows; where it does not (or the mask is additive), returns None: the
    caller attends over :meth:`SharedPrefixLayer.materialized` keys instead. A query that sees
    no key at all gets zeros, not NaN. Returns (output [B, S, H, d] in the
    query's dtype, as transformers' kernels return it; with ``want_row``
    the eager weights [B, H, P + S_k] (float32) of query row
    ``answer_positions[b]`` (None: the last), else None)."""
    plan, P = layer.plan, layer.prefix_length
    B, H, S, d = query.shape
    tk, tv = layer.keys.float(), layer.values.float()
    H_kv, Sk = tk.shape[1], tk.shape[2]
    G, dev = H // H_kv, query.device
    q = query.float().reshape(B, H_kv, G, S, d)
    # each row's queries against its own tail keys, causal (or as the mask says)
    st = torch.matmul(q.reshape(B, H_kv, G * S, d), tk.transpose(2, 3)).reshape(B, H_kv, G, S, Sk) * scaling
    hidden = None  # prefix keys hidden from an image's rows [images, P]
    if mask is None:
        allowed = (torch.arange(Sk, device=dev)[None, :] <= torch.arange(Sk - S, Sk, device=dev)[:, None])[None, None]
    else:
        hidden = _prefix_keys_hidden(mask[..., :P], plan, B) if mask.dtype == torch.bool else False
        if hidden is False:  # an additive mask, or one the split cannot take
            return None
        tail = mask[..., P:]
        allowed = tail.reshape(tail.shape[0], H_kv, G, S, Sk) if tail.shape[1] == H else tail[:, :, None]
    st = st.masked_fill(~allowed, float("-inf"))
    low = torch.finfo(st.dtype).min  # a row that sees no key: weights 0, not NaN
    mt = st.amax(-1, keepdim=True).clamp(min=low)
    et = torch.exp(st - mt)
    lt, ot = et.sum(-1, keepdim=True), torch.matmul(et.reshape(B, H_kv, G * S, Sk), tv).reshape(B, H_kv, G, S, d)
    # every image's queries, stacked, against its prefix: [images, H_kv, G * width * S, P]
    n, w = plan.n_images, plan.width
    stacked = q.new_zeros(n, w, H_kv, G, S, d)
    stacked[plan.image, plan.rank] = q
    stacked = stacked.permute(0, 2, 3, 1, 4, 5).reshape(n, H_kv, G * w * S, d)
    sp = torch.matmul(stacked, plan.prefix(layer.prefix_keys).float().transpose(2, 3)) * scaling
    if hidden is not None:
        sp = sp.masked_fill(hidden[:, None, None, :], float("-inf"))
    mp = sp.amax(-1, keepdim=True).clamp(min=low)
    ep = torch.exp(sp - mp)
    lp, op = ep.sum(-1, keepdim=True), torch.matmul(ep, plan.prefix(layer.prefix_values).float())

    def rows(x: torch.Tensor) -> torch.Tensor:  # [images, H_kv, G * width * S, k] -> [B, H_kv, G, S, k]
        x = x.reshape(n, H_kv, G, w, S, x.shape[-1]).permute(0, 3, 1, 2, 4, 5)
        return x[plan.image, plan.rank]

    mp, lp, op = rows(mp), rows(lp), rows(op)
    m = torch.maximum(mp, mt)
    a, b = torch.exp(mp - m), torch.exp(mt - m)
    out = (op * a + ot * b) / (lp * a + lt * b).clamp(min=torch.finfo(st.dtype).tiny)
    out = out.reshape(B, H, S, d).transpose(1, 2).contiguous().to(query.dtype)
    if not want_row:
        return out, None
    at = torch.full((B,), S - 1, device=dev) if answer_positions is None else answer_positions.to(dev)
    r = torch.arange(B, device=dev)
    row_p = rows(sp)[r, :, :, at]  # [B, H_kv, G, P]
    row_t = st[r, :, :, at]  # [B, H_kv, G, S_k]
    row = torch.softmax(torch.cat([row_p, row_t], dim=-1), dim=-1)
    return out, row.reshape(B, H, P + Sk)


def _prefix_keys_hidden(prefix_mask: torch.Tensor, plan: SlotPlan, B: int) -> torch.Tensor | None | bool:
    """From the mask's prefix part [B or 1, 1 or H, S, P]: per image present
    the prefix keys hidden from its rows [images, P] (None: none hidden;
    False where queries of one image see different keys)."""
    if bool(prefix_mask.all()):
        return None
    rows = prefix_mask[:, 0, -1].expand(B, -1)  # [B, P]: each row's last query's view
    per_image = torch.zeros(plan.n_images, rows.shape[1], dtype=torch.bool, device=rows.device)
    per_image[plan.image] = rows
    if not (bool((prefix_mask == rows[:, None, None, :]).all()) and bool((per_image[plan.image] == rows).all())):
        return False
    return ~per_image


_ACTIVE: ContextVar["shared_prefix | None"] = ContextVar("mechmod_shared_prefix", default=None)


class shared_prefix(kernel_context):
    """While inside, a decoder layer whose cache layer is a
    :class:`SharedPrefixLayer` attends by :func:`split_attention`: the layer's
    update marks itself pending, and mechmod's kernel (which ``mllm`` runs
    meanwhile, :mod:`mechmod.backends.answer_attention`) takes it with the
    keys the update returned."""

    active = _ACTIVE

    def __init__(self, mllm):
        super().__init__(mllm)
        self.pending = None


def take_pending(key: torch.Tensor) -> SharedPrefixLayer | None:
    """The shared-prefix cache layer whose update returned ``key`` just
    before this attention call, or None (no such layer pending)."""
    ctx = _ACTIVE.get()
    layer = ctx.pending if ctx is not None else None
    if layer is None:
        return None
    ctx.pending = None
    if key is not layer.keys:
        raise MechmodError("shared-prefix attention: the attention received other keys than its cache layer "
                           "returned; run without prefix sharing (--no-share-prefix)")
    return layer
