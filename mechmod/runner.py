"""The behavioural study run: every conflict case of a dataset through a
model, in chunks, streamed to disk, resumable.

Cases are scored in chunks (ordered by image so an image's cases travel
together, :mod:`mechmod.scoring`); each finished chunk is written as one
parquet part of the run directory (:class:`mechmod.rundir.RunDir`), so a
killed run loses at most the chunk in flight and a re-run skips every case
already in a part: no duplicate, no lost row. ``finalize`` merges the parts
into ``results.parquet`` and writes ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import pandas as pd
from tqdm.auto import tqdm

from mechmod import distributed
from mechmod.data import load_cases
from mechmod.errors import MechmodError
from mechmod.report import write_run_report
from mechmod.rundir import RunConfig, RunDir
from mechmod.scoring import ScoreOptions, score_cases
from mechmod.summary import summarize_run


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    """sha256 of the dataset's manifest: identifies the cases a run covers."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise MechmodError(f"{dataset_dir}: not a mechmod dataset (no manifest.json); create one with "
                           "`mechmod dataset color --groups N --seed S --out DIR`")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chunks(df: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(df), size):
        yield df.iloc[start : start + size]


def _score_options(config: RunConfig) -> ScoreOptions:
    return ScoreOptions(batch_size=config.batch_size, backend=config.backend, uncertainty=config.uncertainty,
                        share_prefix=config.share_prefix, attention=config.attention)


def run_study(mllm, lens, dataset_dir: str | Path, out: str | Path, config: RunConfig,
              chunk_size: int | None = None, progress: bool = True, world=None) -> Path:
    """Run (or resume) the study into ``out``; returns the run directory
    after :func:`finalize`.

    Data parallel (``world.size > 1``, by default detected from the
    launcher's environment, see :mod:`mechmod.distributed`): each rank scores
    its share of the images (:func:`~mechmod.distributed.shard_cases`) into
    its own parts; rank 0 finalizes after every rank is done (other ranks
    return the run directory without finalizing)."""
    world = world or distributed.setup()
    dataset_dir = Path(dataset_dir)
    run = RunDir(out)
    if world.is_main:
        run.open(config)
    world.barrier()  # run.json exists before the other ranks check it
    if not world.is_main:
        run.open(config)
    rank = world.rank if world.parallel else None
    run.clean_part_temps(rank)  # a killed writer's half-written parts (never read); each rank only touches its own
    cases = load_cases(dataset_dir)
    mine = distributed.shard_cases(cases, world.rank, world.size)
    done = run.done_case_ids()
    pending = mine[~mine["case_id"].isin(done)].sort_values(["image_id", "case_id"], kind="stable")
    chunk_size = chunk_size or max(4 * config.batch_size, 32)
    options = _score_options(config)
    part = run.next_part_index(rank)
    desc = f"cases (rank {world.rank}/{world.size})" if world.parallel else "cases"
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=desc, unit="case",
               disable=not progress or not world.is_main)
    for chunk in _chunks(pending, chunk_size):
        run.write_part(part, score_cases(mllm, lens, chunk, dataset_dir, options), rank)
        part += 1
        bar.update(len(chunk))
    bar.close()
    world.barrier()  # every rank's parts are written
    if not world.is_main:
        return run.path
    missing = set(cases["case_id"]) - run.done_case_ids()
    if missing:
        raise MechmodError(f"{run.path}: {len(missing)} case(s) have no result after all ranks finished "
                           f"(e.g. {sorted(missing)[0]!r}); re-run the same command to resume")
    return finalize(run.path)


def finalize(out: str | Path) -> Path:
    """Merge the parts into results.parquet, then write summary.json and
    report.html from it. Call it where no other process writes to ``out``
    (rank 0 after the last barrier)."""
    run = RunDir(out)
    run.clean_temps()  # e.g. a results.parquet temp of a finalize killed midway
    results = run.read_parts()
    summarize_run(run.path, results=results, model=run.config().get("model"))
    write_run_report(run.path)
    return run.path
