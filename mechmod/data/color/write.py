"""Write the colour-recognition conflict set to a dataset directory
(``mechmod dataset color``).

Per group (one target shape, a visual colour, a different textual colour):

* one image per visual tier dv (default all 14); ``image_id`` =
  ``color-s{seed}-g{i}-dv{dv}``, file ``images/{image_id}.png``;
* one description per text tier dt (default 0, 1, 2), the same for every dv;
* control ``none``: one case per (dv, dt);
* with ``controls=True`` (default) also ``text_irrelevant`` and
  ``image_irrelevant`` for **every** (dv, dt): 3 x 14 x 3 = 126 cases per
  group. The controls reuse the template, bridge shape and knowledge thing of
  the ``none`` description; only the shape changes (``text_irrelevant``: in
  the description only, to another drawn shape; ``image_irrelevant``: in the
  description and the question, to a never-drawn shape).

``answer_vision`` / ``answer_text`` are the group's colours in every row,
controls included; a model that ignores the irrelevant modality answers
``answer_vision`` on ``text_irrelevant`` rows and ``answer_text`` on
``image_irrelevant`` rows. With ``consistent=True`` (opt-in, off by default so
default datasets keep their bytes) also control ``consistent`` for every (dv,
dt): the ``none`` description with the image's colour (answer_vision) in place
of the text colour, the same question: image and description agree. The
original text tier (no description) is the vision-only input of every case
(image + question), so it has no rows of its own.

Randomness: groups from :func:`mechmod.data.color.sample_groups`; the image
of (group i, dv) draws from ``default_rng([seed, i, dv])`` and the
descriptions of (group i, dt) from ``default_rng([seed, i, 1000 + dt])``, so
every file depends only on the seed (not on order, tiers chosen, or worker
count).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from mechmod.data.color.render import N_DV, TIERS, render_image
from mechmod.data.color.text import N_DT, TEXT_TIERS, describe_ex, question_for
from mechmod.data.color.vocabulary import COLORS, TARGET_SHAPES, sample_groups
from mechmod.data.schema import DatasetDir, dataset_counts, mechmod_version, png_bytes
from mechmod.data.writer import _progress, check_groups, check_seed, parse_tiers
from mechmod.errors import MechmodError
from mechmod.names import CONTROLS, OPT_IN_CONTROLS


def _group_cases(args):
    """Everything of one group: (rows, [(rel, png bytes)]). Pure function of args."""
    g, seed, dvs, dts, controls = args
    candidates = list(COLORS)
    images = []
    rows = []
    descs = {}
    for dt in dts:
        for ctrl in controls:
            descs[dt, ctrl] = describe_ex(g, dt, np.random.default_rng([seed, g.index, 1000 + dt]), ctrl)
    for dv in dvs:
        img, info = render_image(g, dv, np.random.default_rng([seed, g.index, dv]))
        image_id = f"{g.group_id}-dv{dv:02d}"
        rel = f"images/{image_id}.png"
        images.append((rel, png_bytes(img)))
        for dt in dts:
            for ctrl in controls:
                d = descs[dt, ctrl]
                rows.append({
                    "case_id": f"{image_id}-dt{dt}-{ctrl}",
                    "group_id": g.group_id,
                    "task": "color",
                    "dv": dv,
                    "dt": dt,
                    "control": ctrl,
                    "image_id": image_id,
                    "image_path": rel,
                    "description": d.text,
                    "question": question_for(d.asked_shape),
                    "answer_vision": g.vision_color,
                    "answer_text": g.text_color,
                    "candidates": candidates,
                    "seed": seed,
                    # extras
                    "target_shape": g.target_shape,
                    "described_shape": d.described_shape,
                    "asked_shape": d.asked_shape,
                    "bridge_shape": d.bridge_shape,
                    "knowledge_thing": d.thing,
                    "template": d.template,
                    "image_width": info.size[0],
                    "image_height": info.size[1],
                    "target_area_px": info.target_area_px,
                    "target_visible_fraction": round(info.visible_fraction, 6),
                    "n_distractors": info.n_distractors,
                    "n_overlapping": info.n_overlapping,
                })
    return rows, images


def generate_color(out: str | os.PathLike, groups: int = 400, seed: int = 0, controls: bool = True,
                   progress: bool = True, dv: Iterable[int] | str | None = None,
                   dt: Iterable[int] | str | None = None, colors: Iterable[str] | None = None,
                   shapes: Iterable[str] | None = None, workers: int = 1, consistent: bool = False) -> Path:
    """Generate the colour conflict set into ``out`` (must not exist or be
    empty) and return its path. ``dv`` / ``dt`` restrict the tiers (e.g.
    ``"0-4"``), ``colors`` / ``shapes`` the answer colours and target shapes.
    ``workers > 1`` renders groups in parallel processes (same bytes).
    ``consistent`` adds the opt-in ``consistent`` control (see above)."""
    groups = check_groups(groups)
    seed = check_seed(seed)
    dvs = parse_tiers(dv, N_DV, "visual (dv)")
    dts = parse_tiers(dt, N_DT, "text (dt)")
    gs = sample_groups(groups, seed, colors=colors, shapes=shapes)
    ctrls = (CONTROLS if controls else ("none",)) + (OPT_IN_CONTROLS if consistent else ())
    if int(workers) < 1:
        raise MechmodError(f"workers must be >= 1, got {workers!r}")
    tasks = [(g, seed, dvs, dts, ctrls) for g in gs]
    rows: list[dict] = []
    with DatasetDir(out) as ds:
        if workers > 1:
            with mp.get_context("spawn").Pool(int(workers)) as pool:
                results = pool.imap(_group_cases, tasks, chunksize=4)
                for g_rows, imgs in _progress(results, len(tasks), progress, "color groups"):
                    for rel, data in imgs:
                        ds.write_image(rel, data=data)
                    rows += g_rows
        else:
            for t in _progress(tasks, len(tasks), progress, "color groups"):
                g_rows, imgs = _group_cases(t)
                for rel, data in imgs:
                    ds.write_image(rel, data=data)
                rows += g_rows
        manifest = {
            "task": "color",
            "seed": seed,
            "generator": "mechmod.data.generate_color",
            "mechmod_version": mechmod_version(),
            "options": {
                "groups": groups,
                "controls": list(ctrls),
                "dv": list(dvs),
                "dt": list(dts),
                "colors": sorted({g.vision_color for g in gs} | {g.text_color for g in gs}, key=list(COLORS).index),
                "shapes": sorted({g.target_shape for g in gs}, key=list(TARGET_SHAPES).index),
            },
            "candidates": list(COLORS),
            "colors_rgb": {k: list(v) for k, v in COLORS.items()},
            "tiers": [{"dv": t.dv, "size": list(t.size), "target_px": list(t.target_px) if t.target_px else None,
                       "target_frac": list(t.target_frac) if t.target_frac else None,
                       "n_distractors": t.n_distractors, "n_overlapping": t.n_overlapping,
                       "occlusion": t.occlusion, "distractor_px": list(t.distractor_px)} for t in TIERS],
            "text_tiers": {str(k): v for k, v in TEXT_TIERS.items()},
            "notes": ("dt -1 (original, no description) is the vision-only input of every case: image + question. "
                      "Controls cover every (dv, dt) when enabled. answer_vision/answer_text are the group's "
                      "colours in every row; the expected answer is answer_vision for text_irrelevant and "
                      "answer_text for image_irrelevant."),
            "counts": {
                "vision_color": dataset_counts(g.vision_color for g in gs),
                "text_color": dataset_counts(g.text_color for g in gs),
                "target_shape": dataset_counts(g.target_shape for g in gs),
                "control": dataset_counts(r["control"] for r in rows),
            },
        }
        return ds.finish(rows, manifest)
