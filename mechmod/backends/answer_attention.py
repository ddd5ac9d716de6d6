"""The answer position's attention weights without eager attention.

Eager attention materialises every layer's T x T weights although the
attention mass reads one row of them. :class:`answer_rows` instead runs the
forward with :data:`KERNEL`, an attention function registered in
transformers' ``AttentionInterface`` (with sdpa's mask): it returns sdpa's
output and, in each decoder layer of the language model, computes the eager
weights of the answer query only from what the kernel receives (post-RoPE
query and keys, the cache's keys included, the mask, the scaling,
soft-capping and sliding window): GQA keys repeated, a float32 softmax.
Inside :class:`mechmod.backends.shared_prefix`, a layer attending over a
shared image prefix splits its attention there instead of calling sdpa, and
its answer row comes from the same scores.
The TransformerLens bridge reimplements attention in its own components for
most families, so it keeps reading ``pattern`` under eager attention."""

from __future__ import annotations

from contextvars import ContextVar

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mechmod.backends.shared_prefix import split_attention, stop_at, take_pending
from mechmod.backends.sites import KERNEL, attention_implementation, kernel_context
from mechmod.errors import MechmodError
#: kernels whose forward the answer-row kernel reproduces (sdpa's; eager computes the same maths)
WEIGHTED_KERNELS = ("sdpa", "eager", KERNEL)

_ACTIVE: ContextVar["answer_rows | None"] = ContextVar("mechmod_answer_rows", default=None)


def answer_row(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float,
               positions: torch.Tensor | None = None, is_causal: bool = True, sliding_window: int | None = None,
               softcap: float | None = None) -> torch.Tensor:
    """Eager attention's weights [B, H, K] (float32) of query row
    ``positions[b]`` (None: the last query) of each batch row: ``query``
    [B, H, Q, d], ``key`` [B, H_kv, K, d] (the last Q keys are the queries'
    own), ``mask`` as the kernel receives it (bool, True = attend, or
    additive float; [B or 1, 1 or H, Q, K]) or None (then causal, within
    ``sliding_window``, as sdpa's ``is_causal`` and eager's mask)."""
    B, H, Q, d = query.shape
    H_kv, K = key.shape[1], key.shape[2]
    b = torch.arange(B, device=query.device)
    pos = torch.full((B,), Q - 1, device=query.device) if positions is None else positions.to(query.device)
    q = query[b, :, pos]  # [B, H, d]; query head h reads key head h // (H / H_kv), as repeat_kv
    scores = torch.matmul(q.reshape(B, H_kv, H // H_kv, d), key.transpose(2, 3)).reshape(B, H, K) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        row = mask[b if mask.shape[0] == B else torch.zeros_like(b), :, pos]  # [B, 1 or H, K]
        scores = scores.masked_fill(~row, torch.finfo(scores.dtype).min) if row.dtype == torch.bool else scores + row
    else:
        keys, at = torch.arange(K, device=query.device), (K - Q + pos)[:, None]  # the queries are the last keys
        allowed = keys <= at if is_causal and Q > 1 else torch.ones(B, K, dtype=torch.bool, device=query.device)
        if sliding_window is not None:
            allowed = allowed & (keys > at - sliding_window)
        scores = scores.masked_fill(~allowed[:, None, :], torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


def answer_row_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                         **kwargs):
    """The registered kernel: sdpa's output, or the split attention of a
    layer over a shared prefix (:func:`mechmod.backends.shared_prefix.split_attention`);
    in a decoder layer of a model inside :class:`answer_rows`, that layer's
    answer row recorded there. Returns no weights (like sdpa). Inside
    :class:`~mechmod.backends.shared_prefix.keys_only` the last decoder
    layer raises instead of attending."""
    stop_at(module)
    rows = _ACTIVE.get()
    layer = rows.layers.get(id(module)) if rows is not None else None
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    shared = take_pending(key)
    if shared is not None:
        plain = kwargs.get("sliding_window") is None and kwargs.get("softcap") is None
        split = split_attention(query, shared, attention_mask, scale, rows.positions if rows else None,
                                want_row=layer is not None) if plain else None
        if split is not None:
            if layer is not None:
                rows.rows[layer] = split[1]
            return split[0], None
        key, value = shared.materialized()  # a window, soft-capping or a mask the split cannot take: keys copied
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    is_causal=is_causal, **kwargs)
    if layer is not None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        rows.rows[layer] = answer_row(query, key, attention_mask, scale, rows.positions, causal,
                                      kwargs.get("sliding_window"), kwargs.get("softcap"))
    return out, None


AttentionInterface.register(KERNEL, answer_row_attention)
AttentionMaskInterface.register(KERNEL, sdpa_mask)


class answer_rows(kernel_context):
    """While inside, ``mllm`` runs :data:`KERNEL` (sdpa's forward) and each
    decoder layer records the answer position's attention weights in
    ``rows[layer]`` [B, heads, K] (float32); :meth:`weights` averages them
    over heads.
    ``positions`` [B]: the answer's index among the forward's query
    positions (None: the last one, as in left-padded prompts)."""

    active = _ACTIVE

    def __init__(self, mllm, positions: torch.Tensor | None = None):
        super().__init__(mllm)
        self.mllm, self.positions = mllm, positions
        adapter = mllm.adapter
        self.layers = {id(adapter.module(layer, adapter.attn_path)): i for i, layer in enumerate(mllm.layers)}
        self.rows: dict[int, torch.Tensor] = {}

    def __enter__(self):
        kernel = attention_implementation(self.mllm)
        if kernel not in WEIGHTED_KERNELS:
            raise MechmodError(
                f"attention mass: {self.mllm.name} runs {kernel} attention, which computes no attention weights; "
                "load the model with sdpa or eager attention (model.set_attn_implementation('sdpa')) or run "
                "without attention mass (--no-attention)")
        return super().__enter__()

    def weights(self) -> torch.Tensor:
        """[B, n_layers, K]: each layer's head-averaged answer row."""
        missing = [i for i in range(len(self.layers)) if i not in self.rows]
        if missing:
            raise MechmodError(f"{self.mllm.name}: decoder layer {missing[0]}'s attention did not call the "
                               f"{KERNEL} kernel; its {self.mllm.family} attention does not dispatch through "
                               "transformers' AttentionInterface: run with --no-attention or --backend transformer_lens")
        return torch.stack([self.rows[i].mean(1) for i in range(len(self.layers))], dim=1)
