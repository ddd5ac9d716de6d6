"""Attribute-recognition conflict set (paper notes §5, second set): the shape
(sphere / cube / cylinder) or the material (metal / rubber) of one object in
a CLEVR-like 3-D scene, rendered offline (no Blender, no download).

Scenes: 320x240, grey floor with soft shadows, objects in perspective drawn
back to front with 3x supersampling. Spheres are shaded with a per-pixel
normal (radial gradient), cubes show three faces (top, front, side) with
different light, cylinders a shaded body with elliptical caps. ``metal`` =
dark ambient, high contrast, a sharp white specular highlight and an
environment term; ``rubber`` = matte diffuse shading with a weak broad sheen
(no near-white pixels). Colours are CLEVR's 8.

Visual tiers (dv), by scene complexity:

====  ==========  ===========
 dv   objects     object size
====  ==========  ===========
 0    3-4         large
 1    6-8         large
 2    6-8         small
 3    10-12       small
====  ==========  ===========

A group is one target object (colour, shape, material; its colour is unique
in every scene of the group, so "the red object" refers to it), a visual
answer and a different textual answer; one scene per tier. In the shape
task no other object has the textual answer's shape (the conflicting shape
never appears in the image); in the material task (2 labels) the other
objects' materials are random.

Text tiers (dt): 0 direct ("The red object is a cube."), 1 indirect simple
(through an object absent from the image: "The red object's shape is the same
as the pink object. The pink object is a cube."), 2 indirect (a real-world
thing: "... the same as a die."), 3 spatial ("There is a cube; on the left of
the cube is a sphere. The red object's shape is the same as the object on
the right of the sphere."). Several templates per tier, picked by the seed.

Controls: ``text_irrelevant`` names, in the description only, an object of a
CLEVR colour absent from all the group's scenes; ``image_irrelevant`` names,
in the description and the question, an object of a colour CLEVR never draws
(pink, orange, black).

Public: :data:`ATTR_TIERS`, :class:`AttrGroup`, :func:`sample_attr_groups`,
:func:`render_scene`, :func:`describe_attr`, :func:`question_attr`,
:func:`generate_attribute`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from mechmod.data.schema import mechmod_version
from mechmod.errors import MechmodError
from mechmod.names import ATTRIBUTE_TASKS as TASKS, CONTROLS

W, H = 320, 240
CLEVR_COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
#: colours never drawn: referents of tier-1 bridges and of the image_irrelevant control
ABSENT_COLORS: tuple[str, ...] = ("pink", "orange", "black")
SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder")
MATERIALS: tuple[str, ...] = ("metal", "rubber")
SIZES: tuple[str, ...] = ("large", "small")
LABELS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "material": MATERIALS}
COMMAND = "Please use one word to answer this question."
N_DT = 4


@dataclass(frozen=True)
class AttrTier:
    dv: int
    n_objects: tuple[int, int]  # inclusive range
    size: str  # "large" | "small"


ATTR_TIERS: tuple[AttrTier, ...] = (
    AttrTier(0, (3, 4), "large"),
    AttrTier(1, (6, 8), "large"),
    AttrTier(2, (6, 8), "small"),
    AttrTier(3, (10, 12), "small"),
)
N_DV = len(ATTR_TIERS)
TEXT_TIERS = {0: "direct", 1: "indirect simple", 2: "indirect", 3: "spatial"}

# ----------------------------------------------------------------------------
# groups
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttrGroup:
    """One target object and its conflicting pair of answers. ``absent_color``
    is a CLEVR colour kept out of every scene of the group (the
    text_irrelevant referent)."""

    group_id: str
    index: int
    task: str
    target_shape: str
    target_material: str
    target_color: str
    absent_color: str
    vision_answer: str
    text_answer: str

    @property
    def referent(self) -> str:
        return referent(self.task, self.target_color, self.target_shape)


def referent(task: str, color: str, shape: str) -> str:
    """How the question names the object: 'red object' (shape task) or
    'red cube' (material task): never the asked attribute."""
    return f"{color} object" if task == "shape" else f"{color} {shape}"


def _balanced_pairs(labels: tuple[str, ...], n: int, seed: int, salt: int) -> list[tuple[str, str]]:
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


def _cycled(items: tuple[str, ...], n: int, seed: int, salt: int) -> list[str]:
    out: list[str] = []
    block = 0
    while len(out) < n:
        rng = np.random.default_rng([seed, salt, block])
        out += [items[i] for i in rng.permutation(len(items))]
        block += 1
    return out[:n]


def sample_attr_groups(n: int, seed: int, task: str, shapes: Iterable[str] | None = None) -> list[AttrGroup]:
    """``n`` groups of ``task`` ('shape' | 'material'), with the (visual,
    textual) answer pairs balanced as in :func:`mechmod.data.color.sample_groups`,
    target colours and the other attribute cycled. Prefix-stable."""
    if task not in TASKS:
        raise MechmodError(f"unknown attribute task {task!r}; choose from {', '.join(TASKS)}")
    if isinstance(n, bool) or int(n) != n or n <= 0:
        raise MechmodError(f"number of groups must be a positive integer, got {n!r}")
    n, seed = int(n), int(seed)
    if shapes is None:
        shapes = SHAPES
    shapes = tuple(dict.fromkeys(shapes))
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise MechmodError(f"unknown shape(s) {', '.join(map(repr, bad))}; choose from {', '.join(SHAPES)}")
    if task == "shape" and len(shapes) < 2:
        raise MechmodError("the shape task needs at least 2 shapes (image and text must disagree)")
    salt = 21 if task == "shape" else 31
    labels = shapes if task == "shape" else MATERIALS
    pairs = _balanced_pairs(labels, n, seed, salt)
    colors = _cycled(tuple(CLEVR_COLORS), n, seed, salt + 1)
    other = _cycled(MATERIALS if task == "shape" else shapes, n, seed, salt + 2)
    width = max(4, len(str(n - 1)))
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, salt + 3, i])
        absent = [c for c in CLEVR_COLORS if c != colors[i]]
        v, t = pairs[i]
        shape, material = (v, other[i]) if task == "shape" else (other[i], v)
        out.append(AttrGroup(group_id=f"{task}-s{seed}-g{i:0{width}d}", index=i, task=task, target_shape=shape,
                             target_material=material, target_color=colors[i],
                             absent_color=absent[int(rng.integers(len(absent)))], vision_answer=v, text_answer=t))
    return out


# ----------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------

SS = 3  # supersampling factor
_L = np.array([-0.45, -0.65, 0.62])
_L = _L / np.linalg.norm(_L)
_HV = _L + np.array([0.0, 0.0, 1.0])
_HV = _HV / np.linalg.norm(_HV)
_R = {"large": 30.0, "small": 16.0}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    material: str
    color: str
    size: str
    x: float  # screen x of the ground contact point
    y: float  # screen y of the ground contact point
    r: float  # screen radius scale (px)
    flip: bool  # cube: side face on the left


@dataclass(frozen=True)
class SceneInfo:
    """What was drawn: ``objects`` in drawing order, ``target`` their index
    of the target, ``visible_px`` / ``area_px`` per object (pixel coverage
    alpha >= 0.5). With ``return_masks`` also full-size boolean masks."""

    dv: int
    size: tuple[int, int]
    objects: tuple[SceneObject, ...]
    target: int
    area_px: tuple[int, ...]
    visible_px: tuple[int, ...]
    masks: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    @property
    def target_visible_fraction(self) -> float:
        return self.visible_px[self.target] / self.area_px[self.target]


def _bbox(o: SceneObject) -> tuple[float, float, float, float]:
    r = o.r
    if o.shape == "sphere":
        return o.x - r, o.y - 2 * r, o.x + r, o.y
    if o.shape == "cube":
        a = 1.6 * r
        dx, dy = 0.45 * a, 0.35 * a
        return o.x - (a + dx) / 2, o.y - a - dy, o.x + (a + dx) / 2, o.y
    rc = 0.9 * r
    ry, hc = 0.3 * rc, 1.7 * r
    return o.x - rc, o.y - 2 * ry - hc, o.x + rc, o.y


def _shade(base: np.ndarray, n: np.ndarray, material: str) -> np.ndarray:
    """base (3,) in 0..1, normals (..., 3) (x right, y down, z to the viewer)
    -> rgb (..., 3). Rubber: matte diffuse + weak broad sheen. Metal: dim
    diffuse, a tinted environment reflection (bright sky above a dark floor,
    so curved or bent faces show a sharp horizon) and a sharp white highlight."""
    diff = np.clip(n @ _L, 0.0, 1.0)[..., None]
    spec = np.clip(n @ _HV, 0.0, 1.0)[..., None]
    if material == "rubber":
        rgb = base * (0.32 + 0.68 * diff) + 0.05 * spec**6
    else:
        ry = 2.0 * n[..., 2:3] * n[..., 1:2]  # y of the reflected view ray (< 0: up, the sky)
        env = 0.12 + 0.88 / (1.0 + np.exp(12.0 * (ry + 0.15)))
        rgb = base * (0.05 + 0.40 * diff) + env * (0.55 * base + 0.15) + 1.1 * spec**80 + 0.25 * spec**14
    return np.clip(rgb, 0.0, 1.0)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _in_poly(px: np.ndarray, py: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Points inside a convex polygon (vertices in either order)."""
    n = len(pts)
    area2 = sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))
    orient = 1.0 if area2 > 0 else -1.0
    inside = np.ones(px.shape, dtype=bool)
    for i in range(n):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % n]
        inside &= orient * ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) >= 0
    return inside


