"""Loader for the released files of the MC2 benchmark ("Evaluating and
Steering Modality Preferences in MLLMs", arXiv 2505.20977), e.g.
``data/evaluate_final_text_error1.json`` of the authors' Modality-Preference
repository, with the COCO images they name.

Input
-----
One or more release files, each a JSON list of records (other keys are
ignored)::

    {"image_id": "000000046962", "task": "activity_recognition",
     "question": "What are the sheep doing?", "answer_vision": "eating",
     "answer_text": "playing in a field", "context": "Several sheep ..."}

and one or more folders holding COCO images (e.g. ``val2014/`` and
``train2014/``). The image of ``image_id`` is the first of
``{id}.jpg``, ``COCO_val2014_{id}.jpg``, ``COCO_train2014_{id}.jpg`` and the
same names with ``.png``, in the first folder that has one (``id``
zero-padded to 12 digits).

Every field above must be a string: ``image_id`` 1 to 12 digits, ``task``
one word (letters, digits, ``_``; lower-cased), ``question`` and both
answers non-empty and at most 500 characters, ``context`` at most 2000. A record that breaks this stops the conversion
with one line naming the file and the record's index in its list (from 0).

Output (the schema of docs/architecture.md section 1)
-----------------------------------------------------
One case per record: ``case_id`` ``mc2-{file stem}-{index:05d}`` (its own
group), ``description`` the context, ``answer_vision`` / ``answer_text``
the answers lower-cased and stripped (" standing still" -> "standing
still"), ``candidates`` the two answers (the decoded answer is matched to
them by :func:`mechmod.phrases.match_phrase`), ``dv`` = ``dt`` = 0, control
``none``. The question gets the one-word command ("Please use one word to
answer this question.") when every answer of its task is one word, else
"Please answer with a short phrase."; images are copied to
``OUT/images/coco/{id}.jpg`` (or ``.png``).

A record whose image is in no folder, or whose two answers are the same
(after lower-casing), is skipped: one line through ``report`` names it and
what was looked for, and the manifest counts the skips. If no record has an image the conversion
stops with one line naming the folders.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable

from mechmod.data.schema import DatasetDir, dataset_counts, mechmod_version, open_image
from mechmod.data.writer import _progress, check_seed
from mechmod.errors import MechmodError

COMMAND = "Please use one word to answer this question."
COMMAND_PHRASE = "Please answer with a short phrase."
FIELDS = ("image_id", "task", "question", "answer_vision", "answer_text", "context")
MAX_CONTEXT = 2000
MAX_SHORT = 500  # question, answers and task
IMAGE_NAMES = ("{id}{ext}", "COCO_val2014_{id}{ext}", "COCO_train2014_{id}{ext}")
IMAGE_EXTS = (".jpg", ".png")

_IMAGE_ID = re.compile(r"[0-9]{1,12}")
_TASK = re.compile(r"[a-z][a-z0-9_]*")
_STEM_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _read(path: Path) -> list:
    if not path.is_file():
        raise MechmodError(f"{path}: not a file; pass a released MC2 JSON file such as "
                           "data/evaluate_final_text_error1.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MechmodError(f"{path}: not UTF-8 text; pass a released MC2 JSON file") from None
    except json.JSONDecodeError as err:
        raise MechmodError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise MechmodError(f"{path}: expected a JSON list of MC2 records, got a {type(data).__name__}")
    return data


def _check(rec, where: str) -> dict[str, str]:
    """The record's fields, validated (module docstring), or a MechmodError naming ``where``."""
    if not isinstance(rec, dict):
        raise MechmodError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    out = {}
    for f in FIELDS:
        if f not in rec:
            raise MechmodError(f"{where}: missing field {f!r} (an MC2 record has {', '.join(FIELDS)})")
        v = rec[f]
        if not isinstance(v, str):
            raise MechmodError(f"{where}: {f} must be a string, got {type(v).__name__} {str(v)[:40]!r}")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise MechmodError(f"{where}: {f} holds a character that is not valid Unicode text") from None
        limit = MAX_CONTEXT if f == "context" else MAX_SHORT
        if len(v) > limit:
            raise MechmodError(f"{where}: {f} is {len(v)} characters long, over the limit of {limit}")
        v = " ".join(v.split())
        if not v and f != "context":
            raise MechmodError(f"{where}: {f} is empty")
        out[f] = v
    if not _IMAGE_ID.fullmatch(out["image_id"]):
        raise MechmodError(f"{where}: image_id {out['image_id'][:40]!r} is not a COCO image id "
                           "(1 to 12 digits, e.g. '000000046962')")
    out["image_id"] = out["image_id"].zfill(12)
    for f in ("task", "answer_vision", "answer_text"):
        out[f] = out[f].lower()
    if not _TASK.fullmatch(out["task"]):
        raise MechmodError(f"{where}: task {out['task'][:40]!r} must be one lower-case word "
                           "(letters, digits, '_'), e.g. 'activity_recognition'")
    return out


