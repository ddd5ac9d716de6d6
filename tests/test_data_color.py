"""Colour set primitives, measured on the rendered pixels: tier sizes, target
areas, distractor counts, occlusion shares, visibility, the absent text
colour, balance, text tiers, controls, the knowledge base, determinism."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from mechmod.data import color as C
from mechmod.data.color.render import MIN_DISTRACTOR_VISIBLE, MIN_VISIBLE
from mechmod.data.knowledge import KNOWLEDGE, MATERIAL_KNOWLEDGE, SHAPE_KNOWLEDGE
from mechmod.errors import MechmodError

GROUPS = C.sample_groups(12, seed=5)


def _rgb_index(img):
    """Per pixel: -1 white, k = index into COLORS; asserts no other colour exists."""
    a = np.asarray(img).astype(int)
    out = np.full(a.shape[:2], -2)
    out[(a == 255).all(-1)] = -1
    for k, rgb in enumerate(C.COLORS.values()):
        out[(a == rgb).all(-1)] = k
    assert (out != -2).all(), "found a pixel that is neither white nor one of the flat colours (antialiasing?)"
    return out


@pytest.fixture(scope="module")
def renders():
    """(group, dv, image, info) for 12 groups x 14 tiers, with masks."""
    out = []
    for g in GROUPS:
        for dv in range(C.N_DV):
            img, info = C.render_image(g, dv, np.random.default_rng([99, g.index, dv]), return_masks=True)
            out.append((g, dv, img, info))
    return out


# -- vocabulary ------------------------------------------------------------------


def test_palette_is_flat_and_well_separated():
    assert list(C.COLORS) == ["red", "yellow", "blue", "green", "purple", "orange"]
    vals = np.array(list(C.COLORS.values()), dtype=float)
    for i, j in itertools.combinations(range(6), 2):
        assert np.linalg.norm(vals[i] - vals[j]) >= 90
    assert (np.linalg.norm(vals - 255, axis=1) >= 150).all()
    assert not set(C.TARGET_SHAPES) & set(C.CONTROL_SHAPES)
    assert not set(C.INDIRECT_SHAPES) & (set(C.TARGET_SHAPES) | set(C.CONTROL_SHAPES))
    assert set(C.CONTROL_SHAPES) == {"star", "cone", "frustum"}


@pytest.mark.parametrize("table", [KNOWLEDGE, SHAPE_KNOWLEDGE, MATERIAL_KNOWLEDGE], ids=["color", "shape", "material"])
def test_knowledge_vocabulary(table):
    labels = set(table)
    shape_words = set(C.TARGET_SHAPES) | set(C.CONTROL_SHAPES) | set(C.INDIRECT_SHAPES) | set(C.COLORS)
    things = [t for ts in table.values() for t in ts]
    assert len(things) == len(set(things))
    for label, ts in table.items():
        assert len(ts) >= 8, label
        for t in ts:
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", t), t
            words = set(t.split())
            assert not words & labels, t
            if table is KNOWLEDGE:
                assert not words & shape_words, t
    for a, b in itertools.permutations(things, 2):
        assert a not in b, (a, b)  # a longest-substring lookup is unambiguous
    if table is KNOWLEDGE:
        assert set(KNOWLEDGE) == set(C.COLORS)


# -- groups ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 29, 30, 400])
def test_groups_balanced_for_image_and_text(n):
    gs = C.sample_groups(n, seed=11)
    assert len(gs) == n and len({g.group_id for g in gs}) == n
    assert all(g.vision_color != g.text_color for g in gs)
    for attr in ("vision_color", "text_color", "target_shape"):
        c = Counter(getattr(g, attr) for g in gs)
        k = len(C.COLORS) if attr != "target_shape" else len(C.TARGET_SHAPES)
        counts = [c.get(x, 0) for x in (C.COLORS if attr != "target_shape" else C.TARGET_SHAPES)]
        assert max(counts) - min(counts) <= 1, (attr, c)
        assert sum(counts) == n and len(counts) == k
    if n == 400:  # every ordered (vision, text) pair used
        pairs = Counter((g.vision_color, g.text_color) for g in gs)
        assert len(pairs) == 30 and max(pairs.values()) - min(pairs.values()) <= 1


def test_groups_prefix_stable_and_seeded():
    a, b = C.sample_groups(50, seed=3), C.sample_groups(120, seed=3)
    assert a == b[:50]
    assert C.sample_groups(50, seed=4) != a


def test_groups_subset_and_bad_input():
    gs = C.sample_groups(20, seed=0, colors=["red", "blue", "green"], shapes=["circle"])
    assert {g.vision_color for g in gs} | {g.text_color for g in gs} == {"red", "blue", "green"}
    assert {g.target_shape for g in gs} == {"circle"}
    for kw, msg in [({"colors": ["red", "pink"]}, "pink"), ({"colors": ["red"]}, "at least 2"),
                    ({"shapes": ["star"]}, "star")]:
        with pytest.raises(MechmodError, match=msg):
            C.sample_groups(5, seed=0, **kw)
    for n in (0, -2, 1.5):
        with pytest.raises(MechmodError, match="positive"):
            C.sample_groups(n, seed=0)


# -- rendering, measured on pixels -------------------------------------------


def test_image_sizes_and_flat_colours(renders):
    for g, dv, img, info in renders:
        assert img.mode == "RGB"
        assert img.size == ((800, 600) if dv <= 4 else (224, 224))
        _rgb_index(img)


def test_text_colour_never_in_image(renders):
    for g, dv, img, info in renders:
        a = np.asarray(img).astype(float)
        d = np.linalg.norm(a - np.array(C.COLORS[g.text_color], float), axis=-1)
        assert d.min() > 60, (g.group_id, dv)
        assert g.text_color not in info.colors_used
        assert all(d_.color not in (g.vision_color, g.text_color) for d_ in info.distractors)
        assert all(d_.shape != g.target_shape for d_ in info.distractors)


def test_masks_reproduce_the_image(renders):
    """The returned masks, painted in drawing order, give the image exactly, and
    each mask is the named shape: so the counts below are counts of pixels."""
    for g, dv, img, info in renders:
        W, H = info.size
        canvas = np.full((H, W, 3), 255, np.uint8)
        canvas[info.target_mask] = C.COLORS[g.vision_color]
        x0, y0, x1, y1 = info.target_bbox
        np.testing.assert_array_equal(info.target_mask[y0:y1, x0:x1], C.shape_mask(g.target_shape, x1 - x0, y1 - y0))
        for d, m in zip(info.distractors, info.distractor_masks):
            canvas[m] = C.COLORS[d.color]
            x0, y0, x1, y1 = d.bbox
            np.testing.assert_array_equal(m[y0:y1, x0:x1], C.shape_mask(d.shape, x1 - x0, y1 - y0))
        np.testing.assert_array_equal(canvas, np.asarray(img))


def test_target_size_per_tier(renders):
    for g, dv, img, info in renders:
        idx = _rgb_index(img)
        vis = idx == list(C.COLORS).index(g.vision_color)
        assert int(vis.sum()) == info.visible_px
        tier = C.TIERS[dv]
        if dv <= 4:  # no occlusion: the visible pixels are the whole target
            ys, xs = np.nonzero(vis)
            side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert 80 <= side <= 200, (dv, side)
            assert info.visible_px == info.target_area_px
        else:
            lo, hi = tier.target_frac
            area = int(info.target_mask.sum())
            assert area == info.target_area_px
            assert lo <= area / (224 * 224) <= hi, (dv, area / 224**2)
            assert vis.sum() <= area and not (vis & ~info.target_mask).any()


def test_distractor_counts_on_pixels(renders):
    for g, dv, img, info in renders:
        tier = C.TIERS[dv]
        assert info.n_distractors == tier.n_distractors == len(info.distractor_masks)
        idx = _rgb_index(img)
        if dv <= 4:
            # objects never touch: connected non-white components = target + distractors
            _, n = ndimage.label(idx >= 0, structure=np.ones((3, 3)))
            assert n == 1 + tier.n_distractors, (dv, n)
        # every distractor stays visible (>= 30% of its pixels show its colour)
        owner_colour = idx
        for d, m in zip(info.distractors, info.distractor_masks):
            shown = (owner_colour[m] == list(C.COLORS).index(d.color)).sum()
            assert shown >= MIN_DISTRACTOR_VISIBLE * m.sum() - 1e-9


def test_occlusion_share_on_pixels(renders):
    for g, dv, img, info in renders:
        tier = C.TIERS[dv]
        grown = ndimage.binary_dilation(info.target_mask, iterations=1)
        overlapping = [bool((m & info.target_mask).any()) for m in info.distractor_masks]
        touching = [bool((m & grown).any()) for m in info.distractor_masks]
        n_ov = sum(overlapping)
        assert n_ov == info.n_overlapping == tier.n_overlapping, (dv, n_ov)
        if tier.n_distractors:
            assert abs(n_ov / tier.n_distractors - tier.occlusion) <= 0.5 / tier.n_distractors + 1e-9
        # the others keep clear of the target (not even touching)
        assert sum(touching) == n_ov
        if dv <= 4:
            assert n_ov == 0


def test_target_stays_visible_but_is_occluded(renders):
    fracs = {dv: [] for dv in range(C.N_DV)}
    for g, dv, img, info in renders:
        vis = (_rgb_index(img) == list(C.COLORS).index(g.vision_color)).sum()
        frac = vis / info.target_mask.sum()
        assert frac >= MIN_VISIBLE
        fracs[dv].append(frac)
    for dv in range(5, C.N_DV):
        assert np.mean(fracs[dv]) < 0.95, dv  # occlusion really covers part of the target
    for dv in range(5):
        assert min(fracs[dv]) == 1.0


def test_render_is_deterministic_and_handles_consistent_pairs():
    import dataclasses

    g = GROUPS[0]
    for dv in (0, 13):
        a, ia = C.render_image(g, dv, np.random.default_rng(7))
        b, ib = C.render_image(g, dv, np.random.default_rng(7))
        assert a.tobytes() == b.tobytes() and ia == ib
    same = dataclasses.replace(g, text_color=g.vision_color)
    img, info = C.render_image(same, 13, np.random.default_rng(1))
    assert len({d.color for d in info.distractors} & {g.vision_color}) == 0
    with pytest.raises(MechmodError, match="dv"):
        C.render_image(g, 14, np.random.default_rng(0))


# -- text ------------------------------------------------------------------


def _words(s):
    return re.findall(r"[a-z]+", s.lower())


def test_text_tiers_and_templates():
    gs = C.sample_groups(90, seed=2)
    rng = np.random.default_rng(0)
    used = {0: set(), 1: set(), 2: set()}
    for g in gs:
        assert C.describe(g, -1, rng) == ""
        for dt in range(3):
            d = C.describe_ex(g, dt, rng)
            used[dt].add(d.template)
            w = _words(d.text)
            assert g.target_shape in w
            assert g.vision_color not in w  # the description never names the image colour
            if dt in (0, 1):
                assert g.text_color in w
            if dt == 1:
                assert d.bridge_shape in C.INDIRECT_SHAPES and w.count(d.bridge_shape) == 2
            if dt == 2:
                assert d.thing in KNOWLEDGE[g.text_color] and d.thing in d.text
                assert not set(w) & set(C.COLORS)  # the colour only through the thing
    for dt, ts in used.items():
        assert len(ts) >= 4, (dt, ts)
    assert C.question_for("circle") == "What color is the circle? Please use one word to answer this question."
    with pytest.raises(MechmodError, match="dt"):
        C.describe(gs[0], 3, rng)
    with pytest.raises(MechmodError, match="control"):
        C.describe(gs[0], 0, rng, control="nope")


def test_controls_rewrite_only_the_shape():
    for g in C.sample_groups(60, seed=8):
        for dt in range(3):
            base = C.describe_ex(g, dt, np.random.default_rng([1, g.index, dt]))
            ti = C.describe_ex(g, dt, np.random.default_rng([1, g.index, dt]), "text_irrelevant")
            ii = C.describe_ex(g, dt, np.random.default_rng([1, g.index, dt]), "image_irrelevant")
            # text_irrelevant: another drawn shape in the description only
            assert ti.described_shape in C.TARGET_SHAPES and ti.described_shape != g.target_shape
            assert g.target_shape not in _words(ti.text) and ti.asked_shape == g.target_shape
            assert re.sub(rf"\b{ti.described_shape}\b", g.target_shape, ti.text) == base.text
            # image_irrelevant: a never-drawn shape in the description and the question
            assert ii.described_shape == ii.asked_shape and ii.asked_shape in C.CONTROL_SHAPES
            assert g.target_shape not in _words(ii.text + C.question_for(ii.asked_shape))
            assert re.sub(rf"\b{ii.described_shape}\b", g.target_shape, ii.text) == base.text