def cube_faces(o: SceneObject) -> dict[str, list[tuple[float, float]]]:
    """Screen polygons of a cube's three visible faces: 'front', 'top', and
    'side' (on the right, or on the left when ``o.flip``)."""
    a = 1.6 * o.r
    dx, dy = 0.45 * a, 0.35 * a
    sgn = -1.0 if o.flip else 1.0
    fx0 = o.x - (a + dx) / 2 + (dx if o.flip else 0.0)
    fy1 = o.y
    fy0 = fy1 - a
    front = [(fx0, fy0), (fx0 + a, fy0), (fx0 + a, fy1), (fx0, fy1)]
    top = [(fx0, fy0), (fx0 + a, fy0), (fx0 + a + sgn * dx, fy0 - dy), (fx0 + sgn * dx, fy0 - dy)]
    ex = fx0 if o.flip else fx0 + a  # the vertical edge the side face hangs from
    side = [(ex, fy0), (ex + sgn * dx, fy0 - dy), (ex + sgn * dx, fy1 - dy), (ex, fy1)]
    return {"front": front, "top": top, "side": side}


def _object_patch(o: SceneObject):
    """(x0, y0, alpha (h, w), rgb (h, w, 3)) of one object, supersampled."""
    bx0, by0, bx1, by1 = _bbox(o)
    x0, y0 = int(math.floor(bx0)) - 1, int(math.floor(by0)) - 1
    x1, y1 = int(math.ceil(bx1)) + 1, int(math.ceil(by1)) + 1
    w, h = x1 - x0, y1 - y0
    gx = x0 + (np.arange(w * SS) + 0.5) / SS
    gy = y0 + (np.arange(h * SS) + 0.5) / SS
    px, py = np.meshgrid(gx, gy)
    base = np.array(CLEVR_COLORS[o.color], dtype=float) / 255.0
    rgb = np.zeros(px.shape + (3,))
    mask = np.zeros(px.shape, dtype=bool)
    r = o.r
    if o.shape == "sphere":
        cx, cy = o.x, o.y - r
        nx, ny = (px - cx) / r, (py - cy) / r
        d2 = nx**2 + ny**2
        mask = d2 <= 1.0
        nz = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
        rgb = _shade(base, np.stack([nx, ny, nz], -1), o.material)
    elif o.shape == "cube":
        a = 1.6 * r
        faces = cube_faces(o)
        metal = o.material == "metal"
        sgn = -1.0 if o.flip else 1.0
        # face normals (x right, y down, z to the viewer); metal faces get a
        # fixed tilt + strong bend (a slightly curved mirror: a glint on the front)
        normals = {"front": np.array([-0.12, -0.2, 1.0]) if metal else np.array([0.0, 0.25, 0.97]),
                   "top": np.array([0.0, -0.92, 0.38]), "side": np.array([sgn * 0.92, 0.0, 0.38])}
        u = (px - o.x) / a
        v = (py - (o.y - a / 2)) / a
        for name in ("front", "top", "side"):
            m = _in_poly(px, py, faces[name]) & ~mask
            if not m.any():
                continue
            bend = 0.5 if metal else 0.12  # slight curvature -> gradients, glints
            n = _normalize(normals[name] + bend * np.stack([u[m], v[m], np.zeros(m.sum())], -1))
            rgb[m] = _shade(base, n, o.material)
            mask |= m
    else:  # cylinder
        rc = 0.9 * r
        ry, hc = 0.3 * rc, 1.7 * r
        yb = o.y - ry
        yt = yb - hc
        ex = (px - o.x) / rc
        body = (np.abs(ex) <= 1.0) & (py >= yt) & (py <= yb)
        bottom = ex**2 + ((py - yb) / ry) ** 2 <= 1.0
        topc = ex**2 + ((py - yt) / ry) ** 2 <= 1.0
        side = (body | bottom) & ~topc
        nz = np.sqrt(np.clip(1.0 - ex**2, 0.0, 1.0))
        # body normals tilt a little towards the camera above (CLEVR looks down)
        n_side = _normalize(np.stack([ex, np.full_like(ex, -0.3), nz], -1))
        rgb[side] = _shade(base, n_side[side], o.material)
        bend = 0.35 if o.material == "metal" else 0.1
        ey = (py - yt) / ry
        n_top = _normalize(np.array([0.0, -0.92, 0.38]) + bend * np.stack([ex, ey * 0.3, np.zeros_like(ex)], -1))
        rgb[topc] = _shade(base, n_top[topc], o.material)
        mask = side | topc
    # downsample
    m = mask.reshape(h, SS, w, SS).astype(float)
    alpha = m.mean(axis=(1, 3))
    col = (rgb * mask[..., None]).reshape(h, SS, w, SS, 3).sum(axis=(1, 3))
    col = col / np.maximum(m.sum(axis=(1, 3)), 1e-9)[..., None]
    return x0, y0, alpha, col