def _find_image(image_id: str, coco_dirs: list[Path]) -> Path | None:
    """The first file of IMAGE_NAMES x IMAGE_EXTS for ``image_id`` in the first folder that has one."""
    for d in coco_dirs:
        for ext in IMAGE_EXTS:
            for name in IMAGE_NAMES:
                path = d / name.format(id=image_id, ext=ext)
                if path.is_file():
                    return path
    return None


def _looked_for(image_id: str, coco_dirs: list[Path]) -> str:
    names = ", ".join(n.format(id=image_id, ext=e) for e in IMAGE_EXTS for n in IMAGE_NAMES)
    return f"{names} in {', '.join(str(d) for d in coco_dirs)}"


def load_mc2(files: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike,
             coco_dirs: str | os.PathLike | Iterable[str | os.PathLike], seed: int = 0, progress: bool = True,
             report: Callable[[str], None] = _stderr_line) -> Path:
    """Convert MC2 release ``files`` (module docstring) with images from
    ``coco_dirs`` to a mechmod dataset at ``out``; returns ``out``. Skipped
    records are reported one line each through ``report`` (default: stderr)."""
    seed = check_seed(seed)
    files = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    coco_dirs = [Path(coco_dirs)] if isinstance(coco_dirs, (str, os.PathLike)) else [Path(d) for d in coco_dirs]
    if not files:
        raise MechmodError("no MC2 file given; pass a released MC2 JSON file such as "
                           "data/evaluate_final_text_error1.json")
    if not coco_dirs:
        raise MechmodError("no COCO image folder given; pass the folder holding the COCO images (e.g. val2014/)")
    for d in coco_dirs:
        if not d.is_dir():
            raise MechmodError(f"{d}: not a directory; pass the folder holding the COCO images (e.g. val2014/)")

    records, stems = [], {}
    for path in files:
        stem = _STEM_CHARS.sub("_", path.stem)
        if stem in stems:
            raise MechmodError(f"{path}: its name gives the same case ids as {stems[stem]}; rename one of them")
        stems[stem] = path
        for i, rec in enumerate(_read(path)):
            where = f"{path} record {i}"
            records.append((where, f"mc2-{stem}-{i:05d}", f"mc2:{path.name}[{i}]", _check(rec, where)))
    if not records:
        raise MechmodError(f"{', '.join(map(str, files))}: no records")
    found = {r["image_id"]: _find_image(r["image_id"], coco_dirs) for *_, r in records}
    if not any(found.values()):
        raise MechmodError(f"no image of the {len(records)} MC2 records is in {', '.join(map(str, coco_dirs))} "
                           f"(looked for e.g. {_looked_for(records[0][3]['image_id'], coco_dirs)}); "
                           "pass the folder holding the COCO images")

    multi_word_tasks = {r["task"] for *_, r in records if " " in r["answer_vision"] or " " in r["answer_text"]}
    copied: dict[str, str] = {}
    skipped = {"missing_image": 0, "same_answers": 0}
    rows = []
    with DatasetDir(out) as ds:
        for where, case_id, source, r in _progress(records, len(records), progress, "mc2 records"):
            iid = r["image_id"]
            if r["answer_vision"] == r["answer_text"]:
                skipped["same_answers"] += 1
                report(f"{where}: skipped, both answers are {r['answer_vision']!r} (no conflict)")
                continue
            if found[iid] is None:
                skipped["missing_image"] += 1
                report(f"{where}: skipped, no image for image_id {iid} (looked for {_looked_for(iid, coco_dirs)})")
                continue
            if iid not in copied:
                src = found[iid].resolve()
                try:
                    open_image(src.parent, src.name)
                except MechmodError as err:
                    raise MechmodError(f"{where}: {err}") from None
                copied[iid] = ds.copy_image(f"images/coco/{iid}{src.suffix}", src)
            command = COMMAND_PHRASE if r["task"] in multi_word_tasks else COMMAND
            q = r["question"] if r["question"].endswith(command) else f"{r['question']} {command}"
            rows.append({
                "case_id": case_id, "group_id": case_id, "task": r["task"], "dv": 0, "dt": 0, "control": "none",
                "image_id": f"coco-{iid}", "image_path": copied[iid], "description": r["context"], "question": q,
                "answer_vision": r["answer_vision"], "answer_text": r["answer_text"],
                "candidates": [r["answer_vision"], r["answer_text"]], "seed": seed, "source": source,
            })
        if not rows:
            raise MechmodError(f"{', '.join(map(str, files))}: every record was skipped (see the lines above)")
        if sum(skipped.values()):
            report(f"skipped {sum(skipped.values())} of {len(records)} MC2 records: {skipped['missing_image']} "
                   f"without an image, {skipped['same_answers']} with the same two answers")
        manifest = {
            "task": "mc2",
            "tasks": sorted({r["task"] for r in rows}),
            "seed": seed,
            "generator": "mechmod.data.load_mc2",
            "mechmod_version": mechmod_version(),
            "source": {"files": [p.name for p in files], "n_records": len(records), "skipped": skipped},
            "counts": {"task": dataset_counts(r["task"] for r in rows)},
        }
        return ds.finish(rows, manifest)
