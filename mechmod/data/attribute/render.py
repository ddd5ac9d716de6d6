"""Rendering the attribute set's CLEVR-like 3-D scenes offline (no Blender,
no download): the visual tier table and :func:`render_scene`.

Scenes: 320x240, grey floor with soft shadows, objects in perspective drawn
back to front with 3x supersampling. Spheres are shaded with a per-pixel
normal (radial gradient), cubes show three faces (top, front, side) with
different light, cylinders a shaded body with elliptical caps. ``metal`` =
dark ambient, high contrast, a sharp white specular highlight and an
environment term; ``rubber`` = matte diffuse shading with a weak broad sheen
(no near-white pixels).

Visual tiers (dv), by scene complexity:

====  ==========  ===========
 dv   objects     object size
====  ==========  ===========
 0    3-4         large
 1    6-8         large
 2    6-8         small
 3    10-12       small
====  ==========  ===========
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mechmod.data.attribute.vocabulary import CLEVR_COLORS, MATERIALS, SHAPES, AttrGroup
from mechmod.errors import MechmodError

W, H = 320, 240


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