def _floor() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    g = 0.47 + 0.13 * (yy / H) - 0.05 * ((xx - W / 2) / (W / 2)) ** 2
    return np.repeat(g[..., None], 3, axis=-1)


_FLOOR = None


def _composite(objs: list[SceneObject]):
    global _FLOOR
    if _FLOOR is None:
        _FLOOR = _floor()
    img = _FLOOR.copy()
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    # soft shadows on the floor (light from the upper left: shadows fall right)
    for o in objs:
        sx, sy = o.x + 0.55 * o.r, o.y - 0.12 * o.r
        d = np.sqrt(((xx - sx) / (1.25 * o.r)) ** 2 + ((yy - sy) / (0.42 * o.r)) ** 2)
        img *= 1.0 - 0.32 * np.clip(1.3 - d, 0.0, 1.0)[..., None] ** 1.5
    owner = np.full((H, W), -1, dtype=np.int16)
    areas = []
    full_masks = []
    for i, o in enumerate(objs):
        x0, y0, a, col = _object_patch(o)
        h, w = a.shape
        sl = (slice(max(0, y0), min(H, y0 + h)), slice(max(0, x0), min(W, x0 + w)))
        pa = a[sl[0].start - y0 : sl[0].stop - y0, sl[1].start - x0 : sl[1].stop - x0]
        pc = col[sl[0].start - y0 : sl[0].stop - y0, sl[1].start - x0 : sl[1].stop - x0]
        img[sl] = img[sl] * (1.0 - pa[..., None]) + pc * pa[..., None]
        m = pa >= 0.5
        owner[sl][m] = i
        areas.append(int(m.sum()))
        fm = np.zeros((H, W), dtype=bool)
        fm[sl] = m
        full_masks.append(fm)
    visible = [int((owner == i).sum()) for i in range(len(objs))]
    pix = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return pix, areas, visible, full_masks


