"""Writing the attribute set to a dataset directory (``mechmod dataset
attribute``), and the row and manifest parts the CLEVR loader shares."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from mechmod.data.attribute.render import ATTR_TIERS, N_DV, render_scene
from mechmod.data.attribute.text import N_DT, TEXT_TIERS, AttrDescription, describe_attr_ex, question_attr
from mechmod.data.attribute.vocabulary import LABELS, sample_attr_groups
from mechmod.data.schema import DatasetDir, dataset_counts, mechmod_version, png_bytes
from mechmod.data.writer import _progress, check_groups, check_seed, parse_tiers
from mechmod.errors import MechmodError
from mechmod.names import ATTRIBUTE_SUBSETS, ATTRIBUTE_TASKS as TASKS, CONTROLS


def case_row(*, case_id, group_id, task, dv, dt, control, image_id, image_path, d: AttrDescription,
             answer_vision, answer_text, seed, extra) -> dict:
    """One attribute case (schema columns, then the description's choices and ``extra``)."""
    return {
        "case_id": case_id, "group_id": group_id, "task": task, "dv": int(dv), "dt": int(dt), "control": control,
        "image_id": image_id, "image_path": image_path, "description": d.text,
        "question": question_attr(task, d.asked), "answer_vision": answer_vision, "answer_text": answer_text,
        "candidates": list(LABELS[task]), "seed": int(seed),
        "described_referent": d.described, "asked_referent": d.asked, "bridge": d.bridge,
        "knowledge_thing": d.thing, "template": d.template, **extra,
    }


def _group_cases(args):
    """Everything of one group: (rows, [(rel, png bytes)]). Pure function of args."""
    g, seed, dvs, dts, controls = args
    rows, images = [], []
    salt = 0 if g.task == "shape" else 1
    descs = {}
    for dt in dts:
        for ctrl in controls:
            rng = np.random.default_rng([seed, 50 + salt, g.index, 1000 + dt])
            descs[dt, ctrl] = describe_attr_ex(g, dt, rng, ctrl)
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
                rows.append(case_row(case_id=f"{image_id}-dt{dt}-{ctrl}", group_id=g.group_id, task=g.task, dv=dv,
                                     dt=dt, control=ctrl, image_id=image_id, image_path=rel, d=descs[dt, ctrl],
                                     answer_vision=g.vision_answer, answer_text=g.text_answer, seed=seed,
                                     extra=extra))
    return rows, images


def subset_tasks(subset: str) -> tuple[str, ...]:
    """The tasks of ``subset`` (one of ``ATTRIBUTE_SUBSETS``)."""
    if subset not in ATTRIBUTE_SUBSETS:
        raise MechmodError(f"unknown subset {subset!r}; choose shape, material or both")
    return TASKS if subset == "both" else (subset,)


def attribute_manifest_common() -> dict:
    """Manifest entries every attribute dataset has (labels, tier tables)."""
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
    groups = check_groups(groups)
    seed = check_seed(seed)
    tasks = subset_tasks(subset)
    dvs = parse_tiers(dv, N_DV, "visual (dv)")
    dts = parse_tiers(dt, N_DT, "text (dt)")
    ctrls = CONTROLS if controls else ("none",)
    all_groups = [g for task in tasks for g in sample_attr_groups(groups, seed, task, shapes=shapes)]
    rows: list[dict] = []
    with DatasetDir(out) as ds:
        for g in _progress(all_groups, len(all_groups), progress, "attribute groups"):
            g_rows, imgs = _group_cases((g, seed, dvs, dts, ctrls))
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
