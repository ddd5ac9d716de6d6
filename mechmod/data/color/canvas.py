"""The index canvas both distractor policies place objects on: which object
owns each pixel, and how many of each object's pixels stay visible."""

from __future__ import annotations

import numpy as np

MIN_VISIBLE = 0.45  # share of the target's pixels that stays visible
GAP = 2  # px between the target and a non-overlapping distractor (dv >= 5)
GAP_LARGE = 12  # px between any two objects on the 800x600 tiers


class Canvas:
    """``owner`` holds which object is visible at each pixel (-1 =
    background, i = the i-th object drawn); ``target`` is the drawing index
    of the target (0 under the paper's policy, where it is drawn first)."""

    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.owner = np.full((h, w), -1, dtype=np.int16)
        self.objects: list[tuple[str, str, int, int, np.ndarray]] = []  # shape, color, x, y, mask
        self.area: list[int] = []
        self.visible: list[int] = []
        self.target = 0

    def add(self, shape: str, color: str, x: int, y: int, m: np.ndarray) -> None:
        idx = len(self.objects)
        h, w = m.shape
        region = self.owner[y : y + h, x : x + w]
        covered = region[m]
        if covered.size:
            counts = np.bincount(covered[covered >= 0], minlength=idx)
            for j in np.nonzero(counts)[0]:
                self.visible[j] -= int(counts[j])
        region[m] = idx
        self.objects.append((shape, color, x, y, m))
        self.area.append(int(m.sum()))
        self.visible.append(int(m.sum()))

    def coverage(self, x: int, y: int, m: np.ndarray) -> np.ndarray:
        """How many visible pixels of each existing object ``m`` at (x, y) would cover."""
        h, w = m.shape
        covered = self.owner[y : y + h, x : x + w][m]
        return np.bincount(covered[covered >= 0], minlength=len(self.objects))

    def keeps_visible(self, cov: np.ndarray, share: float) -> bool:
        """Whether every object keeps ``share`` of its area visible after a
        new object covers ``cov`` (from :meth:`coverage`) of its pixels."""
        if not cov.size:
            return True
        return bool((np.asarray(self.visible) - cov >= share * np.asarray(self.area)).all())


def overlap(tx: int, ty: int, tm: np.ndarray, x: int, y: int, m: np.ndarray) -> int:
    """Pixels shared by two placed masks."""
    x0, y0 = max(tx, x), max(ty, y)
    x1, y1 = min(tx + tm.shape[1], x + m.shape[1]), min(ty + tm.shape[0], y + m.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    a = tm[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
    b = m[y0 - y : y1 - y, x0 - x : x1 - x]
    return int((a & b).sum())
