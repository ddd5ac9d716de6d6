"""Attribute conflict groups from a local CLEVR copy (CLEVR cannot be
downloaded here; point this at one you have).

Expected layout (the official ``CLEVR_v1.0`` layout)::

    CLEVR_DIR/scenes/CLEVR_{split}_scenes.json
        {"scenes": [{"image_filename": "CLEVR_val_000000.png",
                     "objects": [{"shape": "cube", "material": "rubber",
                                  "color": "red", "size": "large", ...}, ...]},
                    ...]}
    CLEVR_DIR/images/{split}/CLEVR_{split}_NNNNNN.png

Tiers (dv) from the scene's object count and the target's size, as in
:mod:`mechmod.data.attribute`: 0 = 3-4 objects and a large target, 1 = 6-8
and large, 2 = 6-8 and small, 3 = >= 10 and small; other scenes are not used
for that target. A target must be nameable uniquely without the asked
attribute: colour, else size + colour, else colour + the other attribute,
else all three (e.g. "large red object" for the shape task, "small red cube"
for the material task); others are skipped.

A group = one task, a (visual, textual) answer pair (balanced like the
generated sets) and one scene per tier whose target has the visual answer;
each (scene, task) is used by at most one group. When a tier runs out of
scenes the group goes without it (the manifest counts missing tiers).
Descriptions and controls follow :func:`mechmod.data.attribute.text.attr_text`;
the text_irrelevant referent takes a CLEVR colour absent from that scene
(``white`` if all 8 are present). Images are copied into ``OUT/images/clevr/``
so the dataset is self-contained.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mechmod.data.attribute.render import ATTR_TIERS
from mechmod.data.attribute.text import N_DT, attr_text
from mechmod.data.attribute.vocabulary import CLEVR_COLORS, LABELS, MATERIALS, SHAPES, SIZES
from mechmod.data.attribute.write import attribute_manifest_common, case_row, subset_tasks
from mechmod.data.sampling import balanced_pairs
from mechmod.data.schema import DatasetDir, dataset_counts, mechmod_version, open_image
from mechmod.data.writer import _progress, check_groups, check_seed
from mechmod.errors import MechmodError
from mechmod.names import ATTRIBUTE_TASKS as TASKS, CONTROLS

FALLBACK_IRRELEVANT = "white"


def _tier(n_objects: int, size: str) -> int | None:
    if 3 <= n_objects <= 4 and size == "large":
        return 0
    if 6 <= n_objects <= 8:
        return 1 if size == "large" else 2
    if n_objects >= 10 and size == "small":
        return 3
    return None


def _referent_words(task: str, objs: list[dict], i: int) -> tuple[str, ...] | None:
    """Attributes (in phrase order) naming object i uniquely without the task attribute."""
    other = "material" if task == "shape" else "shape"
    o = objs[i]
    for keys in (("color",), ("size", "color"), ("color", other), ("size", "color", other)):
        if sum(all(p[k] == o[k] for k in keys) for p in objs) == 1:
            return keys
    return None


def _make_ref(task: str, keys: tuple[str, ...], obj: dict):
    """color -> referent phrase with the target's other attributes."""

    def make(color: str) -> str:
        words = []
        for k in ("size", "color", "material"):
            if k == "color":
                words.append(color)
            elif k in keys and k != "shape":
                words.append(obj[k])
        noun = obj["shape"] if task == "material" else "object"
        return " ".join(words + [noun])

    return make