def _place(rng: np.random.Generator, placed: list[SceneObject], shape, material, color, size) -> SceneObject | None:
    for _ in range(200):
        d = rng.uniform(0.0, 1.0)
        s = 0.6 + 0.6 * d
        r = _R[size] * s
        y = 95.0 + 135.0 * d
        x = W / 2 + rng.uniform(-1.0, 1.0) * (95.0 + 55.0 * d)
        o = SceneObject(shape, material, color, size, float(x), float(y), float(r), bool(rng.random() < 0.5))
        bx0, by0, bx1, by1 = _bbox(o)
        if bx0 < 2 or by0 < 2 or bx1 > W - 2 or by1 > H - 2:
            continue
        ok = True
        for p in placed:
            if math.hypot(p.x - o.x, (p.y - o.y) * 1.6) < 0.95 * (p.r + o.r) + 4:
                ok = False
                break
        if ok:
            return o
    return None


def render_scene(group: AttrGroup, dv: int, rng: np.random.Generator,
                 return_masks: bool = False) -> tuple[Image.Image, SceneInfo]:
    """Render one scene of ``group`` at tier ``dv``: the target plus
    distractors (colours never the target's or ``group.absent_color``; in the
    shape task never the textual answer's shape). The target keeps >= 60% of
    its pixels visible, every other object >= 35%."""
    if not isinstance(dv, (int, np.integer)) or not 0 <= dv < N_DV:
        raise MechmodError(f"invalid attribute tier dv={dv!r}; tiers are 0..{N_DV - 1}")
    tier = ATTR_TIERS[int(dv)]
    d_colors = [c for c in CLEVR_COLORS if c not in (group.target_color, group.absent_color)]
    d_shapes = [s for s in SHAPES if not (group.task == "shape" and s == group.text_answer)]
    for _attempt in range(100):
        n = int(rng.integers(tier.n_objects[0], tier.n_objects[1] + 1))
        t_index = int(rng.integers(n))
        placed: list[SceneObject] = []
        target = None
        for k in range(n):
            if k == t_index:
                spec = (group.target_shape, group.target_material, group.target_color)
            else:
                spec = (d_shapes[int(rng.integers(len(d_shapes)))], MATERIALS[int(rng.integers(2))],
                        d_colors[int(rng.integers(len(d_colors)))])
            o = _place(rng, placed, *spec, tier.size)
            if o is None:
                break
            placed.append(o)
            if k == t_index:
                target = o
        if len(placed) < n:
            continue
        order = sorted(range(n), key=lambda i: (placed[i].y, i))  # back to front
        objs = [placed[i] for i in order]
        ti = objs.index(target)
        pix, areas, visible, masks = _composite(objs)
        if visible[ti] < 0.6 * areas[ti]:
            continue
        if any(visible[i] < 0.35 * areas[i] for i in range(n)):
            continue
        info = SceneInfo(dv=int(dv), size=(W, H), objects=tuple(objs), target=ti, area_px=tuple(areas),
                         visible_px=tuple(visible), masks=tuple(masks) if return_masks else None)
        return Image.fromarray(pix, "RGB"), info
    raise RuntimeError(f"could not lay out a scene for {group.group_id} at dv={dv}")  # pragma: no cover


