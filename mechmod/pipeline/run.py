"""``mechmod study``: every step on one dataset into one directory,
resumable, one failure never stopping the others.

    DIR/study.json   the study (model, groups, seed) and each step's status,
                     time, error and headline numbers; rewritten after each step
    DIR/run, DIR/lens, DIR/patch, DIR/steer, DIR/attribute, DIR/flow
    DIR/index.html   written last: links every step's report
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from mechmod import _io
from mechmod.cli import load_for_command
from mechmod.errors import MechmodError
from mechmod.pipeline.index import headline, write_index
from mechmod.pipeline.steps import STEPS, Context, Step, StudyOptions

STUDY_FILE = "study.json"
INDEX = "index.html"
FORMAT = "mechmod-study/1"
STEP_NAMES = tuple(s.name for s in STEPS)


def parse_steps(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--steps run,lens,...`` (None: every step), in the pipeline's order."""
    names = STEP_NAMES if text is None else [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown or not names:
        raise MechmodError(f"--steps {','.join(names)!s}: unknown step(s) {unknown}; give a comma-separated subset of "
                           f"{','.join(STEP_NAMES)}")
    return tuple(n for n in STEP_NAMES if n in names)


def load_study_model(options: StudyOptions):
    """The model every step shares."""
    return load_for_command(options.model, options.device, options.dtype, options.trust_remote_code)


def _open(out: Path, options: StudyOptions) -> dict:
    """The study record: study.json of a study of the same model, groups and
    seed, or a new one (refused: a file, a directory holding something else
    or another study)."""
    path = out / STUDY_FILE
    if out.exists() and not out.is_dir():
        raise MechmodError(f"--out {out}: is a file; give a new directory or a study directory")
    if path.is_file():
        record = _io.read_json(path, f"remove {out} to start the study again", expect=dict)
        theirs = {k: record.get(k) for k in options.identity()}
        if theirs != options.identity():
            diff = ", ".join(f"{k} {theirs[k]!r} there vs {v!r} asked" for k, v in options.identity().items()
                             if theirs[k] != v)
            raise MechmodError(f"{out} holds another study ({diff}); choose a new --out directory or repeat its options")
        return record
    if out.is_dir() and any(out.iterdir()):
        raise MechmodError(f"{out} exists and is not a study directory (no {STUDY_FILE}); choose a new --out directory")
    return {"format": FORMAT, **options.identity(), "steps": {}}


def _error(err: Exception) -> dict:
    if isinstance(err, MechmodError):
        return {"error": str(err)}
    return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def _do(step: Step, ctx: Context, asked: bool, before: dict, echo: Callable[[str], None]) -> dict:
    """Run (or skip) one step; its record entry."""
    where = ctx.out / step.name
    if (where / step.done).is_file():
        echo(f"{step.name}: finished before, skipped ({where})")
        entry = {"status": "skipped", "seconds": before.get("seconds")}
    elif not asked:  # an earlier failure stays on record until the step is asked for again
        return dict(before, report=None) if before.get("status") == "failed" else {"status": "not run", "report": None}
    else:
        echo(f"{step.name}: running ({step.title.lower()}) -> {where}")
        start = time.perf_counter()
        try:
            where.mkdir(parents=True, exist_ok=True)
            step.run(ctx, where)
            if not (where / step.done).is_file():
                raise MechmodError(f"the {step.name} step finished without writing {where / step.done}")
        except Exception as err:  # recorded; the other steps go on
            seconds = round(time.perf_counter() - start, 1)
            entry = {"status": "failed", "seconds": seconds, "report": None, **_error(err)}
            echo(f"{step.name}: FAILED after {seconds} s: {entry['error']}")
            return entry
        entry = {"status": "ran", "seconds": round(time.perf_counter() - start, 1)}
        echo(f"{step.name}: done in {entry['seconds']} s")
    try:
        entry["headline"] = headline(step, where)
    except MechmodError as err:  # e.g. a summary damaged since
        return {**entry, "status": "failed", "report": None, "error": str(err)}
    entry["report"] = f"{step.name}/{step.report}"
    for name, value in entry["headline"]:
        echo(f"  {name}: {value}")
    return entry


def run_pipeline(out: str | Path, options: StudyOptions = StudyOptions(), steps: Sequence[str] | str | None = None,
                 loader: Callable[[StudyOptions], object] = load_study_model,
                 echo: Callable[[str], None] = print) -> dict:
    """Run the asked steps (default all) that are not finished into ``out``,
    in order, each on the run's dataset; write study.json after each step and
    index.html last. Returns the study record."""
    out = Path(out)
    asked = parse_steps(steps)
    record = _open(out, options)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(options, out, loader)
    record.update(options=asdict(options), dataset=str(ctx.dataset))
    for i, step in enumerate(STEPS, 1):
        echo(f"[{i}/{len(STEPS)}] {step.name}")
        record["steps"][step.name] = _do(step, ctx, step.name in asked, record["steps"].get(step.name, {}), echo)
        _io.write_json(out / STUDY_FILE, _io.jsonable(record))
    index = write_index(out, record)
    echo(f"index -> {index}")
    return record
