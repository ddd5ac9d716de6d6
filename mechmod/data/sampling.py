"""Balanced, seeded, prefix-stable sequences the generators build their
groups from: ordered (visual, textual) answer pairs and cycled attributes.
The random stream of block ``b`` is ``default_rng([seed, salt, b])``, so the
first k items never depend on how many are asked for."""

from __future__ import annotations

import numpy as np


def balanced_pairs(labels: tuple[str, ...], n: int, seed: int, salt: int) -> list[tuple[str, str]]:
    """``n`` ordered pairs of different labels: every block of K(K-1) pairs
    (K labels) holds each ordered pair once, in K-1 rounds of K pairs
    ``(c_i, c_{i+k})`` that use each label once on each side."""
    K = len(labels)
    pairs: list[tuple[str, str]] = []
    block = 0
    while len(pairs) < n:
        rng = np.random.default_rng([seed, salt, block])
        perm = rng.permutation(K)  # one cyclic order per block: offsets 1..K-1 give every pair once
        for k in rng.permutation(np.arange(1, K)):
            pairs += [(labels[perm[i]], labels[perm[(i + int(k)) % K]]) for i in rng.permutation(K)]
        block += 1
    return pairs[:n]


def cycled(items: tuple[str, ...], n: int, seed: int, salt: int) -> list[str]:
    """``n`` items in shuffled rounds of all of them."""
    out: list[str] = []
    block = 0
    while len(out) < n:
        rng = np.random.default_rng([seed, salt, block])
        out += [items[i] for i in rng.permutation(len(items))]
        block += 1
    return out[:n]