# ----------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------

POSITIONS: tuple[tuple[str, str], ...] = (
    ("on the left of", "on the right of"),
    ("on the right of", "on the left of"),
    ("behind", "in front of"),
    ("in front of", "behind"),
)

TEMPLATES: dict[str, dict[int, tuple[str, ...]]] = {
    "shape": {
        0: ("The {A} is a {T}.", "The {A} in the picture is a {T}.", "The {A} has the shape of a {T}.",
            "The {A} is shaped like a {T}."),
        1: ("The {A}'s shape is the same as the {B}. The {B} is a {T}.",
            "The {A} has the same shape as the {B}. The {B} is a {T}.",
            "The {B} is a {T}, and the {A} has the same shape as the {B}."),
        2: ("The {A}'s shape is the same as {D}.", "The {A} has the same shape as {D}.",
            "The {A} is shaped like {D}."),
        3: ("There is a {T}; {P1} the {T} is a {S2}. The {A}'s shape is the same as the object {P2} the {S2}.",
            "There is a {T}, and {P1} the {T} there is a {S2}. The {A} has the same shape as the object {P2} "
            "the {S2}."),
    },
    "material": {
        0: ("The {A} is made of {T}.", "The {A} in the picture is made of {T}.", "The material of the {A} is {T}.",
            "The {A} is a {T} object."),
        1: ("The {A}'s material is the same as the {B}. The {B} is made of {T}.",
            "The {A} is made of the same material as the {B}. The {B} is made of {T}.",
            "The {B} is made of {T}, and the {A} is made of the same material as the {B}."),
        2: ("The {A}'s material is the same as {D}.", "The {A} is made of the same material as {D}.",
            "The material of the {A} matches {D}."),
        3: ("There is a {T} {S1}; {P1} the {S1} is a {S2}. The {A}'s material is the same as the object {P2} "
            "the {S2}.",
            "There is a {T} {S1}, and {P1} the {S1} there is a {S2}. The {A} is made of the same material as the "
            "object {P2} the {S2}."),
    },
}


