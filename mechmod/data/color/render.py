"""Drawing the colour set's images: the visual tier table and
:func:`render_image`.

Drawing: white canvas, flat colours, no antialiasing (every pixel is white or
exactly one of ``COLORS``), so colour sets and areas can be measured on the
pixels. Distractors are drawn on top of the target; their shapes are never
the target shape and their colours never the visual or the textual answer.
Occlusion: a distractor *overlaps* the target when its mask and the target's
mask share at least one pixel; overlapping distractors cover part of the
target (at least :data:`MIN_OVERLAP` of the distractor's own area lies on the
target), never more than ``1 - MIN_VISIBLE`` of it in total. Non-overlapping
distractors keep a gap of at least :data:`GAP` pixels to the target. Every
distractor keeps at least :data:`MIN_DISTRACTOR_VISIBLE` of its pixels visible.
On the 800x600 tiers (dv 0-4) no two objects touch.

Distractor policies (``render_image(..., distractors=...)``):

* ``"paper"`` (the default, every study dataset): the rule above. On the
  crowded tiers (dv 9-13) :data:`N_LARGE_DISTRACTORS` of the non-overlapping
  distractors take an area from 0.4 times the bottom of the target's range
  to its top (a design choice, not in
  the paper), drawn before the small ones: without them the target is at
  least 2.7 times the area of every distractor and "the colour of the
  largest object" answers the hardest tiers. The paper's colour rule keeps
  distractors off both answer colours, so the target's colour is one drawn
  once: "the colour with the fewest components" still answers most crowded
  images. That shortcut is inherent to the rule; both are measured on pixels
  by :func:`mechmod.data.shortcuts.shortcut_rates`.
* ``"binding"`` (the model organism's training images): every object,
  the target included, drawn from one distribution, so that only binding
  the asked shape to its colour answers; see :mod:`.binding`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from mechmod.data.color.binding import place_binding
from mechmod.data.color.canvas import GAP, GAP_LARGE, MIN_VISIBLE, Canvas, overlap
from mechmod.data.color.shapes import box_for, box_for_area, dilated_mask, erode, shape_mask, stamp
from mechmod.data.color.vocabulary import COLORS, TARGET_SHAPES, WHITE, ColorGroup
from mechmod.errors import MechmodError
from mechmod.names import DISTRACTOR_POLICIES

MIN_OVERLAP = 0.10  # share of an overlapping distractor's area that lies on the target
MIN_DISTRACTOR_VISIBLE = 0.30  # share of each distractor that stays visible
N_LARGE_DISTRACTORS = 2  # distractors of the target's size range on the crowded tiers (dv 9-13, "paper")
LARGE_MIN = 0.4  # their area: uniform from LARGE_MIN times the bottom of the target range to its top


@dataclass(frozen=True)
class Tier:
    """One row of the visual tier table.

    ``target_px``: (lo, hi) of the target's larger bounding-box side in px
    (dv 0-4), else None. ``target_frac``: (lo, hi) of the target's mask area
    as a share of the image (dv 5-13), else None. ``occlusion``: share of the
    distractors that overlap the target. ``distractor_px``: (lo, hi) of a
    distractor's larger side in px (a design choice, not in the paper);
    ``n_large``: distractors whose area is drawn from ``target_frac``
    instead (also a design choice)."""

    dv: int
    size: tuple[int, int]  # (width, height)
    target_px: tuple[int, int] | None
    target_frac: tuple[float, float] | None
    n_distractors: int
    occlusion: float
    distractor_px: tuple[int, int]
    n_large: int = 0

    @property
    def n_overlapping(self) -> int:
        return int(round(self.occlusion * self.n_distractors))


_BIG = (800, 600)
_SMALL = (224, 224)
TIERS: tuple[Tier, ...] = (
    Tier(0, _BIG, (80, 200), None, 0, 0.0, (80, 200)),
    Tier(1, _BIG, (80, 200), None, 1, 0.0, (80, 200)),
    Tier(2, _BIG, (80, 200), None, 2, 0.0, (80, 200)),
    Tier(3, _BIG, (80, 200), None, 3, 0.0, (80, 200)),
    Tier(4, _BIG, (80, 200), None, 4, 0.0, (80, 200)),
    Tier(5, _SMALL, None, (0.20, 0.40), 7, 0.5, (30, 56)),
    Tier(6, _SMALL, None, (0.20, 0.40), 10, 0.8, (28, 50)),
    Tier(7, _SMALL, None, (0.05, 0.10), 7, 0.5, (24, 44)),
    Tier(8, _SMALL, None, (0.05, 0.10), 11, 0.8, (20, 40)),
    Tier(9, _SMALL, None, (0.04, 0.06), 20, 0.3, (14, 28), N_LARGE_DISTRACTORS),
    Tier(10, _SMALL, None, (0.04, 0.06), 30, 0.6, (12, 24), N_LARGE_DISTRACTORS),
    Tier(11, _SMALL, None, (0.04, 0.06), 40, 0.5, (12, 22), N_LARGE_DISTRACTORS),
    Tier(12, _SMALL, None, (0.04, 0.06), 55, 0.6, (10, 20), N_LARGE_DISTRACTORS),
    Tier(13, _SMALL, None, (0.04, 0.06), 70, 0.7, (10, 18), N_LARGE_DISTRACTORS),
)
N_DV = len(TIERS)


@dataclass(frozen=True)
class DistractorInfo:
    shape: str
    color: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area_px: int
    overlaps_target: bool
    visible_px: int


@dataclass(frozen=True)
class RenderInfo:
    """What was drawn. ``target_area_px``: the target's full mask area;
    ``visible_px``: its pixels left uncovered (under the paper's policy,
    exactly the pixels of ``vision_color`` in the image); ``colors_used``:
    colour names present in the image; ``target_layer``: the target's place
    in the drawing order (0 under the paper's policy: drawn first). With
    ``return_masks=True``, ``target_mask`` and ``distractor_masks`` hold
    full-size boolean masks, the distractors' in drawing order."""

    dv: int
    size: tuple[int, int]
    target_shape: str
    target_color: str
    target_bbox: tuple[int, int, int, int]
    target_area_px: int
    visible_px: int
    n_distractors: int
    n_overlapping: int
    distractors: tuple[DistractorInfo, ...]
    colors_used: tuple[str, ...]
    target_layer: int = 0
    target_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    distractor_masks: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def visible_fraction(self) -> float:
        return self.visible_px / self.target_area_px

    @property
    def target_area_frac(self) -> float:
        return self.target_area_px / (self.size[0] * self.size[1])


def render_image(group: ColorGroup, dv: int, rng: np.random.Generator,
                 return_masks: bool = False, distractors: str = "paper") -> tuple[Image.Image, RenderInfo]:
    """Draw ``group``'s target at visual tier ``dv`` with the tier's
    distractors under the policy ``distractors`` (see the module docstring).
    Uses only ``rng`` for randomness. Returns an RGB image and its
    :class:`RenderInfo`. Works when ``vision_color == text_color`` too
    (consistent pairs): distractors then avoid that one colour (``"paper"``:
    the 5 other colours)."""
    if not isinstance(dv, (int, np.integer)) or not 0 <= dv < N_DV:
        raise MechmodError(f"invalid visual tier dv={dv!r}; tiers are 0..{N_DV - 1}")
    if distractors not in DISTRACTOR_POLICIES:
        raise MechmodError(f"unknown distractor policy {distractors!r}; choose from {', '.join(DISTRACTOR_POLICIES)}")
    tier = TIERS[int(dv)]
    W, H = tier.size
    for name in (group.vision_color, group.text_color):
        if name not in COLORS:
            raise MechmodError(f"unknown color {name!r}; choose from {', '.join(COLORS)}")
    if group.target_shape not in TARGET_SHAPES:
        raise MechmodError(f"unknown target shape {group.target_shape!r}; choose from {', '.join(TARGET_SHAPES)}")

    place = place_binding if distractors == "binding" else _try_render
    for _attempt in range(50):
        out = place(group, tier, rng)
        if out is not None:
            break
    else:  # pragma: no cover - the tier parameters leave ample room
        raise RuntimeError(f"could not place distractors for {group.group_id} at dv={dv}")
    canvas = out

    palette = np.array([COLORS[o[1]] for o in canvas.objects] + [WHITE], dtype=np.uint8)
    pix = palette[canvas.owner]  # owner -1 picks the last entry (white)
    img = Image.fromarray(pix, "RGB")

    t = canvas.target
    t_shape, t_color, tx, ty, tm = canvas.objects[t]
    th, tw = tm.shape
    dinfo = []
    for i, (s, c, x, y, m) in enumerate(canvas.objects):
        if i != t:
            h, w = m.shape
            ov = overlap(tx, ty, tm, x, y, m)
            dinfo.append(DistractorInfo(s, c, (x, y, x + w, y + h), canvas.area[i], ov > 0, canvas.visible[i]))
    used = sorted({canvas.objects[i][1] for i in range(len(canvas.objects)) if canvas.visible[i] > 0},
                  key=list(COLORS).index)
    target_full = masks = None
    if return_masks:
        def full(x, y, m):
            a = np.zeros((H, W), dtype=bool)
            a[y : y + m.shape[0], x : x + m.shape[1]] = m
            return a

        target_full = full(tx, ty, tm)
        masks = tuple(full(x, y, m) for i, (_, _, x, y, m) in enumerate(canvas.objects) if i != t)
    info = RenderInfo(dv=int(dv), size=(W, H), target_shape=t_shape, target_color=t_color,
                      target_bbox=(tx, ty, tx + tw, ty + th), target_area_px=canvas.area[t],
                      visible_px=canvas.visible[t], target_layer=t, n_distractors=len(dinfo),
                      n_overlapping=sum(d.overlaps_target for d in dinfo), distractors=tuple(dinfo),
                      colors_used=tuple(used), target_mask=target_full, distractor_masks=masks)
    return img, info


def _target_mask(group: ColorGroup, tier: Tier, rng: np.random.Generator) -> np.ndarray:
    W, H = tier.size
    shape = group.target_shape
    if tier.target_px is not None:
        lo, hi = tier.target_px
        side = int(rng.integers(lo, hi + 1))
        w, h = box_for(shape, side, rng)
        return shape_mask(shape, w, h)
    lo, hi = tier.target_frac
    total = W * H
    # aim inside the range with a small margin, then correct the raster area
    frac = rng.uniform(lo + 0.04 * (hi - lo), hi - 0.04 * (hi - lo))
    want = frac * total
    w, h = box_for_area(shape, want, rng)
    for _ in range(6):
        w, h = min(w, W), min(h, H)
        m = shape_mask(shape, w, h)
        got = int(m.sum())
        if lo * total <= got <= hi * total:
            return m
        s = math.sqrt(want / max(got, 1))
        w, h = max(3, int(round(w * s))), max(3, int(round(h * s)))
    raise RuntimeError(f"cannot size a {shape} to {lo:.0%}-{hi:.0%} of {W}x{H}")  # pragma: no cover


def _try_render(group: ColorGroup, tier: Tier, rng: np.random.Generator) -> Canvas | None:
    """One scene under the paper's policy, or None when crowded (the caller
    draws again): the target first, then the overlapping distractors, the
    large ones, and the rest."""
    W, H = tier.size
    canvas = Canvas(W, H)
    tm = _target_mask(group, tier, rng)
    th, tw = tm.shape
    tx = int(rng.integers(0, W - tw + 1))
    ty = int(rng.integers(0, H - th + 1))
    canvas.add(group.target_shape, group.vision_color, tx, ty, tm)
    big = tier.target_px is not None
    # forbidden zone for non-overlapping distractors: the target dilated by
    # the gap; on the 800x600 tiers every placed object joins the zone
    gap = GAP_LARGE if big else GAP
    zone = np.zeros((H, W), dtype=bool)
    stamp(zone, tx, ty, dilated_mask(group.target_shape, tw, th, gap), gap)
    tys, txs = np.nonzero(tm)
    edge = tm & ~erode(tm, 2)
    eys, exs = np.nonzero(edge)

    d_shapes = [s for s in TARGET_SHAPES if s != group.target_shape]
    d_colors = [c for c in COLORS if c not in (group.vision_color, group.text_color)]
    n = tier.n_distractors
    n_ov = tier.n_overlapping
    large = range(n_ov, min(n, n_ov + tier.n_large))
    lo, hi = tier.distractor_px
    for k in range(n):
        placed = False
        scale = 1.0
        for attempt in range(400):
            if attempt and attempt % 100 == 0:
                scale *= 0.85  # crowded: try smaller
            shape = d_shapes[int(rng.integers(len(d_shapes)))]
            color = d_colors[int(rng.integers(len(d_colors)))]
            if k in large:
                flo, fhi = tier.target_frac
                w, h = box_for_area(shape, rng.uniform(LARGE_MIN * flo, fhi) * W * H * scale * scale, rng)
            else:
                side = max(6, int(round(rng.uniform(lo, hi) * scale)))
                w, h = box_for(shape, side, rng)
            if w > W or h > H:
                continue
            m = shape_mask(shape, w, h)
            if k < n_ov:
                # put a random pixel of the distractor on a target pixel, mostly
                # near the target's edge so that the target stays visible
                if rng.random() < 0.75:
                    j = int(rng.integers(len(eys)))
                    py, px = int(eys[j]), int(exs[j])
                else:
                    j = int(rng.integers(len(tys)))
                    py, px = int(tys[j]), int(txs[j])
                mys, mxs = np.nonzero(m)
                q = int(rng.integers(len(mys)))
                x = min(max(0, tx + px - int(mxs[q])), W - w)
                y = min(max(0, ty + py - int(mys[q])), H - h)
                ov = overlap(tx, ty, tm, x, y, m)
                if ov < max(1, MIN_OVERLAP * m.sum()):
                    continue
            else:
                x = int(rng.integers(0, W - w + 1))
                y = int(rng.integers(0, H - h + 1))
                if zone[y : y + h, x : x + w][m].any():
                    continue
            cov = canvas.coverage(x, y, m)
            if cov.size and cov[0] and canvas.visible[0] - cov[0] < MIN_VISIBLE * canvas.area[0]:
                continue
            if cov.size > 1:
                vis_after = np.asarray(canvas.visible[1:]) - cov[1:]
                if (vis_after < MIN_DISTRACTOR_VISIBLE * np.asarray(canvas.area[1:])).any():
                    continue
            canvas.add(shape, color, x, y, m)
            if big:
                stamp(zone, x, y, dilated_mask(shape, w, h, GAP_LARGE), GAP_LARGE)
            placed = True
            break
        if not placed:
            return None
    return canvas
