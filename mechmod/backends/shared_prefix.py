"""Attention of text tails over a shared image prefix, without copying it.

Tails of prompts that show the same image attend to that image's prefix
keys and values (:mod:`mechmod.prefix`). Handing an attention kernel one
K/V tensor per row means copying the prefix into every row: on LLaVA-1.5
(576 image tokens) that is ~0.3 GB per row in bf16 on the 7B model. Here a
tail's cache layer (:class:`SharedPrefixLayer`) keeps the prefix once per
image, as the prefix forward left it, plus the rows' own tail keys, and
the attention splits in two (as Hydragen does): every tail query of one
image against that image's prefix, stacked into one batch (no causal mask:
the prefix comes before every tail token), and each row's queries against
its own tail keys (causal); the two partial attentions are merged by their
log-sum-exps (:func:`attend`: aten's fused flash kernel on CPU, matmuls
elsewhere). The maths runs in float32 (GQA: a key head serves its group
of query heads without being repeated) and equals sdpa over the
concatenated keys to float32 rounding (tests/test_shared_prefix.py).

The split runs inside mechmod's attention kernel
(:mod:`mechmod.backends.answer_attention`), which also computes the answer
row, from that one query's scores, when attention mass is asked for:
:class:`shared_prefix` switches the model to that kernel for the tail
forwards, and each shared layer's update hands itself to the attention
call that follows it. The same kernel stops a prefix forward once its
last layer has cached its keys (:class:`keys_only`).
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
        self._mask, self._hidden = (None, -1), None

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The present images' prefix tensors of ``x`` [images, ...] (a view where consecutive)."""
        return x[self.span] if self.span is not None else x[self.present.to(x.device)]

    def stack(self, x: torch.Tensor, H_kv: int) -> torch.Tensor:
        """Rows' queries ``x`` [B, H, S, k] stacked by image, zero-padded to
        ``width`` rows: [images, H_kv, G * width * S, k] (query head h reads
        key head h // G, as GQA's repeated keys)."""
        B, H, S, k = x.shape
        out = x.new_zeros(self.n_images, self.width, H, S, k)
        out[self.image, self.rank] = x
        return out.reshape(self.n_images, self.width, H_kv, H // H_kv, S, k).permute(0, 2, 3, 1, 4, 5).reshape(
            self.n_images, H_kv, -1, k)

    def rows(self, x: torch.Tensor, H: int, S: int) -> torch.Tensor:
        """The inverse of :meth:`stack`: [images, H_kv, G * width * S, k] -> [B, H, S, k]."""
        n, H_kv, _, k = x.shape
        x = x.reshape(n, H_kv, H // H_kv, self.width, S, k).permute(0, 3, 1, 2, 4, 5)
        return x[self.image, self.rank].reshape(len(self.slots), H, S, k)

    def hidden(self, mask: torch.Tensor, P: int) -> torch.Tensor | None | bool:
        """:func:`_prefix_keys_hidden` of a boolean ``mask``, once per mask
        (a forward hands every layer the same one; an in-place change to it
        bumps its version)."""
        seen, version = self._mask
        if seen is not mask or version != mask._version:
            self._mask, self._hidden = (mask, mask._version), _prefix_keys_hidden(mask[..., :P], self)
        return self._hidden


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
    H_kv, Sk = layer.keys.shape[1], layer.keys.shape[2]
    G, dev = H // H_kv, query.device
    if mask is None:
        hidden = None
        allowed = (torch.arange(Sk, device=dev)[None, :] <= torch.arange(Sk - S, Sk, device=dev)[:, None])[None, None]
    else:
        hidden = plan.hidden(mask, P) if mask.dtype == torch.bool else False
        if hidden is False:  # an additive mask, or one the split cannot take
            return None
        allowed = mask[..., P:]  # [B or 1, 1 or H, S, S_k]
    q = query.float()
    # each row's queries against its own tail keys (GQA: the few tail keys repeated)
    tk, tv = (t.float().repeat_interleave(G, dim=1) if G > 1 else t.float() for t in (layer.keys, layer.values))
    ot, lt = attend(q, tk, tv, _bias(allowed), scaling)
    lt = lt.masked_fill(~allowed.any(-1), float("-inf"))  # [B, H, S]
    # every image's queries, stacked, against its prefix: [images, H_kv, G * width * S, d]
    keys, values = plan.prefix(layer.prefix_keys).float(), plan.prefix(layer.prefix_values).float()
    op, lp = attend(plan.stack(q, H_kv), keys, values, None if hidden is None else _bias(~hidden[:, None, None, :]),
                    scaling)
    op, lp = plan.rows(op, H, S), plan.rows(lp[..., None], H, S)[..., 0]  # [B, H, S, d], [B, H, S]
    if hidden is not None:
        lp = lp.masked_fill(hidden.all(-1)[plan.image][:, None, None], float("-inf"))
    # the two partial softmaxes, merged by their log-sum-exps
    low = torch.finfo(torch.float32).min
    m = torch.maximum(lp, lt).clamp(min=low)
    a, b = torch.exp(lp - m)[..., None], torch.exp(lt - m)[..., None]
    out = (op * a + ot * b) / (a + b).clamp(min=torch.finfo(torch.float32).tiny)
    out = out.transpose(1, 2).contiguous().to(query.dtype)
    if not want_row:
        return out, None
    return out, _answer_row(q, layer, keys, hidden, allowed, scaling, answer_positions)


def _answer_row(q: torch.Tensor, layer: SharedPrefixLayer, keys: torch.Tensor, hidden: torch.Tensor | None,
                allowed: torch.Tensor, scaling: float, positions: torch.Tensor | None) -> torch.Tensor:
    """Eager attention's weights [B, H, P + S_k] (float32) of each row's
    answer query (``positions[b]``; None: the last) over its image's prefix
    (``keys``: the present images' prefix keys in float32, as the split
    read them) and its own tail keys: the scores of that one query, masked
    as eager masks them, one softmax."""
    plan, low = layer.plan, torch.finfo(torch.float32).min
    B, H, S, d = q.shape
    H_kv, Sk = layer.keys.shape[1], layer.keys.shape[2]
    r = torch.arange(B, device=q.device)
    at = torch.full((B,), S - 1, device=q.device) if positions is None else positions.to(q.device)
    qa = q[r, :, at][:, :, None]  # [B, H, 1, d]
    sp = plan.rows(torch.matmul(plan.stack(qa, H_kv), keys.transpose(2, 3)), H, 1)[:, :, 0] * scaling  # [B, H, P]
    if hidden is not None:
        sp = sp.masked_fill(hidden[plan.image][:, None, :], low)
    st = torch.matmul(qa.reshape(B, H_kv, H // H_kv, d), layer.keys.float().transpose(2, 3)).reshape(B, H, Sk) * scaling
    st = st.masked_fill(~allowed[r if allowed.shape[0] == B else torch.zeros_like(r), :, at], low)
    return torch.softmax(torch.cat([sp, st], dim=-1), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float,
           fused: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + bias) v and its log-sum-exp [..., Q], in float32
    (q [..., Q, d], k and v [..., K, d], ``bias`` additive, broadcast). A
    query whose keys are all masked gets output 0 and a meaningless
    log-sum-exp (the caller masks it). ``fused`` (default: on CPU) runs
    aten's fused CPU flash kernel, which returns the log-sum-exp; else the
    same maths in matmuls."""
    if q.is_cpu if fused is None else fused:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias,
                                                                          scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    m = s.amax(-1, keepdim=True).clamp(min=torch.finfo(s.dtype).min)
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    return torch.matmul(e, v) / total.clamp(min=torch.finfo(s.dtype).tiny), (m + total.log()).squeeze(-1)


def _bias(allowed: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True = attend) as an additive float32 one."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _prefix_keys_hidden(prefix_mask: torch.Tensor, plan: SlotPlan) -> torch.Tensor | None | bool:
    """From the mask's prefix part [B or 1, 1 or H, S, P]: per image present
    the prefix keys hidden from its rows [images, P] (None: none hidden;
    False where queries of one image see different keys)."""
    if bool(prefix_mask.all()):
        return None
    rows = prefix_mask[:, 0, -1].expand(len(plan.slots), -1)  # [B, P]: each row's last query's view
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


class KeysCached(Exception):
    """Raised by mechmod's kernel at the last decoder layer's attention of a
    forward inside :class:`keys_only`, once that layer's cache update has
    stored its keys and values."""


_KEYS_ONLY: ContextVar["keys_only | None"] = ContextVar("mechmod_keys_only", default=None)


class keys_only(kernel_context):
    """While inside, a forward of ``mllm`` stops (raises :class:`KeysCached`)
    at its last decoder layer's attention, after that layer's cache update:
    a prefix forward keeps only the keys and values of every layer, and the
    rest (that layer's attention and MLP, the final norm, the unembedding)
    would be computed for nothing. Give the forward its cache: the
    exception leaves no output to read it from."""

    active = _KEYS_ONLY

    def __init__(self, mllm):
        super().__init__(mllm)
        adapter = mllm.adapter
        self.last = adapter.module(mllm.layers[-1], adapter.attn_path)


def stop_at(module) -> None:
    """Raise :class:`KeysCached` where ``module`` is the last decoder layer's
    attention of a forward inside :class:`keys_only`."""
    ctx = _KEYS_ONLY.get()
    if ctx is not None and module is ctx.last:
        raise KeysCached