@dataclass(frozen=True)
class AttrDescription:
    text: str
    dt: int
    control: str
    template: int
    described: str  # referent in the description
    asked: str  # referent in the question
    bridge: str
    thing: str


def question_attr(task: str, ref: str) -> str:
    """'What shape is the red object? Please use one word ...' /
    'What material is the red cube made of? Please use one word ...'"""
    if task == "shape":
        return f"What shape is the {ref}? {COMMAND}"
    return f"What material is the {ref} made of? {COMMAND}"


def attr_text(task: str, make_ref, color: str, answer_text: str, dt: int, rng: np.random.Generator,
              control: str = "none", irrelevant_color: str | None = None,
              answer_vision: str | None = None) -> AttrDescription:
    """Description of the target claiming ``answer_text`` at tier ``dt``.
    ``make_ref(color) -> str`` names an object like the target but of the
    given colour ('red object', 'large red metal object', 'red cube');
    ``color`` is the target's. Draw order from ``rng``: template, tier choices
    (bridge / thing / spatial words), control referent. ``irrelevant_color``:
    the colour of the text_irrelevant referent (absent from the image).
    ``answer_vision``: never named in the description (the spatial tier's
    second shape avoids it when another shape is left)."""
    from mechmod.data.knowledge import MATERIAL_KNOWLEDGE, SHAPE_KNOWLEDGE

    if control not in CONTROLS:
        raise MechmodError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
    if not isinstance(dt, (int, np.integer)) or not 0 <= dt < N_DT:
        raise MechmodError(f"invalid text tier dt={dt!r}; attribute tiers are 0..{N_DT - 1}")
    if answer_text not in LABELS[task]:
        raise MechmodError(f"unknown {task} {answer_text!r}; choose from {', '.join(LABELS[task])}")
    templates = TEMPLATES[task][int(dt)]
    t = int(rng.integers(len(templates)))
    fields = {"T": answer_text, "B": "", "D": "", "S1": "", "S2": "", "P1": "", "P2": ""}
    bridge_color = ""
    if dt == 1:
        bridge_color = ABSENT_COLORS[int(rng.integers(len(ABSENT_COLORS)))]
        fields["B"] = referent(task, bridge_color, SHAPES[int(rng.integers(len(SHAPES)))])
    elif dt == 2:
        things = (SHAPE_KNOWLEDGE if task == "shape" else MATERIAL_KNOWLEDGE)[answer_text]
        fields["D"] = things[int(rng.integers(len(things)))]
    elif dt == 3:
        p1, p2 = POSITIONS[int(rng.integers(len(POSITIONS)))]
        fields["P1"], fields["P2"] = p1, p2
        if task == "shape":
            others = [s for s in SHAPES if s != answer_text]
            others = [s for s in others if s != answer_vision] or others
            fields["S2"] = others[int(rng.integers(len(others)))]
        else:
            s1 = SHAPES[int(rng.integers(len(SHAPES)))]
            others = [s for s in SHAPES if s != s1]
            fields["S1"], fields["S2"] = s1, others[int(rng.integers(len(others)))]
    A = asked = make_ref(color)
    if control == "text_irrelevant":
        if irrelevant_color is None or irrelevant_color == color:
            raise ValueError("text_irrelevant needs an irrelevant_color different from the target's")
        A = make_ref(irrelevant_color)
    elif control == "image_irrelevant":
        pool = [c for c in ABSENT_COLORS if c != bridge_color]
        A = asked = make_ref(pool[int(rng.integers(len(pool)))])
    text = templates[t].format(A=A, **fields)
    return AttrDescription(text, int(dt), control, t, A, asked, fields["B"], fields["D"])


