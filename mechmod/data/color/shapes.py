"""Rasterised shapes of the colour set (no antialiasing: every mask pixel is
in or out), their boxes for a size or an area, and the mask morphology the
renderer places objects with."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_dilation, binary_erosion

_ASPECT = {  # height / width of the bounding box
    "circle": 1.0,
    "square": 1.0,
    "triangle": math.sqrt(3) / 2,
    "rectangle": 0.5,
    "pentagon": (1 + math.cos(math.pi / 5)) / (2 * math.sin(2 * math.pi / 5)),
    "hexagon": math.sqrt(3) / 2,
}
_FILL = {  # mask area / bounding-box area (continuous shape)
    "circle": math.pi / 4,
    "square": 1.0,
    "triangle": 0.5,
    "rectangle": 1.0,
    "pentagon": (5 / 2 * math.sin(2 * math.pi / 5)) / ((1 + math.cos(math.pi / 5)) * 2 * math.sin(2 * math.pi / 5)),
    "hexagon": 0.75,
}


def _polygon(shape: str, w: int, h: int) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(w / 2, 0), (w - 1, h - 1), (0, h - 1)]
    if shape == "pentagon":
        r = (w - 1) / (2 * math.sin(2 * math.pi / 5))
        cx = (w - 1) / 2
        return [(cx + r * math.sin(2 * math.pi * i / 5), r - r * math.cos(2 * math.pi * i / 5)) for i in range(5)]
    if shape == "hexagon":
        q = (w - 1) / 4
        return [(q, 0), (3 * q, 0), (w - 1, (h - 1) / 2), (3 * q, h - 1), (q, h - 1), (0, (h - 1) / 2)]
    raise ValueError(shape)


@functools.lru_cache(maxsize=8192)
def shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """Boolean mask (h, w) of ``shape`` filling a w x h box (no antialiasing).
    Cached; the returned array is read-only."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse((0, 0, w - 1, h - 1), fill=1)
    elif shape in ("square", "rectangle"):
        d.rectangle((0, 0, w - 1, h - 1), fill=1)
    else:
        d.polygon(_polygon(shape, w, h), fill=1)
    m = np.array(img, dtype=bool)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=4096)
def dilated_mask(shape: str, w: int, h: int, r: int) -> np.ndarray:
    """:func:`shape_mask` padded by ``r`` px and dilated by ``r`` (cached, read-only)."""
    m = dilate(np.pad(shape_mask(shape, w, h), r), r)
    m.setflags(write=False)
    return m


def box_for(shape: str, side: float, rng: np.random.Generator) -> tuple[int, int]:
    """(w, h) with the larger side = ``side``; rectangles lie or stand at random."""
    a = _ASPECT[shape]
    w, h = side, side * a
    if shape == "rectangle" and rng.random() < 0.5:
        w, h = h, w
    return max(3, int(round(w))), max(3, int(round(h)))


def box_for_area(shape: str, area: float, rng: np.random.Generator) -> tuple[int, int]:
    """(w, h) whose continuous shape covers about ``area`` px."""
    side = math.sqrt(area / (_FILL[shape] * _ASPECT[shape]))
    return box_for(shape, side, rng)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` grown by ``r`` px."""
    if r <= 0:
        return mask
    return binary_dilation(mask, iterations=r)


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` shrunk by ``r`` px (pixels outside count as background)."""
    return binary_erosion(mask, iterations=r, border_value=0)


def stamp(arr: np.ndarray, x: int, y: int, dm: np.ndarray, r: int) -> None:
    """OR a mask already dilated by ``r`` px (so padded by r), whose undilated
    origin is (x, y), into ``arr`` (clipped)."""
    H, W = arr.shape
    x0, y0 = x - r, y - r
    cx0, cy0 = max(0, -x0), max(0, -y0)
    cx1, cy1 = min(dm.shape[1], W - x0), min(dm.shape[0], H - y0)
    arr[y0 + cy0 : y0 + cy1, x0 + cx0 : x0 + cx1] |= dm[cy0:cy1, cx0:cx1]