def _read_scenes(clevr_dir: Path, split: str) -> tuple[list[dict], Path]:
    if not clevr_dir.is_dir():
        raise MechmodError(f"{clevr_dir}: not a directory; pass a CLEVR_v1.0 directory (scenes/ and images/)")
    spath = clevr_dir / "scenes" / f"CLEVR_{split}_scenes.json"
    idir = clevr_dir / "images" / split
    if not spath.is_file():
        raise MechmodError(f"{spath}: not found; expected the CLEVR layout scenes/CLEVR_{{split}}_scenes.json")
    if not idir.is_dir():
        raise MechmodError(f"{idir}: not found; expected the CLEVR layout images/{{split}}/")
    try:
        data = json.loads(spath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MechmodError(f"{spath}: not valid JSON ({err})") from None
    scenes = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(scenes, list):
        raise MechmodError(f"{spath}: no 'scenes' list")
    for k, sc in enumerate(scenes):
        if not isinstance(sc, dict) or "image_filename" not in sc or not isinstance(sc.get("objects"), list):
            raise MechmodError(f"{spath}: scene #{k} lacks image_filename or objects")
        for j, o in enumerate(sc["objects"]):
            for key, allowed in (("shape", SHAPES), ("material", MATERIALS), ("color", tuple(CLEVR_COLORS)),
                                 ("size", SIZES)):
                if not isinstance(o, dict) or o.get(key) not in allowed:
                    raise MechmodError(f"{spath}: scene #{k} ({sc['image_filename']}) object #{j}: {key} "
                                       f"{o.get(key) if isinstance(o, dict) else o!r} not one of {allowed}")
    return scenes, idir


def load_clevr(clevr_dir: str | os.PathLike, split: str = "val", out: str | os.PathLike | None = None,
               groups: int = 300, seed: int = 0, subset: str = "both", controls: bool = True,
               progress: bool = True) -> Path:
    """Build attribute conflict groups from ``clevr_dir`` (layout above) and
    write them to ``out`` in the mechmod schema; returns ``out``."""
    if out is None:
        raise MechmodError("load_clevr needs an output directory (out=...)")
    groups = check_groups(groups)
    seed = check_seed(seed)
    tasks = subset_tasks(subset)
    clevr_dir = Path(clevr_dir)
    scenes, idir = _read_scenes(clevr_dir, split)
    ctrls = CONTROLS if controls else ("none",)

    built: list[dict] = []  # group records
    missing_tiers = 0
    for ti, task in enumerate(tasks):
        task_groups, missing = _task_groups(scenes, task, ti, groups, seed)
        built += task_groups
        missing_tiers += missing
    if not built:
        raise MechmodError(f"{clevr_dir}: no scene of split {split!r} yields a usable target (need scenes with "
                           "3-4, 6-8 or >= 10 objects and a uniquely nameable object)")

    rows: list[dict] = []
    copied: dict[int, str] = {}
    with DatasetDir(out) as ds:
        for g in _progress(built, len(built), progress, "clevr groups"):
            for dv, (si, oi, keys) in sorted(g["members"].items()):
                sc = scenes[si]
                fname = sc["image_filename"]
                if si not in copied:
                    open_image(idir, fname)  # decodable, inside the folder, not a bomb
                    rel = f"images/clevr/{split}/{Path(fname).name}"
                    ds.copy_image(rel, idir / fname)
                    copied[si] = rel
                rel = copied[si]
                rows += _member_rows(g, dv, sc, oi, keys, rel, split, seed, ctrls)
        manifest = {
            "task": tasks[0] if len(tasks) == 1 else "attribute",
            "tasks": list(tasks),
            "seed": seed,
            "generator": "mechmod.data.load_clevr",
            "mechmod_version": mechmod_version(),
            "source": {"clevr_dir_name": clevr_dir.name, "split": split, "n_scenes": len(scenes)},
            "options": {"groups_per_task": groups, "subset": subset, "controls": list(ctrls)},
            **attribute_manifest_common(),
            "groups_requested": groups * len(tasks),
            "missing_tiers": missing_tiers,
            "notes": ("Groups from a local CLEVR copy; target_area_px and target_visible_fraction are -1 "
                      "(unknown without masks)."),
            "counts": {"control": dataset_counts(r["control"] for r in rows),
                       "dv": dataset_counts(r["dv"] for r in rows)},
        }
        return ds.finish(rows, manifest)


def _task_groups(scenes: list[dict], task: str, ti: int, groups: int, seed: int) -> tuple[list[dict], int]:
    """The group records of one task (its ``ti``-th), and how many of their
    tiers found no unused scene."""
    # candidates[(tier, label)] -> list of (scene index, object index, referent keys)
    cands: dict[tuple[int, str], list[tuple[int, int, tuple[str, ...]]]] = {}
    for si, sc in enumerate(scenes):
        objs = sc["objects"]
        for oi, o in enumerate(objs):
            dv = _tier(len(objs), o["size"])
            if dv is None:
                continue
            keys = _referent_words(task, objs, oi)
            if keys is None:
                continue
            cands.setdefault((dv, o[task]), []).append((si, oi, keys))
    rng = np.random.default_rng([seed, 77, ti])
    for key in sorted(cands):
        order = rng.permutation(len(cands[key]))
        cands[key] = [cands[key][i] for i in order]
    used: set[int] = set()
    built, missing_tiers = [], 0
    pairs = balanced_pairs(LABELS[task], groups, seed, 91 + ti)
    width = max(4, len(str(groups - 1)))
    for gi, (v, t) in enumerate(pairs):
        members = {}
        for dv in range(len(ATTR_TIERS)):
            pool = cands.get((dv, v), [])
            while pool and pool[0][0] in used:
                pool.pop(0)
            if pool:
                si, oi, keys = pool.pop(0)
                used.add(si)
                members[dv] = (si, oi, keys)
            else:
                missing_tiers += 1
        if not members:
            continue
        built.append({"task": task, "group_id": f"clevr-{task}-s{seed}-g{gi:0{width}d}", "index": gi,
                      "v": v, "t": t, "members": members})
    return built, missing_tiers


def _member_rows(g: dict, dv: int, sc: dict, oi: int, keys: tuple[str, ...], rel: str, split: str, seed: int,
                 ctrls) -> list[dict]:
    """The cases of group ``g`` at tier ``dv``: object ``oi`` of scene ``sc``
    (image at ``rel``), every text tier and control."""
    task = g["task"]
    salt = TASKS.index(task)
    fname = sc["image_filename"]
    image_id = f"clevr-{split}-{Path(fname).stem}"
    objs = sc["objects"]
    obj = objs[oi]
    present = {o["color"] for o in objs}
    absent = [c for c in CLEVR_COLORS if c not in present]
    make = _make_ref(task, keys, obj)
    rows = []
    for dt in range(N_DT):
        drng_seed = [seed, 60 + salt, g["index"], dv, 1000 + dt]
        irr = absent[int(np.random.default_rng(drng_seed + [1]).integers(len(absent)))] \
            if absent else FALLBACK_IRRELEVANT
        for ctrl in ctrls:
            d = attr_text(task, make, obj["color"], g["t"], dt, np.random.default_rng(drng_seed), ctrl,
                          irrelevant_color=irr, answer_vision=g["v"])
            extra = {"target_shape": obj["shape"], "target_material": obj["material"],
                     "target_color": obj["color"], "target_size": obj["size"],
                     "n_objects": len(objs), "target_area_px": -1, "target_visible_fraction": -1.0,
                     "source": f"clevr:{split}:{fname}"}
            rows.append(case_row(case_id=f"{g['group_id']}-dv{dv}-dt{dt}-{ctrl}", group_id=g["group_id"],
                                 task=task, dv=dv, dt=dt, control=ctrl, image_id=image_id,
                                 image_path=rel, d=d, answer_vision=g["v"], answer_text=g["t"],
                                 seed=seed, extra=extra))
    return rows