def describe_attr(group: AttrGroup, dt: int, rng: np.random.Generator, control: str = "none") -> str:
    """The conflicting description of ``group`` at text tier ``dt`` (0-3)."""
    return _group_text(group, dt, rng, control).text


def _group_text(group: AttrGroup, dt: int, rng: np.random.Generator, control: str) -> AttrDescription:
    return attr_text(group.task, lambda c: referent(group.task, c, group.target_shape), group.target_color,
                     group.text_answer, dt, rng, control, irrelevant_color=group.absent_color,
                     answer_vision=group.vision_answer)


# ----------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------


def _case_row(*, case_id, group_id, task, dv, dt, control, image_id, image_path, d: AttrDescription,
              answer_vision, answer_text, seed, extra) -> dict:
    return {
        "case_id": case_id, "group_id": group_id, "task": task, "dv": int(dv), "dt": int(dt), "control": control,
        "image_id": image_id, "image_path": image_path, "description": d.text,
        "question": question_attr(task, d.asked), "answer_vision": answer_vision, "answer_text": answer_text,
        "candidates": list(LABELS[task]), "seed": int(seed),
        "described_referent": d.described, "asked_referent": d.asked, "bridge": d.bridge,
        "knowledge_thing": d.thing, "template": d.template, **extra,
    }


