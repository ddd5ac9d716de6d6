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

* ``"paper"`` (the default, every study dataset): the rule above.
* ``"binding"`` (the model organism's training images): only binding the
  asked shape to its colour answers. Distractors take any colour but the
  text answer's, the target's own colour included (on other shapes), drawn
  so that the target's colour is equally likely to be any colour present
  whatever the colour counts are: the object colours are slots drawn for all
  ``n + 1`` objects (distinct slots first or independently, half the time
  each), the target is an object of a uniformly drawn present slot. Where
  the tier makes the target larger than its distractors (dv 5-13), two
  non-overlapping distractors are *decoys* of another shape, 0.5-1.1 times
  the target's area, drawn first on free background (smaller where none is
  left), so that size gives the target away less often; measured in
  :mod:`mechmod.organism.shortcuts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy.signal import fftconvolve

from mechmod.data.color.shapes import box_for, box_for_area, dilated_mask, erode, shape_mask, stamp
from mechmod.data.color.vocabulary import COLORS, TARGET_SHAPES, WHITE, ColorGroup
from mechmod.errors import MechmodError
from mechmod.names import DISTRACTOR_POLICIES

MIN_VISIBLE = 0.45  # share of the target's pixels that stays visible
MIN_OVERLAP = 0.10  # share of an overlapping distractor's area that lies on the target
MIN_DISTRACTOR_VISIBLE = 0.30  # share of each distractor that stays visible
GAP = 2  # px between the target and a non-overlapping distractor (dv >= 5)
GAP_LARGE = 12  # px between any two objects on the 800x600 tiers
N_DECOYS = 2  # target-sized distractors per image under the "binding" policy (dv 5-13)


@dataclass(frozen=True)
class Tier:
    """One row of the visual tier table.

    ``target_px``: (lo, hi) of the target's larger bounding-box side in px
    (dv 0-4), else None. ``target_frac``: (lo, hi) of the target's mask area
    as a share of the image (dv 5-13), else None. ``occlusion``: share of the
    distractors that overlap the target. ``distractor_px``: (lo, hi) of a
    distractor's larger side in px (a design choice, not in the paper)."""

    dv: int
    size: tuple[int, int]  # (width, height)
    target_px: tuple[int, int] | None
    target_frac: tuple[float, float] | None
    n_distractors: int
    occlusion: float
    distractor_px: tuple[int, int]

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
    Tier(9, _SMALL, None, (0.04, 0.06), 20, 0.3, (14, 28)),
    Tier(10, _SMALL, None, (0.04, 0.06), 30, 0.6, (12, 24)),
    Tier(11, _SMALL, None, (0.04, 0.06), 40, 0.5, (12, 22)),
    Tier(12, _SMALL, None, (0.04, 0.06), 55, 0.6, (10, 20)),
    Tier(13, _SMALL, None, (0.04, 0.06), 70, 0.7, (10, 18)),
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
    ``visible_px``: its pixels left uncovered (exactly the pixels of
    ``vision_color`` in the image); ``colors_used``: colour names present in
    the image. With ``return_masks=True``, ``target_mask`` and
    ``distractor_masks`` hold full-size boolean masks in drawing order."""

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
    target_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    distractor_masks: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def visible_fraction(self) -> float:
        return self.visible_px / self.target_area_px

    @property
    def target_area_frac(self) -> float:
        return self.target_area_px / (self.size[0] * self.size[1])


class _Canvas:
    """Index canvas: ``owner`` holds which object is visible at each pixel
    (-1 = background, 0 = target, i = distractor i)."""

    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.owner = np.full((h, w), -1, dtype=np.int16)
        self.objects: list[tuple[str, str, int, int, np.ndarray]] = []  # shape, color, x, y, mask
        self.area: list[int] = []
        self.visible: list[int] = []

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

    for _attempt in range(50):
        out = _try_render(group, tier, rng, distractors)
        if out is not None:
            break
    else:  # pragma: no cover - the tier parameters leave ample room
        raise RuntimeError(f"could not place distractors for {group.group_id} at dv={dv}")
    canvas = out

    palette = np.array([COLORS[o[1]] for o in canvas.objects] + [WHITE], dtype=np.uint8)
    pix = palette[canvas.owner]  # owner -1 picks the last entry (white)
    img = Image.fromarray(pix, "RGB")

    t_shape, t_color, tx, ty, tm = canvas.objects[0]
    th, tw = tm.shape
    dinfo = []
    target_full = None
    for i, (s, c, x, y, m) in enumerate(canvas.objects[1:], start=1):
        h, w = m.shape
        ov = _overlap(tx, ty, tm, x, y, m)
        dinfo.append(DistractorInfo(s, c, (x, y, x + w, y + h), canvas.area[i], ov > 0, canvas.visible[i]))
    used = sorted({canvas.objects[i][1] for i in range(len(canvas.objects)) if canvas.visible[i] > 0},
                  key=list(COLORS).index)
    masks = None
    if return_masks:
        def full(x, y, m):
            a = np.zeros((H, W), dtype=bool)
            a[y : y + m.shape[0], x : x + m.shape[1]] = m
            return a

        target_full = full(tx, ty, tm)
        masks = tuple(full(x, y, m) for (_, _, x, y, m) in canvas.objects[1:])
    info = RenderInfo(dv=int(dv), size=(W, H), target_shape=t_shape, target_color=t_color,
                      target_bbox=(tx, ty, tx + tw, ty + th), target_area_px=canvas.area[0],
                      visible_px=canvas.visible[0], n_distractors=len(dinfo),
                      n_overlapping=sum(d.overlaps_target for d in dinfo), distractors=tuple(dinfo),
                      colors_used=tuple(used), target_mask=target_full, distractor_masks=masks)
    return img, info


def _overlap(tx: int, ty: int, tm: np.ndarray, x: int, y: int, m: np.ndarray) -> int:
    """Pixels shared by two placed masks."""
    x0, y0 = max(tx, x), max(ty, y)
    x1, y1 = min(tx + tm.shape[1], x + m.shape[1]), min(ty + tm.shape[0], y + m.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    a = tm[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
    b = m[y0 - y : y1 - y, x0 - x : x1 - x]
    return int((a & b).sum())


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


def _binding_colors(group: ColorGroup, on_target: np.ndarray, rng: np.random.Generator) -> list[str]:
    """The ``n`` distractor colours of the "binding" policy: colour slots for
    all ``n + 1`` objects, the target in a uniformly drawn present slot, so
    that the counts of each present colour say nothing about which one is
    the target's. Those drawn onto the target (``on_target``) never take
    the target's colour: they would merge with it into one blob of another
    outline; an excess of target-coloured distractors takes other colours."""
    others = [c for c in COLORS if c not in (group.vision_color, group.text_color)]
    n, n_ov = len(on_target), int(on_target.sum())
    k = len(others) + 1
    if rng.random() < 0.5:  # distinct slots first, then independent ones
        slots = np.concatenate([rng.permutation(k)[: n + 1], rng.integers(0, k, size=max(0, n + 1 - k))])
    else:
        slots = rng.integers(0, k, size=n + 1)
    target_slot = rng.choice(np.unique(slots))
    target_obj = int(rng.choice(np.flatnonzero(slots == target_slot)))
    names = dict(zip([s for s in range(k) if s != target_slot], [others[i] for i in rng.permutation(len(others))]))
    names[int(target_slot)] = group.vision_color
    colors = [names[int(s)] for i, s in enumerate(slots) if i != target_obj]
    colors = [colors[i] for i in rng.permutation(n)]
    same = [c for c in colors if c == group.vision_color]
    diff = [c for c in colors if c != group.vision_color]
    short = max(0, n_ov - len(diff))
    first = diff[:n_ov] + [others[int(rng.integers(len(others)))] for _ in range(short)]
    rest = diff[n_ov:] + same[short:]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    return [first.pop() if flag else rest.pop() for flag in on_target]


def _decoy_mask(shape: str, target_area: int, tier: Tier, scale: float, rng: np.random.Generator) -> np.ndarray:
    """A distractor of 0.5-1.1 times the target's area (dv 5-13, "binding"):
    drawn before the occluders, about the target's size once they cover it."""
    W, H = tier.size
    w, h = box_for_area(shape, rng.uniform(0.5, 1.1) * target_area * scale * scale, rng)
    return shape_mask(shape, min(w, W), min(h, H))


def _try_render(group: ColorGroup, tier: Tier, rng: np.random.Generator, policy: str = "paper") -> _Canvas | None:
    W, H = tier.size
    canvas = _Canvas(W, H)
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
    binding = policy == "binding"
    # overlapping distractors first (the tight constraint), drawn beneath the
    # rest; "binding" draws its decoys before them, on free background
    decoys = range(min(N_DECOYS, n - n_ov)) if binding and not big else range(0)
    overlap_flags = np.zeros(n, dtype=bool)
    overlap_flags[len(decoys) : len(decoys) + n_ov] = True
    fixed_colors = _binding_colors(group, overlap_flags, rng) if binding else None
    lo, hi = tier.distractor_px
    for k in range(n):
        placed = False
        scale = 1.0
        for attempt in range(400):
            if attempt and attempt % 100 == 0:
                scale *= 0.85  # crowded: try smaller
            shape = d_shapes[int(rng.integers(len(d_shapes)))]
            color = fixed_colors[k] if binding else d_colors[int(rng.integers(len(d_colors)))]
            if k in decoys:
                m = _decoy_mask(shape, canvas.area[0], tier, scale, rng)
                h, w = m.shape
            else:
                side = max(6, int(round(rng.uniform(lo, hi) * scale)))
                w, h = box_for(shape, side, rng)
                if w > W or h > H:
                    continue
                m = shape_mask(shape, w, h)
            if overlap_flags[k]:
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
                ov = _overlap(tx, ty, tm, x, y, m)
                if ov < max(1, MIN_OVERLAP * m.sum()):
                    continue
            elif k in decoys:  # large: drawn on free background only, smaller when none is left
                taken = zone | (canvas.owner >= 0)
                free = np.argwhere(fftconvolve(taken, m[::-1, ::-1], mode="valid") < 0.5)
                if not len(free):
                    scale *= 0.9
                    continue
                y, x = (int(v) for v in free[int(rng.integers(len(free)))])
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
