"""Dispatch: one no-grad forward with edits and reads on either backend,
and what tracing and the self-check share with it (eager attention while
inside a block, the model's own unembedding)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from mechmod.backends import hooks_backend, nnsight_backend, tl_backend
from mechmod.backends.sites import Edit, Plan, Read
from mechmod.errors import MechmodError
from mechmod.names import BACKENDS


def run(mllm, inputs: Mapping[str, torch.Tensor], edits: Sequence[Edit] = (), reads: Sequence[Read] = (),
        backend: str = "nnsight") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One no-grad forward of ``inputs`` (``model(**inputs)``) with ``edits``
    applied; returns (the last position's logits [N, V] as the model computed
    them, the reads' results in ``reads`` order)."""
    if backend not in BACKENDS:
        raise MechmodError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    plan = Plan(mllm, edits, reads, backend)
    with torch.no_grad():
        logits = _RUNS[backend](mllm, inputs, plan)
    return logits, plan.results()


_RUNS = {"hooks": hooks_backend.run, "nnsight": nnsight_backend.run, "transformer_lens": tl_backend.run}


class eager_attention:
    """Eager attention while inside (the only HF kernel that computes the
    ``scores`` and ``pattern`` sites)."""

    def __init__(self, mllm):
        self.model = mllm.model

    def __enter__(self):
        self.before = getattr(self.model.config, "_attn_implementation", None) or "sdpa"
        if self.before != "eager":
            self.model.set_attn_implementation("eager")
        return self

    def __exit__(self, *exc):
        if self.before != "eager":
            self.model.set_attn_implementation(self.before)
        return False


def unembed(mllm, h: torch.Tensor) -> torch.Tensor:
    """The model's own final norm and lm_head on residuals ``h`` (each on its device)."""
    normed = mllm.final_norm(h.to(next(mllm.final_norm.parameters()).device, mllm.dtype))
    return mllm.lm_head(normed.to(mllm.lm_head.weight.device))