def _attr_group_cases(args):
    g, seed, dvs, dts, controls = args
    from mechmod.data.schema import png_bytes

    rows, images = [], []
    salt = 0 if g.task == "shape" else 1
    descs = {}
    for dt in dts:
        for ctrl in controls:
            descs[dt, ctrl] = _group_text(g, dt, np.random.default_rng([seed, 50 + salt, g.index, 1000 + dt]), ctrl)
    for dv in dvs:
        img, info = render_scene(g, dv, np.random.default_rng([seed, 50 + salt, g.index, dv]))
        image_id = f"{g.group_id}-dv{dv}"
        rel = f"images/{image_id}.png"
        images.append((rel, png_bytes(img)))
        extra = {"target_shape": g.target_shape, "target_material": g.target_material,
                 "target_color": g.target_color, "target_size": ATTR_TIERS[dv].size,
                 "n_objects": info.n_objects, "target_area_px": info.area_px[info.target],
                 "target_visible_fraction": round(info.target_visible_fraction, 6), "source": "render"}
        for dt in dts:
            for ctrl in controls:
                rows.append(_case_row(case_id=f"{image_id}-dt{dt}-{ctrl}", group_id=g.group_id, task=g.task, dv=dv,
                                      dt=dt, control=ctrl, image_id=image_id, image_path=rel, d=descs[dt, ctrl],
                                      answer_vision=g.vision_answer, answer_text=g.text_answer, seed=seed,
                                      extra=extra))
    return rows, images


def _subset_tasks(subset: str) -> tuple[str, ...]:
    if subset == "both":
        return TASKS
    if subset not in TASKS:
        raise MechmodError(f"unknown subset {subset!r}; choose shape, material or both")
    return (subset,)


def attribute_manifest_common() -> dict:
    return {
        "candidates": {k: list(v) for k, v in LABELS.items()},
        "tiers": [{"dv": t.dv, "n_objects": list(t.n_objects), "size": t.size} for t in ATTR_TIERS],
        "text_tiers": {str(k): v for k, v in TEXT_TIERS.items()},
    }


def generate_attribute(out: str | os.PathLike, groups: int = 300, seed: int = 0, subset: str = "both",
                       controls: bool = True, progress: bool = True, dv=None, dt=None,
                       shapes: Iterable[str] | None = None) -> Path:
    """Render the attribute conflict set into ``out``: ``groups`` groups per
    task of ``subset`` ('shape', 'material' or 'both'); per group 4 scenes
    (dv) x 4 text tiers (dt) x controls (none, text_irrelevant,
    image_irrelevant when ``controls``). Same schema as the colour set,
    ``task`` = 'shape' / 'material'."""
    from mechmod.data.schema import DatasetDir, dataset_counts
    from mechmod.data.writer import _progress, check_groups, check_seed, parse_tiers

    groups = check_groups(groups)
    seed = check_seed(seed)
    tasks = _subset_tasks(subset)
    dvs = parse_tiers(dv, N_DV, "visual (dv)")
    dts = parse_tiers(dt, N_DT, "text (dt)")
    ctrls = CONTROLS if controls else ("none",)
    all_groups = [g for task in tasks for g in sample_attr_groups(groups, seed, task, shapes=shapes)]
    rows: list[dict] = []
    with DatasetDir(out) as ds:
        for g in _progress(all_groups, len(all_groups), progress, "attribute groups"):
            g_rows, imgs = _attr_group_cases((g, seed, dvs, dts, ctrls))
            for rel, data in imgs:
                ds.write_image(rel, data=data)
            rows += g_rows
        manifest = {
            "task": tasks[0] if len(tasks) == 1 else "attribute",
            "tasks": list(tasks),
            "seed": seed,
            "generator": "mechmod.data.generate_attribute",
            "mechmod_version": mechmod_version(),
            "options": {"groups_per_task": groups, "subset": subset, "controls": list(ctrls), "dv": list(dvs),
                        "dt": list(dts)},
            **attribute_manifest_common(),
            "notes": ("Rendered CLEVR-like scenes (mechmod.data.attribute). answer_vision/answer_text are the "
                      "group's answers in every row; the expected answer is answer_vision for text_irrelevant "
                      "and answer_text for image_irrelevant."),
            "counts": {
                "answer_vision": dataset_counts(f"{g.task}:{g.vision_answer}" for g in all_groups),
                "answer_text": dataset_counts(f"{g.task}:{g.text_answer}" for g in all_groups),
                "control": dataset_counts(r["control"] for r in rows),
            },
        }
        return ds.finish(rows, manifest)
