"""Uncertainty of an answer distribution, and relative uncertainty.

Entropies use the natural log and are always computed in float32, whatever
the model's dtype (arXiv 2511.02243, Sec. 3). Every measure is oriented so
that larger means more uncertain, so dHrel can be computed from any of them.

Cheap indices read one distribution: the next-token distribution over the
full vocabulary (entropy, 1 - max probability, Renyi-2 entropy) or the
label probabilities (label entropy, 1 - margin). The sampled-answer
entropy writes k answers per prompt at temperature 1
(:func:`sample_labels`) and takes the Miller-Madow entropy of their label
frequencies (:func:`sampled_entropy`).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch

from mechmod import names
from mechmod.answers import MAX_NEW_TOKENS, OTHER, LabelSet
from mechmod.decoding import Continuation


def entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the full vocabulary, in float32.
    -inf logits (masked tokens) contribute nothing."""
    logp = torch.log_softmax(logits.float(), dim=dim)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(dim=dim)


def max_prob_uncertainty(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """1 - the largest softmax probability over the full vocabulary, in
    float32: 0 for a one-hot distribution, 1 - 1/n for a uniform one over n."""
    return 1.0 - torch.softmax(logits.float(), dim=dim).amax(dim=dim)


def renyi2_entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Renyi entropy of order 2 (collision entropy) -log sum p^2 (nats) of
    softmax(logits) over the full vocabulary, in float32: log n for a
    uniform distribution over n, 0 for a one-hot one."""
    return -torch.logsumexp(2.0 * torch.log_softmax(logits.float(), dim=dim), dim=dim)


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


# ---------------------------------------------------------- sampled answers
def plugin_entropy(counts) -> np.ndarray:
    """Entropy (nats) of the frequencies of category ``counts`` [..., m]."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("plugin_entropy: every row needs at least one count")
    p = c / total
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def miller_madow_entropy(counts) -> np.ndarray:
    """Miller-Madow entropy (nats) of category ``counts`` [..., m]: the
    plug-in entropy + (m_seen - 1) / (2k), m_seen the categories with a
    non-zero count and k the number of draws (less biased than the plug-in,
    which underestimates from few draws)."""
    c = np.asarray(counts, dtype=np.float64)
    seen = (c > 0).sum(axis=-1)
    return plugin_entropy(c) + (seen - 1) / (2.0 * c.sum(axis=-1))


def prompt_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator seeded from the run ``seed`` and a prompt's ``key``:
    a prompt's samples do not depend on its batch, chunk or process."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _sample(logits: torch.Tensor, generator: torch.Generator, n: int) -> torch.Tensor:
    """``n`` tokens drawn from softmax(logits) [V] at temperature 1 (no top-k,
    top-p or repetition penalty)."""
    return torch.multinomial(torch.softmax(logits.float().cpu(), dim=-1), n, replacement=True, generator=generator)


def sample_labels(first_logits: torch.Tensor, continuation: Continuation | None, labels: LabelSet, k: int,
                  generators: Sequence[torch.Generator], max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[str]]:
    """``k`` answers per row of ``first_logits`` [N, V] (the prompt's
    next-token logits), every token sampled at temperature 1 (row i from
    ``generators[i]``) until the first word decides a label or 'other'
    (:meth:`LabelSet.label_of_tokens`), at most ``max_new_tokens`` after the
    first. ``continuation`` (:mod:`mechmod.decoding`) gives the logits after
    the tokens written; it is called with each prompt row at most once per
    call, so any continuation works. Returns [N][k] labels or 'other'."""
    n = first_logits.shape[0]
    if len(generators) != n:
        raise ValueError(f"sample_labels: {len(generators)} generators for {n} prompts")
    out: list[list[str | None]] = [[None] * k for _ in range(n)]
    written: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        first = _sample(first_logits[i], generators[i], k).tolist()
        for j, label in enumerate(labels.labels_of(torch.tensor(first))):
            out[i][j] = label if label != OTHER else labels.label_of_tokens(first[j : j + 1], final=False)
            if out[i][j] is None:
                written[(i, j)] = first[j : j + 1]
    going = sorted(written)
    for _ in range(max_new_tokens if continuation is not None else 0):
        if not going:
            break
        rounds: dict[int, list[tuple[int, int]]] = {}  # the r-th going draw of each prompt: distinct rows per call
        seen: dict[int, int] = {}
        for draw in going:
            r = seen[draw[0]] = seen.get(draw[0], -1) + 1
            rounds.setdefault(r, []).append(draw)
        nxt: dict[tuple[int, int], int] = {}
        for draws in rounds.values():
            logits = continuation(torch.tensor([i for i, _ in draws]), torch.tensor([written[d] for d in draws]))
            for d, row in zip(draws, logits):
                nxt[d] = row
        still = []
        for i, j in going:  # sampled in draw order: reproducible whatever the rounds
            written[(i, j)].append(int(_sample(nxt[(i, j)], generators[i], 1)))
            out[i][j] = labels.label_of_tokens(written[(i, j)], final=False)
            if out[i][j] is None:
                still.append((i, j))
        going = still
    for i, j in going:
        out[i][j] = labels.label_of_tokens(written[(i, j)], final=True)
    return [[str(x) for x in row] for row in out]


def label_counts(answers: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """[N, n_labels + 1] counts of each label in each row of ``answers``,
    'other' (anything else) as its own last category."""
    index = {lab: c for c, lab in enumerate(labels)}
    counts = np.zeros((len(answers), len(labels) + 1), dtype=np.int64)
    for i, row in enumerate(answers):
        for a in row:
            counts[i, index.get(a, len(labels))] += 1
    return counts


def sampled_entropy(answers: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """Miller-Madow entropy (nats, float32) of each row's sampled answer
    labels (:func:`sample_labels`), 'other' counted as its own category."""
    return miller_madow_entropy(label_counts(answers, labels)).astype(np.float32)


# name -> function; the full-vocabulary measures take logits, the label measures label probabilities.
UNCERTAINTY_MEASURES: dict[str, Callable] = dict(zip(
    names.UNCERTAINTY_MEASURES, (entropy, label_entropy, margin_uncertainty, max_prob_uncertainty, renyi2_entropy),
    strict=True))
#: the measures of UNCERTAINTY_MEASURES that read the full vocabulary's logits
LOGIT_MEASURES = ("entropy", "max_prob", "renyi2")
