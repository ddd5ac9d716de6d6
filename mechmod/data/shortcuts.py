"""Shape-blind shortcuts, measured on pixels.

A colour-recognition image should only be answerable by binding the asked
shape to its colour. These functions measure how often rules that never look
at shapes answer anyway, from the rendered pixels alone (the generators draw
flat palette colours on white, so a pixel's colour is exact):

* ``largest``: the colour of the largest connected component;
* ``fewest_components``: the present colour with the fewest connected
  components (the paper's colour rule keeps distractors off both answer
  colours, so the target's colour is often a colour drawn once);
* ``most_concentrated``: the colour whose largest component holds the largest
  share of its pixels;
* a learned shape-blind classifier (:class:`ShapeBlindClassifier`): a
  conditional logit over each present colour's statistics (pixel share,
  component count, largest component, concentration).

A rule that ties between k colours is credited 1/k when the answer is among
them (the expected accuracy of breaking the tie at random).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

RULES = ("largest", "fewest_components", "most_concentrated")


@dataclass(frozen=True)
class ColorStats:
    """Per-colour statistics of one image (pixels of that exact colour)."""

    pixels: int
    share: float  # of all non-background pixels
    n_components: int  # 4-connected
    largest: int  # pixels in the largest component
    concentration: float  # largest / pixels

    def features(self) -> np.ndarray:
        """What the shape-blind classifier sees (log-scaled sizes)."""
        return np.array([self.share, np.log1p(self.n_components), np.log1p(self.largest), self.concentration])


def color_stats(pixels: np.ndarray, palette: Mapping[str, tuple[int, int, int]]) -> dict[str, ColorStats]:
    """Statistics of every palette colour present in ``pixels`` [H, W, 3] uint8."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"color_stats: expected an RGB array [H, W, 3], got {pixels.shape}")
    masks = {name: np.all(pixels == np.asarray(rgb, dtype=pixels.dtype), axis=-1) for name, rgb in palette.items()}
    total = max(1, int(sum(int(m.sum()) for m in masks.values())))
    out: dict[str, ColorStats] = {}
    for name, mask in masks.items():
        n = int(mask.sum())
        if n == 0:
            continue
        labels, k = ndimage.label(mask)
        sizes = np.bincount(labels.ravel())[1:]
        out[name] = ColorStats(n, n / total, int(k), int(sizes.max()), float(sizes.max()) / n)
    return out


def _credit(scores: Mapping[str, float], answer: str, best=max) -> float:
    """1/k when ``answer`` is among the k colours with the best score."""
    if not scores:
        return 0.0
    top = best(scores.values())
    winners = [c for c, s in scores.items() if s == top]
    return 1.0 / len(winners) if answer in winners else 0.0


def rule_credits(stats: Mapping[str, ColorStats], answer: str) -> dict[str, float]:
    """Each rule's credit (0..1) on one image whose correct colour is ``answer``."""
    return {
        "largest": _credit({c: s.largest for c, s in stats.items()}, answer),
        "fewest_components": _credit({c: s.n_components for c, s in stats.items()}, answer, best=min),
        "most_concentrated": _credit({c: s.concentration for c, s in stats.items()}, answer),
    }


def shortcut_rates(images: Iterable[np.ndarray], answers: Sequence[str],
                   palette: Mapping[str, tuple[int, int, int]]) -> dict[str, float]:
    """Mean credit of each rule over images with their correct colours."""
    credits = [rule_credits(color_stats(img, palette), a) for img, a in zip(images, answers, strict=True)]
    if not credits:
        raise ValueError("shortcut_rates: no images")
    return {rule: float(np.mean([c[rule] for c in credits])) for rule in RULES}


class ShapeBlindClassifier:
    """Conditional logit over the colours present in an image: score(colour) =
    w . features(colour); predicted colour = argmax. Fitted by Newton's method
    with a small ridge penalty, so the fit is deterministic."""

    def __init__(self, ridge: float = 1e-3, iterations: int = 50):
        self.ridge = ridge
        self.iterations = iterations
        self.w: np.ndarray | None = None

    @staticmethod
    def _design(stats: Mapping[str, ColorStats]) -> tuple[list[str], np.ndarray]:
        names = list(stats)
        return names, np.stack([stats[c].features() for c in names]) if names else np.zeros((0, 4))

    def fit(self, stats_list: Sequence[Mapping[str, ColorStats]], answers: Sequence[str]) -> "ShapeBlindClassifier":
        data = []
        for stats, a in zip(stats_list, answers, strict=True):
            names, X = self._design(stats)
            if a in names and len(names) > 1:
                data.append((X, names.index(a)))
        if not data:
            raise ValueError("ShapeBlindClassifier.fit: no image with the answer colour and another colour present")
        w = np.zeros(data[0][0].shape[1])
        for _ in range(self.iterations):
            grad = -self.ridge * w
            hess = -self.ridge * np.eye(len(w))
            for X, y in data:
                s = X @ w
                p = np.exp(s - s.max())
                p /= p.sum()
                mean = p @ X
                grad += X[y] - mean
                hess -= (X * p[:, None]).T @ X - np.outer(mean, mean)
            step = np.linalg.solve(hess, grad)
            w = w - step
            if np.abs(step).max() < 1e-8:
                break
        self.w = w
        return self

    def credit(self, stats: Mapping[str, ColorStats], answer: str) -> float:
        if self.w is None:
            raise ValueError("ShapeBlindClassifier: call fit() first")
        names, X = self._design(stats)
        return _credit(dict(zip(names, (X @ self.w).tolist())), answer)

    def accuracy(self, stats_list: Sequence[Mapping[str, ColorStats]], answers: Sequence[str]) -> float:
        return float(np.mean([self.credit(s, a) for s, a in zip(stats_list, answers, strict=True)]))
