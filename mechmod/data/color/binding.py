"""The ``"binding"`` distractor policy: the model organism's training scenes,
where only binding the asked shape to its colour answers.

Every object of a scene, the target included, is drawn from one
distribution, and the target is an object picked at random, so that no
statistic that ignores shapes (a colour's pixel share, its number of
components, its largest component, how concentrated it is) tells the
target's colour from the other colours present:

* colours: slots drawn for all objects (distinct slots first or independent
  ones, half the time each) over the answer colours but the text answer's;
  the target is an object of a uniformly drawn present slot, which takes
  the visual answer; the other slots take the other colours at random.
  Objects of one colour never touch, so each is its own component;
* sizes: on the 800x600 tiers (dv 0-4) every object's larger side is drawn
  from the tier's range; on the 224x224 tiers :data:`N_LARGE` objects
  (chosen at random) take an area from the tier's target range and the
  rest a side from its distractor range; large objects are drawn first;
* placement: on the 800x600 tiers no two objects touch; on the 224x224
  tiers each object lands on an earlier one with the tier's occlusion
  probability (one of its pixels on that object's edge), anywhere
  otherwise, and every object keeps :data:`MIN_VISIBLE` of its pixels
  visible;
* every scene has at least :data:`MIN_OBJECTS` objects (dv 0-2 included),
  the target's shape once, the others of the other shapes.

Measured by :mod:`mechmod.organism.shortcuts` (``mechmod organism
shortcuts``).
"""

from __future__ import annotations

import numpy as np

from mechmod.data.color.canvas import GAP, GAP_LARGE, MIN_VISIBLE, Canvas
from mechmod.data.color.shapes import box_for, box_for_area, dilated_mask, erode, shape_mask, stamp
from mechmod.data.color.vocabulary import COLORS, TARGET_SHAPES, ColorGroup

N_LARGE = 2  # objects of the target's size range per 224x224 scene
MIN_OBJECTS = 5  # objects per scene, the target included


def slot_colors(group: ColorGroup, n_objects: int, rng: np.random.Generator) -> tuple[list[str], int]:
    """Colours of ``n_objects`` exchangeable objects and the index of the
    target among them (see the module docstring)."""
    others = [c for c in COLORS if c not in (group.vision_color, group.text_color)]
    k = len(others) + 1
    if rng.random() < 0.5:
        slots = np.concatenate([rng.permutation(k)[:n_objects],
                                rng.integers(0, k, size=max(0, n_objects - k))])
    else:
        slots = rng.integers(0, k, size=n_objects)
    target_slot = int(rng.choice(np.unique(slots)))
    target = int(rng.choice(np.flatnonzero(slots == target_slot)))
    rest = iter(rng.permutation(others))
    names = {s: (group.vision_color if s == target_slot else str(next(rest))) for s in range(k)}
    return [names[int(s)] for s in slots], target


def _object_mask(shape: str, large: bool, tier, scale: float, rng: np.random.Generator) -> np.ndarray:
    W, H = tier.size
    if large:
        lo, hi = tier.target_frac
        w, h = box_for_area(shape, rng.uniform(lo, hi) * W * H * scale * scale, rng)
    else:
        lo, hi = tier.target_px if tier.target_px is not None else tier.distractor_px
        w, h = box_for(shape, max(6, rng.uniform(lo, hi) * scale), rng)
    return shape_mask(shape, min(w, W), min(h, H))


def place_binding(group: ColorGroup, tier, rng: np.random.Generator) -> Canvas | None:
    """One "binding" scene on a :class:`Canvas`, or None when crowded (the
    caller draws again)."""
    W, H = tier.size
    big = tier.target_px is not None
    n = max(tier.n_distractors + 1, MIN_OBJECTS)
    colors, target = slot_colors(group, n, rng)
    others = [s for s in TARGET_SHAPES if s != group.target_shape]
    shapes = [group.target_shape if i == target else others[int(rng.integers(len(others)))] for i in range(n)]
    large = np.zeros(n, dtype=bool)
    if not big:
        large[rng.permutation(n)[:N_LARGE]] = True
    order = np.concatenate([rng.permutation(np.flatnonzero(large)), rng.permutation(np.flatnonzero(~large))])
    canvas = Canvas(W, H)
    zone = np.zeros((H, W), dtype=bool)  # 800x600 tiers: every placed object, dilated
    for i in order:
        if not _place_one(canvas, zone, shapes[i], colors[i], bool(large[i]), tier, big, rng):
            return None
        if i == target:
            canvas.target = len(canvas.objects) - 1
    return canvas


def _place_one(canvas: Canvas, zone: np.ndarray, shape: str, color: str, large: bool, tier, big: bool,
               rng: np.random.Generator) -> bool:
    W, H = tier.size
    scale = 1.0
    colours = np.array([o[1] == color for o in canvas.objects] + [False])  # index -1: background
    for attempt in range(400):
        if attempt and attempt % 100 == 0:
            scale *= 0.85  # crowded: try smaller
        m = _object_mask(shape, large, tier, scale, rng)
        h, w = m.shape
        if canvas.objects and not big and rng.random() < tier.occlusion:
            _, _, ox, oy, om = canvas.objects[int(rng.integers(len(canvas.objects)))]
            eys, exs = np.nonzero(om & ~erode(om, 2))
            j, (mys, mxs) = int(rng.integers(len(eys))), np.nonzero(m)
            q = int(rng.integers(len(mys)))
            x = min(max(0, ox + int(exs[j]) - int(mxs[q])), W - w)
            y = min(max(0, oy + int(eys[j]) - int(mys[q])), H - h)
        else:
            x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        gap = GAP_LARGE if big else GAP
        near = np.zeros((H, W), dtype=bool)
        stamp(near, x, y, dilated_mask(shape, w, h, gap), gap)
        if big and zone[near].any():
            continue
        if colours[canvas.owner[near]].any():  # touches an object of its own colour
            continue
        if not canvas.keeps_visible(canvas.coverage(x, y, m), MIN_VISIBLE):
            continue
        canvas.add(shape, color, x, y, m)
        if big:
            zone |= near
        return True
    return False
