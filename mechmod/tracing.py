"""One function hides the tracer: :func:`trace` runs a batch and returns the
answer distribution and the answer-position residual of every layer.

It reads the sites ``resid_in`` of layer 0 and ``resid`` of every layer (and
``pattern`` for attention) through :func:`mechmod.backends.run`, with the
``hooks`` (the default: plain forward hooks, the least per-batch
overhead), ``nnsight`` or ``transformer_lens`` backend; all give the same
:class:`ResidualTrace` and callers never touch ``.save()``. Only the answer
position is kept (the rest of each sequence is never stored)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from mechmod.backends import Site, answer_rows, eager_attention, run, unembed
from mechmod.errors import MechmodError
from mechmod.names import ATTENTION_SPANS as SPANS, BACKENDS


def span_mass(attn: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Attention mass of the answer position on each span: ``attn`` [B, L, K]
    (head-averaged weights over K keys) and bool ``masks[name]`` [B, K] ->
    [B, L, len(SPANS)] (the rest of the mass is on template tokens)."""
    return torch.stack([(attn * masks[name][:, None, :].to(attn.dtype)).sum(-1) for name in SPANS], dim=-1)


@dataclass(frozen=True)
class ResidualTrace:
    """Per prompt of a batch.

    ``logits`` [B, V] float32: the model's next-token logits at the answer
    position. ``resid`` [B, n_layers + 1, d_model] float32 or None: the
    embedding output (decoder input) then each decoder layer's output, all
    before the final norm. ``attn`` [B, n_layers, T_keys] float32 or None
    (when asked): the answer position's attention weights in each layer,
    averaged over heads."""

    logits: torch.Tensor
    resid: torch.Tensor | None
    attn: torch.Tensor | None = None
    span_attention: torch.Tensor | None = None  # [B, n_layers, len(SPANS)], see span_mass

    def __post_init__(self):
        if self.logits.ndim != 2:
            raise ValueError(f"ResidualTrace.logits must be [B, V], got {tuple(self.logits.shape)}")
        if self.resid is not None and (self.resid.ndim != 3 or self.resid.shape[0] != self.logits.shape[0]):
            raise ValueError(f"ResidualTrace.resid must be [B, L+1, D], got {tuple(self.resid.shape)}")


def trace(mllm, encoded, backend: str = "hooks", keep_resid: bool = True, attention: bool = False) -> ResidualTrace:
    """Run ``encoded`` through ``mllm`` (no grad) and read the answer position
    (with ``attention``, also its head-averaged attention weights)."""
    T = encoded.inputs["input_ids"].shape[1]
    if not bool((encoded.answer_index == T - 1).all()):
        raise MechmodError("trace: the answer must be the last position of every row (left padding)")
    return _run(mllm, encoded.inputs, None, backend, keep_resid, attention)


def trace_at(mllm, inputs: dict, positions: torch.Tensor, backend: str = "hooks",
             attention: bool = False) -> ResidualTrace:
    """Like :func:`trace` for inputs whose answers sit at ``positions`` [B]
    (right-padded suffixes over a cached image prefix, see
    :mod:`mechmod.prefix`). The logits are the unembedding of the last
    layer's residual at the answer, which is what the model computes there
    (checked for every model by :func:`mechmod.backends.self_check`)."""
    return _run(mllm, inputs, positions.long(), backend, True, attention)


def _run(mllm, inputs, positions, backend, keep_resid, attention=False) -> ResidualTrace:
    if backend not in BACKENDS:
        raise MechmodError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    B, n = inputs["input_ids"].shape[0], mllm.n_layers
    rows, cols = (slice(None), -1) if positions is None else (torch.arange(B, device=positions.device), positions)
    resid_sites = [Site(0, "resid_in")] + [Site(l, "resid") for l in range(n)] if keep_resid else []
    reads = [(s, lambda x: x[rows, cols]) for s in resid_sites]
    bridged = attention and backend == "transformer_lens"  # the bridge's own attention: its pattern hooks, eager
    if bridged:  # [B, heads, keys] at the answer position
        reads += [(Site(l, "pattern"), lambda w: w[rows, :, cols, :]) for l in range(n)]
    recorder = answer_rows(mllm, positions) if attention and not bridged else nullcontext()
    with torch.no_grad(), (eager_attention(mllm) if bridged else nullcontext()), recorder:
        logits, got = run(mllm, inputs, reads=reads, backend=backend)
        saved, attn_rows = got[: len(resid_sites)], got[len(resid_sites) :]
        resid = torch.stack([s.float().cpu() for s in saved], dim=1) if saved else None
        if not attention:
            attn = None
        elif bridged:
            attn = torch.stack([a.float().mean(1).cpu() for a in attn_rows], dim=1)
        else:
            attn = recorder.weights().cpu()
        if positions is not None:
            logits = unembed(mllm, saved[-1])
    return ResidualTrace(logits=logits.float().cpu(), resid=resid, attn=attn)
