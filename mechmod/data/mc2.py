"""Loader for a local copy of the MC2 benchmark ("Evaluating and Steering
Modality Preferences in MLLMs", arXiv 2505.20977): colour, object,
attribute and position reasoning with a conflicting text. MC2 cannot be
downloaded here, and its release format is not fixed by the paper, so
mechmod reads this documented layout (convert a release to it with a few
lines of Python):

Expected files
--------------
::

    MC2_DIR/mc2.jsonl        one JSON object per line (or MC2_DIR/mc2.json:
                             a JSON list of the same objects)
    MC2_DIR/<image paths>    the images the records name (PNG/JPEG)

Record fields (names in brackets are accepted aliases):

=================  ========  ==================================================
field              required  meaning
=================  ========  ==================================================
``id``             yes       unique record id (letters, digits, ``-_.``)
``task``           yes       ``color``, ``object``, ``attribute``, ``position``
                             (any lower-case word is accepted)
``image``          yes       image path relative to MC2_DIR
``question``       yes       the question, e.g. "What color is the car?"
``answer_vision``  yes       [``vision_answer``] the answer the image supports
``answer_text``    yes       [``text_answer``] the answer the text supports
``description``    yes       [``conflict_text``, ``context``] the conflicting text
``options``        no        [``candidates``] the answer set; default: all
                             answers of that task in the file
``dv`` / ``dt``    no        integer difficulty tiers (default 0)
``control``        no        ``none`` (default), ``text_irrelevant``,
                             ``image_irrelevant``
``group``          no        group id (default: the record id)
=================  ========  ==================================================

Answers and options are lower-cased and stripped. The question gets the
one-word command ("Please use one word to answer this question.") appended
unless it already ends with it; when an answer has several words the
command is "Please answer with a short phrase." instead. Images are copied
to ``OUT/images/mc2/`` (same relative path). Errors name the file and line.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mechmod.data.schema import mechmod_version
from mechmod.errors import MechmodError

COMMAND = "Please use one word to answer this question."
COMMAND_PHRASE = "Please answer with a short phrase."
ALIASES = {
    "answer_vision": ("answer_vision", "vision_answer"),
    "answer_text": ("answer_text", "text_answer"),
    "description": ("description", "conflict_text", "context"),
    "options": ("options", "candidates"),
}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _get(rec: dict, name: str):
    for k in ALIASES.get(name, (name,)):
        if k in rec:
            return rec[k]
    return None


def _records(mc2_dir: Path) -> tuple[Path, list[tuple[int, dict]]]:
    if not mc2_dir.is_dir():
        raise MechmodError(f"{mc2_dir}: not a directory; pass the folder holding mc2.jsonl (see mechmod.data.mc2)")
    jl, js = mc2_dir / "mc2.jsonl", mc2_dir / "mc2.json"
    out: list[tuple[int, dict]] = []
    if jl.is_file():
        for ln, line in enumerate(jl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise MechmodError(f"{jl}:{ln}: not valid JSON ({err.msg})") from None
            out.append((ln, rec))
        return jl, out
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise MechmodError(f"{js}: not valid JSON ({err})") from None
        if not isinstance(data, list):
            raise MechmodError(f"{js}: expected a JSON list of records")
        return js, [(i + 1, r) for i, r in enumerate(data)]
    raise MechmodError(f"{mc2_dir}: neither mc2.jsonl nor mc2.json found (see mechmod.data.mc2 for the format)")


def _label(x, where: str, field: str) -> str:
    if not isinstance(x, str) or not x.strip():
        raise MechmodError(f"{where}: {field} must be a non-empty string, got {x!r}")
    return " ".join(x.strip().lower().split())


def load_mc2(mc2_dir: str | os.PathLike, out: str | os.PathLike, seed: int = 0, progress: bool = True) -> Path:
    """Convert the MC2 records in ``mc2_dir`` (format above) to a mechmod
    dataset at ``out``; returns ``out``."""
    from mechmod.data.schema import DatasetDir, _check_rel, dataset_counts, open_image
    from mechmod.data.writer import _progress, check_seed

    seed = check_seed(seed)
    mc2_dir = Path(mc2_dir)
    src, recs = _records(mc2_dir)
    if not recs:
        raise MechmodError(f"{src}: no records")
    parsed = []
    seen: set[str] = set()
    for ln, rec in recs:
        where = f"{src}:{ln}"
        if not isinstance(rec, dict):
            raise MechmodError(f"{where}: expected a JSON object")
        for f in ("id", "task", "image", "question", "answer_vision", "answer_text", "description"):
            if _get(rec, f) is None:
                raise MechmodError(f"{where}: missing field {f!r}" + (f" (or {', '.join(ALIASES[f][1:])})"
                                                                       if f in ALIASES else ""))
        rid = str(rec["id"])
        if not _ID.match(rid):
            raise MechmodError(f"{where}: id {rid!r} must be letters, digits, '-', '_' or '.'")
        if rid in seen:
            raise MechmodError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        task = _label(rec["task"], where, "task")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", task):
            raise MechmodError(f"{where}: task {task!r} must be one lower-case word")
        try:
            image = _check_rel(str(rec["image"]), "image")
        except MechmodError as err:
            raise MechmodError(f"{where}: {err}") from None
        control = rec.get("control", "none")
        if control not in ("none", "text_irrelevant", "image_irrelevant"):
            raise MechmodError(f"{where}: control {control!r} not one of none, text_irrelevant, image_irrelevant")
        tiers = {}
        for k in ("dv", "dt"):
            v = rec.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, int):
                raise MechmodError(f"{where}: {k} must be an integer, got {v!r}")
            tiers[k] = v
        question = _get(rec, "question")
        if not isinstance(question, str) or not question.strip():
            raise MechmodError(f"{where}: question must be a non-empty string")
        desc = _get(rec, "description")
        if not isinstance(desc, str):
            raise MechmodError(f"{where}: description must be a string")
        opts = _get(rec, "options")
        if opts is not None:
            if not isinstance(opts, list) or not opts:
                raise MechmodError(f"{where}: options must be a non-empty list of strings")
            opts = [_label(o, where, "option") for o in opts]
        parsed.append({"ln": ln, "id": rid, "task": task, "image": image, "question": question.strip(),
                       "description": desc.strip(), "av": _label(_get(rec, "answer_vision"), where, "answer_vision"),
                       "at": _label(_get(rec, "answer_text"), where, "answer_text"), "options": opts,
                       "control": control, "group": str(rec.get("group", rid)), **tiers})
    labels: dict[str, set[str]] = {}
    for p in parsed:
        labels.setdefault(p["task"], set()).update({p["av"], p["at"]})

    rows = []
    with DatasetDir(out) as ds:
        done: dict[str, str] = {}
        for p in _progress(parsed, len(parsed), progress, "mc2 records"):
            where = f"{src}:{p['ln']}"
            if p["image"] not in done:
                try:
                    open_image(mc2_dir, p["image"])
                except MechmodError as err:
                    raise MechmodError(f"{where}: {err}") from None
                rel = f"images/mc2/{p['image']}"
                ds.copy_image(rel, mc2_dir / p["image"])
                done[p["image"]] = rel
            q = p["question"]
            one_word = " " not in p["av"] and " " not in p["at"]
            cmd = COMMAND if one_word else COMMAND_PHRASE
            if not q.endswith(cmd):
                q = f"{q} {cmd}"
            rows.append({
                "case_id": f"mc2-{p['id']}", "group_id": f"mc2-{p['group']}", "task": p["task"], "dv": p["dv"],
                "dt": p["dt"], "control": p["control"], "image_id": f"mc2-{Path(p['image']).with_suffix('')}",
                "image_path": done[p["image"]], "description": p["description"], "question": q,
                "answer_vision": p["av"], "answer_text": p["at"],
                "candidates": p["options"] or sorted(labels[p["task"]]), "seed": seed, "source": f"mc2:{p['id']}",
            })
        manifest = {
            "task": "mc2",
            "tasks": sorted(labels),
            "seed": seed,
            "generator": "mechmod.data.load_mc2",
            "mechmod_version": mechmod_version(),
            "source": {"file": src.name, "n_records": len(parsed)},
            "counts": {"task": dataset_counts(r["task"] for r in rows)},
        }
        return ds.finish(rows, manifest)
