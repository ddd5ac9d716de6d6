"""Attribute set: rendered CLEVR-like scenes measured on pixels and masks
(tiers, object sizes, shapes that look like their shape, metal that shines),
text tiers and controls, the writer, and the loader for a local CLEVR copy
(on a tiny fake CLEVR directory)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mechmod.data import attribute as A
from mechmod.data import generate_attribute, load_cases, load_clevr
from mechmod.data.knowledge import MATERIAL_KNOWLEDGE, SHAPE_KNOWLEDGE
from mechmod.errors import MechmodError


@pytest.fixture(scope="module")
def scenes():
    out = []
    for task in A.TASKS:
        for g in A.sample_attr_groups(6, seed=2, task=task):
            for dv in range(A.N_DV):
                img, info = A.render_scene(g, dv, np.random.default_rng([3, g.index, dv, len(task)]),
                                           return_masks=True)
                out.append((g, dv, img, info))
    return out


def test_groups_balanced():
    for task, labels in A.LABELS.items():
        gs = A.sample_attr_groups(60, seed=1, task=task)
        assert all(g.vision_answer != g.text_answer for g in gs)
        for attr in ("vision_answer", "text_answer"):
            c = Counter(getattr(g, attr) for g in gs)
            assert set(c) == set(labels) and max(c.values()) - min(c.values()) <= 1
        assert len(Counter((g.vision_answer, g.text_answer) for g in gs)) == len(labels) * (len(labels) - 1)
        for g in gs:
            assert (g.target_shape if task == "shape" else g.target_material) == g.vision_answer
            assert g.absent_color != g.target_color
    assert A.sample_attr_groups(10, 1, "shape") == A.sample_attr_groups(20, 1, "shape")[:10]


def test_tiers_object_counts_and_sizes(scenes):
    areas = {dv: [] for dv in range(A.N_DV)}
    for g, dv, img, info in scenes:
        lo, hi = A.ATTR_TIERS[dv].n_objects
        assert img.size == (320, 240) and img.mode == "RGB"
        assert lo <= info.n_objects <= hi and len(info.masks) == info.n_objects
        assert all(o.size == A.ATTR_TIERS[dv].size for o in info.objects)
        assert info.target_visible_fraction >= 0.6
        # every object shows: its mask minus later (nearer) objects' masks keeps >= 35%
        for i, m in enumerate(info.masks):
            later = np.zeros_like(m)
            for m2 in info.masks[i + 1:]:
                later |= m2
            assert (m & ~later).sum() >= 0.35 * m.sum()
        areas[dv].append(int(info.masks[info.target].sum()))
    large = np.median(areas[0] + areas[1])
    small = np.median(areas[2] + areas[3])
    assert large >= 2.5 * small, (large, small)


def test_scene_constraints(scenes):
    for g, dv, img, info in scenes:
        t = info.objects[info.target]
        assert (t.shape, t.material, t.color) == (g.target_shape, g.target_material, g.target_color)
        others = [o for i, o in enumerate(info.objects) if i != info.target]
        assert all(o.color not in (g.target_color, g.absent_color) for o in others)  # referent unique
        if g.task == "shape":
            assert all(o.shape != g.text_answer for o in others)  # conflicting shape absent


def _silhouette_stats(m: np.ndarray):
    ys, xs = np.nonzero(m)
    box = m[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    fill = box.mean()
    aspect = box.shape[1] / box.shape[0]
    mirror_iou = (box & box[:, ::-1]).sum() / (box | box[:, ::-1]).sum()
    return fill, aspect, mirror_iou


def test_shapes_look_like_their_shape(scenes):
    """Silhouettes from the masks (which are the pixels the object covers):
    sphere = round disc, cylinder = symmetric body with rounded ends,
    cube = asymmetric hexagon (three faces seen from one side)."""
    for g, dv, img, info in scenes:
        for o, m in zip(info.objects, info.masks):
            if m.sum() < 250:
                continue
            fill, aspect, sym = _silhouette_stats(m)
            if o.shape == "sphere":
                assert 0.72 <= fill <= 0.84 and 0.88 <= aspect <= 1.12 and sym > 0.9, (fill, aspect, sym)
            elif o.shape == "cylinder":
                assert 0.84 <= fill <= 0.98 and sym > 0.9, (fill, sym)
            else:
                assert 0.82 <= fill <= 0.96 and sym < 0.9, (fill, sym)


def test_cube_shows_three_faces(scenes):
    """The pixels of a cube's three face polygons differ in mean brightness by
    >= 10% (top, front and side take the light differently)."""
    from PIL import ImageDraw

    seen = 0
    for g, dv, img, info in scenes:
        lum = np.asarray(img).astype(float).mean(-1)
        owner = np.full(lum.shape, -1)
        for i, m in enumerate(info.masks):
            owner[m] = i
        for i, o in enumerate(info.objects):
            if o.shape != "cube" or o.material != "rubber" or info.masks[i].sum() < 300:
                continue
            means = []
            for pts in A.cube_faces(o).values():
                face = Image.new("L", img.size, 0)
                ImageDraw.Draw(face).polygon(pts, fill=1)
                from scipy.ndimage import binary_erosion

                core = binary_erosion(np.asarray(face, bool), iterations=2) & (owner == i)
                if core.sum() >= 20:
                    means.append(lum[core].mean())
            if len(means) == 3:
                diffs = [abs(a - b) / max(a, b) for j, a in enumerate(means) for b in means[j + 1:]]
                assert min(diffs) >= 0.1, means
                seen += 1
    assert seen >= 2


def test_metal_shines_rubber_does_not(scenes):
    shine = {"metal": [], "rubber": []}
    contrast = {"metal": [], "rubber": []}
    for g, dv, img, info in scenes:
        a = np.asarray(img).astype(int)
        owner = np.full(a.shape[:2], -1)
        for i, m in enumerate(info.masks):
            owner[m] = i
        for i, o in enumerate(info.objects):
            vis = owner == i
            if vis.sum() < 300:
                continue
            px = a[vis]
            white = (px.min(-1) >= 215).sum()
            shine[o.material].append(white)
            contrast[o.material].append(px.mean(-1).std() / max(px.mean(), 1))
    assert max(shine["rubber"]) == 0  # matte: no near-white highlight pixels
    assert np.mean([s >= 2 for s in shine["metal"]]) >= 0.9  # specular highlight
    assert np.median(contrast["metal"]) > 1.5 * np.median(contrast["rubber"])


def test_render_deterministic():
    g = A.sample_attr_groups(1, 0, "material")[0]
    a, ia = A.render_scene(g, 3, np.random.default_rng(5))
    b, ib = A.render_scene(g, 3, np.random.default_rng(5))
    assert a.tobytes() == b.tobytes() and ia == ib
    with pytest.raises(MechmodError, match="dv"):
        A.render_scene(g, 4, np.random.default_rng(0))


def _w(s):
    return re.findall(r"[a-z]+", s.lower())


def test_text_tiers_and_controls():
    for task in A.TASKS:
        for g in A.sample_attr_groups(24, seed=6, task=task):
            ref = g.referent
            for dt in range(A.N_DT):
                rng = lambda: np.random.default_rng([g.index, dt])  # noqa: E731
                d = A.describe_attr_ex(g, dt, rng(), "none")
                assert ref in d.text and d.asked == ref
                assert g.vision_answer not in _w(d.text)  # the image's answer is never stated
                if dt != 2:
                    assert g.text_answer in _w(d.text)
                if dt == 1:
                    assert d.bridge.split()[0] in A.ABSENT_COLORS and d.text.count(d.bridge) == 2
                if dt == 2:
                    table = SHAPE_KNOWLEDGE if task == "shape" else MATERIAL_KNOWLEDGE
                    assert d.thing in table[g.text_answer]
                if dt == 3:
                    assert any(p1 in d.text and p2 in d.text for p1, p2 in A.POSITIONS)
                    assert d.text.startswith("There is a")
                ti = A.describe_attr_ex(g, dt, rng(), "text_irrelevant")
                assert ref not in ti.text and ti.asked == ref and g.absent_color in ti.described
                assert ti.text.replace(ti.described, ref) == d.text
                ii = A.describe_attr_ex(g, dt, rng(), "image_irrelevant")
                assert ii.described == ii.asked and ii.asked.split()[0] in A.ABSENT_COLORS
                assert ref not in ii.text + A.question_attr(task, ii.asked)
                assert ii.text.replace(ii.described, ref) == d.text
    assert A.question_attr("material", "red cube") == \
        "What material is the red cube made of? Please use one word to answer this question."


def _files(d: Path):
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_generate_attribute_round_trip_and_bytes(tmp_path):
    out = generate_attribute(tmp_path / "a", groups=2, seed=1, subset="both", progress=False, dv="0,3")
    df = load_cases(out)
    assert set(df.task) == {"shape", "material"} and len(df) == 2 * 2 * 2 * 4 * 3
    assert set(df.dt) == {0, 1, 2, 3} and set(df.dv) == {0, 3}
    for _, r in df.iterrows():
        assert list(r.candidates) == list(A.LABELS[r.task])
        assert r.answer_vision in r.candidates and r.answer_text in r.candidates
    assert df.groupby(["group_id", "dv"]).image_path.nunique().eq(1).all()
    again = generate_attribute(tmp_path / "b", groups=2, seed=1, subset="both", progress=False, dv="0,3")
    assert _files(out) == _files(again)
    only = generate_attribute(tmp_path / "c", groups=1, seed=1, subset="material", progress=False, dt="0",
                              controls=False)
    d2 = load_cases(only)
    assert set(d2.task) == {"material"} and len(d2) == 4


# -- local CLEVR ------------------------------------------------------------------


def _fake_clevr(root: Path, split="val", n_scenes=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "scenes").mkdir(parents=True)
    (root / "images" / split).mkdir(parents=True)
    counts = [3, 4, 6, 7, 8, 10, 11, 5, 9]
    scenes = []
    for i in range(n_scenes):
        n = counts[i % len(counts)]
        objs = [{"shape": str(rng.choice(A.SHAPES)), "material": str(rng.choice(A.MATERIALS)),
                 "color": str(rng.choice(list(A.CLEVR_COLORS))), "size": str(rng.choice(A.SIZES)),
                 "3d_coords": [0.0, 0.0, 0.0], "pixel_coords": [0, 0, 0], "rotation": 0.0} for _ in range(n)]
        fname = f"CLEVR_{split}_{i:06d}.png"
        Image.new("RGB", (48, 32), tuple(int(x) for x in rng.integers(0, 255, 3))).save(root / "images" / split / fname)
        scenes.append({"image_index": i, "image_filename": fname, "split": split, "objects": objs})
    (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"info": {}, "scenes": scenes}))
    return root


def test_load_clevr(tmp_path):
    clevr = _fake_clevr(tmp_path / "CLEVR_v1.0")
    scenes = json.loads((clevr / "scenes" / "CLEVR_val_scenes.json").read_text())["scenes"]
    by_file = {s["image_filename"]: s for s in scenes}
    out = load_clevr(clevr, "val", tmp_path / "out", groups=3, seed=0, progress=False)
    df = load_cases(out)
    assert set(df.task) <= {"shape", "material"} and len(df) > 0
    for _, r in df.iterrows():
        sc = by_file[r.source.split(":")[-1]]
        n = len(sc["objects"])
        assert (r.dv == 0 and n in (3, 4) and r.target_size == "large") or \
               (r.dv == 1 and 6 <= n <= 8 and r.target_size == "large") or \
               (r.dv == 2 and 6 <= n <= 8 and r.target_size == "small") or \
               (r.dv == 3 and n >= 10 and r.target_size == "small")
        # the asked referent names exactly one object, whose attribute is answer_vision
        words = r.asked_referent.split() if r.control != "image_irrelevant" else None
        if words:
            match = [o for o in sc["objects"]
                     if all(w in (o["size"], o["color"], o["material"], o["shape"], "object") for w in words)]
            assert len(match) == 1, (r.asked_referent, sc["objects"])
            assert match[0][r.task] == r.answer_vision
        if r.control == "text_irrelevant":
            color = r.described_referent.split()[-2] if r.described_referent.split()[0] in A.SIZES \
                else r.described_referent.split()[0]
            assert color not in {o["color"] for o in sc["objects"]}
        assert (out / r.image_path).read_bytes() == (clevr / "images" / "val" / r.source.split(":")[-1]).read_bytes()
    # each (scene, task) used by one group at most
    assert df.groupby(["task", "source"]).group_id.nunique().max() == 1
    again = load_clevr(clevr, "val", tmp_path / "out2", groups=3, seed=0, progress=False)
    assert _files(out) == _files(again)


def test_load_clevr_errors(tmp_path):
    with pytest.raises(MechmodError, match="not a directory"):
        load_clevr(tmp_path / "nope", "val", tmp_path / "o")
    clevr = _fake_clevr(tmp_path / "C", n_scenes=9)
    with pytest.raises(MechmodError, match=r"CLEVR_train_scenes\.json"):
        load_clevr(clevr, "train", tmp_path / "o")
    p = clevr / "scenes" / "CLEVR_val_scenes.json"
    data = json.loads(p.read_text())
    data["scenes"][2]["objects"][0]["shape"] = "torus"
    p.write_text(json.dumps(data))
    with pytest.raises(MechmodError, match=r"scene #2 .*shape 'torus'"):
        load_clevr(clevr, "val", tmp_path / "o")
    data["scenes"] = [s for s in data["scenes"] if len(s["objects"]) in (5, 9)]
    p.write_text(json.dumps(data))
    with pytest.raises(MechmodError, match="no scene"):
        load_clevr(clevr, "val", tmp_path / "o")
    assert not (tmp_path / "o").exists()
