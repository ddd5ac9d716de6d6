"""How faithful a lens is: ``KL(final || lens_l)`` per layer.

Fidelity of a lens at layer ``l`` is the mean ``KL(final || lens_l)`` in nats
(natural log, float32): how much information about the model's final
next-token distribution the decoded layer loses. Everything here works on
tensors of answer-position residuals (``resid [N, L+1, d]``, before the final
norm) and the model's final logits (``[N, V]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mechmod.errors import MechmodError
from mechmod.lenses.logit_lens import Lens, LogitLens
from mechmod.lenses.tuned_lens import TunedLens


def kl_from_logits(target_logits: torch.Tensor, lens_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(lens))`` over the last axis, in nats,
    computed in float32; shapes broadcast (e.g. target ``[B, 1, V]`` against
    lens ``[B, L, V]``)."""
    logp = torch.log_softmax(target_logits.to(torch.float32), dim=-1)
    logq = torch.log_softmax(lens_logits.to(torch.float32), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


@torch.no_grad()
def lens_kl_by_layer(
    lens: Lens, resid: torch.Tensor, final_logits: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """Mean ``KL(final || lens_l)`` (nats) for every residual index ``l``:
    ``resid [N, L+1, d]``, ``final_logits [N, V]`` -> ``np.ndarray [L+1]``
    (float64 holding float32-computed values)."""
    check_pair(resid, final_logits, lens)
    n = resid.shape[0]
    total = torch.zeros(resid.shape[1], dtype=torch.float64)
    device = lens.unembed.lm_head.weight.device
    for start in range(0, n, batch_size):
        r = resid[start : start + batch_size].to(device)
        f = final_logits[start : start + batch_size].to(device)
        kl = kl_from_logits(f[:, None, :], lens.forward_all(r))  # [b, L+1]
        total += kl.sum(dim=0).to("cpu", torch.float64)
    return (total / n).numpy()


def check_pair(resid: torch.Tensor, final_logits: torch.Tensor, lens: Lens | None = None) -> None:
    """Refuse residuals ``[N, L+1, d]`` and final logits ``[N, V]`` that do not
    belong together (or, given ``lens``, not to its unembedding)."""
    if not isinstance(resid, torch.Tensor) or resid.ndim != 3:
        raise MechmodError(
            f"residuals must be a tensor [examples, layers+1, d_model], got "
            f"{tuple(resid.shape) if isinstance(resid, torch.Tensor) else type(resid).__name__}"
        )
    if not isinstance(final_logits, torch.Tensor) or final_logits.ndim != 2:
        raise MechmodError("final logits must be a tensor [examples, vocab]")
    if resid.shape[0] != final_logits.shape[0]:
        raise MechmodError(
            f"{resid.shape[0]} residual rows but {final_logits.shape[0]} final-logit rows"
        )
    if resid.shape[0] == 0:
        raise MechmodError("no examples: residuals and logits are empty")
    if lens is not None and final_logits.shape[1] != lens.unembed.vocab_size:
        raise MechmodError(
            f"final logits have vocabulary {final_logits.shape[1]}, the lens's unembedding "
            f"{lens.unembed.vocab_size}: they come from different models"
        )


@dataclass(frozen=True)
class LensFidelity:
    """Per-layer held-out fidelity of the logit lens and the tuned lens.

    Attributes:
        kl_logit: ``[L+1]`` mean KL(final || logit lens) per residual index
            (entry ``i`` is layer ``i - 1``: -1 the embedding output), nats.
        kl_tuned: ``[L+1]`` the same for the tuned lens.
        n_examples: number of prompts the means are over.
        split: which examples (e.g. ``heldout``).
    """

    kl_logit: np.ndarray
    kl_tuned: np.ndarray
    n_examples: int
    split: str = "heldout"

    def __post_init__(self) -> None:
        if self.kl_logit.ndim != 1 or self.kl_logit.shape != self.kl_tuned.shape:
            raise ValueError(
                f"kl_logit and kl_tuned must be 1-D of equal length [L+1], got "
                f"{self.kl_logit.shape} and {self.kl_tuned.shape}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "n_examples": int(self.n_examples),
            "layers": list(range(-1, len(self.kl_logit) - 1)),
            "kl_logit": [float(x) for x in self.kl_logit],
            "kl_tuned": [float(x) for x in self.kl_tuned],
            "units": "nats, mean KL(final || lens) per layer (-1 = the embedding output, 0..L-1 = decoder layers)",
        }

    def table(self) -> str:
        """Plain-text per-layer table (layer -1: the embedding output)."""
        lines = [f"{'layer':>5}  {'logit lens KL':>13}  {'tuned lens KL':>13}"]
        for i, (a, b) in enumerate(zip(self.kl_logit, self.kl_tuned)):
            lines.append(f"{i - 1:>5}  {a:>13.4f}  {b:>13.4f}")
        return "\n".join(lines)


def evaluate_lenses(tuned: TunedLens, resid: torch.Tensor, final_logits: torch.Tensor, split: str = "heldout") -> LensFidelity:
    """Per-layer KL of the logit lens (same unembedding) and of ``tuned``."""
    logit = LogitLens(tuned.unembed, tuned.n_layers)
    return LensFidelity(
        kl_logit=lens_kl_by_layer(logit, resid, final_logits),
        kl_tuned=lens_kl_by_layer(tuned, resid, final_logits),
        n_examples=int(resid.shape[0]),
        split=split,
    )
