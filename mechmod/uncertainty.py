"""Uncertainty of an answer distribution, and relative uncertainty.

Entropies use the natural log and are always computed in float32, whatever
the model's dtype (paper-notes §2). Every measure is oriented so that larger
means more uncertain, so dHrel can be computed from any of them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mechmod import names


def entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the full vocabulary, in float32.
    -inf logits (masked tokens) contribute nothing."""
    logp = torch.log_softmax(logits.float(), dim=dim)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(dim=dim)


def _renormalise(label_probs) -> np.ndarray:
    p = np.asarray(label_probs, dtype=np.float64)
    total = p.sum(axis=-1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[-1]), where=total > 0)


def label_entropy(label_probs) -> np.ndarray:
    """Entropy (nats) of the distribution over the candidate labels,
    renormalised to sum to one. ``label_probs``: [..., n_labels]."""
    p = _renormalise(label_probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return (-terms.sum(axis=-1)).astype(np.float32)


def label_margin(label_probs) -> np.ndarray:
    """Top-1 minus top-2 label probability (renormalised over the labels)."""
    p = np.sort(_renormalise(label_probs), axis=-1)
    return (p[..., -1] - p[..., -2]).astype(np.float32)


def margin_uncertainty(label_probs) -> np.ndarray:
    """1 - label margin: 0 when one label takes all the mass, 1 when the top
    two labels tie. Oriented like an entropy (larger = more uncertain)."""
    return (1.0 - label_margin(label_probs)).astype(np.float32)


def relative_uncertainty(h_t, h_v, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """dHrel = 2 (H(t) - H(v)) / (H(t) + H(v)) in [-2, 2], and a flag for the
    0/0 case (both uncertainties below ``eps`` in sum), where dHrel is 0."""
    h_t = np.asarray(h_t, dtype=np.float64)
    h_v = np.asarray(h_v, dtype=np.float64)
    total = h_t + h_v
    degenerate = total < eps
    safe = np.where(degenerate, 1.0, total)
    dh = np.where(degenerate, 0.0, 2.0 * (h_t - h_v) / safe)
    return np.clip(dh, -2.0, 2.0), degenerate


# name -> function; "entropy" takes logits, the others label probabilities.
UNCERTAINTY_MEASURES: dict[str, Callable] = dict(zip(names.UNCERTAINTY_MEASURES, (entropy, label_entropy, margin_uncertainty),
                                                     strict=True))
