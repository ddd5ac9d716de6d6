"""The behavioural study run: every conflict case of a dataset through a
model, in chunks, streamed to disk, resumable.

Cases are scored in chunks cut between groups where a group fits in one
(its images and text-only prompts are then scored once,
:mod:`mechmod.scoring`); each finished chunk is written as one parquet
part of the run directory (:class:`mechmod.rundir.RunDir`), so a killed
run loses at most the chunk in flight and a re-run skips every case
already in a part: no duplicate, no lost row. ``finalize`` merges the parts
into ``results.parquet`` and writes ``report.html`` and ``summary.json``.

Each chunk's images and prefixes are built by :mod:`mechmod.loader` (in
worker processes ahead of the model with ``loader_workers``); the run logs
where its time went (:class:`Timing`: input building, model forwards, the
scoring around them, writing) as one ``timing:`` JSON line on stderr
(with the progress bar: not with ``--quiet``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechmod import distributed
from mechmod._gc import frozen_heap
from mechmod.data import load_cases
from mechmod.errors import MechmodError
from mechmod.loader import default_workers, prepared_chunks
from mechmod.report import run_page
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
    """``df`` (a group's cases together, an image's together within it) in
    chunks of at most ``size`` cases, cut between groups where a group fits
    in one (the images and text-only prompts a group's cases share are then
    scored once, in one chunk), else between its images, else within an
    image."""
    units = []  # runs of cases never cut
    for _, group in df.groupby("group_id", sort=False):
        if len(group) <= size:
            units.append(group)
            continue
        for _, image in group.groupby("image_id", sort=False):
            units.extend(image.iloc[s : s + size] for s in range(0, len(image), size))
    chunk: list[pd.DataFrame] = []
    for unit in units:
        if chunk and sum(map(len, chunk)) + len(unit) > size:
            yield pd.concat(chunk)
            chunk = []
        chunk.append(unit)
    if chunk:
        yield pd.concat(chunk)


@dataclass
class Timing:
    """Where a run's seconds went (wall clock, this process): ``inputs``
    waiting for a chunk's images and prefixes (all of their building
    without loader workers), ``inputs_built`` the host seconds spent
    building them wherever that ran, ``model`` inside the model's forward
    (generation steps of undecided answers included), ``scoring`` the rest
    of scoring (tails' tokenisation, readout, lens, rows), ``writing`` the
    parts; ``loader_workers`` as run."""

    loader_workers: int = 0
    chunks: int = 0
    inputs: float = 0.0
    inputs_built: float = 0.0
    model: float = 0.0
    scoring: float = 0.0
    writing: float = 0.0

    def line(self) -> str:
        return "timing: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()})


class _ForwardClock:
    """Sums the wall time of the model's top-level forwards while inside
    (a CUDA model is synchronised at each forward's end, so its kernels
    count; a forward that raises, as a prefix forward stopping at its last
    keys does, counts too)."""

    def __init__(self, model, timing: Timing):
        self.model, self.timing, self.start = model, timing, None

    def __enter__(self):
        cuda = next(self.model.parameters()).device.type == "cuda"

        def pre(module, args, kwargs):
            self.start = time.perf_counter()

        def post(module, args, kwargs, out):
            if cuda:
                torch.cuda.synchronize()
            self.timing.model += time.perf_counter() - self.start

        self.handles = [self.model.register_forward_pre_hook(pre, with_kwargs=True),
                        self.model.register_forward_hook(post, with_kwargs=True, always_call=True)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


def _score_options(config: RunConfig) -> ScoreOptions:
    return ScoreOptions(batch_size=config.batch_size, backend=config.backend, uncertainty=config.uncertainty,
                        share_prefix=config.share_prefix, attention=config.attention,
                        include_embedding=config.include_embedding, samples=config.samples,
                        seed=config.sample_seed)


@frozen_heap()  # the collector walks only what the run allocates
def run_study(mllm, lens, dataset_dir: str | Path, out: str | Path, config: RunConfig,
              chunk_size: int | None = None, progress: bool = True, world=None) -> Path:
    """Run (or resume) the study into ``out``; returns the run directory
    after :func:`finalize`. The run's dtype, device and number of cases are
    taken from ``mllm`` and the dataset; ``config.loader_workers`` builds
    inputs ahead of the model (None: :func:`mechmod.loader.default_workers`).

    Data parallel (``world.size > 1``, by default detected from the
    launcher's environment, see :mod:`mechmod.distributed`): rank 0 holds
    the run directory for the launch (:meth:`RunDir.launch`) and shares the
    launch id; each rank scores its share of the images
    (:func:`~mechmod.distributed.shard_cases`) into its own parts; rank 0
    finalizes after every rank is done (other ranks return the run directory
    without finalizing)."""
    world = world or distributed.setup()
    dataset_dir = Path(dataset_dir)
    cases = load_cases(dataset_dir)
    config = replace(config, dtype=str(mllm.dtype).removeprefix("torch."), device=str(mllm.device),
                     n_cases=len(cases))
    if config.share_prefix and config.backend == "transformer_lens":
        # the bridge neither fills nor reads HF's KV cache faithfully: whole prompts
        print("note: the transformer_lens backend runs whole prompts (no shared image prefixes)", file=sys.stderr)
        config = replace(config, share_prefix=False)
    run = RunDir(out)
    with ExitStack() as held:
        launch = None
        if world.is_main:
            run.accept(config.identity())  # before anything is written
            run.create()
            launch = held.enter_context(run.launch())
            for notice in run.open(config):
                print(f"note: {notice}", file=sys.stderr)
        launch = world.share(launch)  # after rank 0 opened the run: run.json exists for the others
        if not world.is_main:
            run.join(launch)
            run.open(config)
        rank = world.rank if world.parallel else None
        run.clean_part_temps(rank)  # a killed writer's half-written parts (never read); each rank only its own
        mine = distributed.shard_cases(cases, world.rank, world.size)
        done = run.done_case_ids()
        pending = mine[~mine["case_id"].isin(done)].sort_values(["group_id", "image_id", "case_id"], kind="stable")
        chunk_size = chunk_size or max(4 * config.batch_size, 256)
        options = _score_options(config)
        part = run.next_part_index(rank)
        desc = f"cases (rank {world.rank}/{world.size})" if world.parallel else "cases"
        bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=desc, unit="case",
                   disable=None if progress and world.is_main else True)  # None: off unless stderr is a terminal
        workers = default_workers(mllm.device) if config.loader_workers is None else config.loader_workers
        timing = Timing(loader_workers=workers)
        chunks = prepared_chunks(mllm, list(_chunks(pending, chunk_size)), dataset_dir, config.share_prefix, workers)
        with _ForwardClock(mllm.model, timing):
            while True:
                t0 = time.perf_counter()
                prepared = next(chunks, None)
                if prepared is None:
                    break
                t1 = time.perf_counter()
                model_before = timing.model
                rows = score_cases(mllm, lens, prepared.cases, dataset_dir, options, prepared)
                t2 = time.perf_counter()
                run.write_part(part, rows, rank)
                timing.chunks += 1
                timing.inputs += t1 - t0
                timing.inputs_built += prepared.seconds
                timing.scoring += t2 - t1 - (timing.model - model_before)
                timing.writing += time.perf_counter() - t2
                part += 1
                bar.update(len(prepared.cases))
        bar.close()
        if progress and world.is_main:
            print(timing.line(), file=sys.stderr)
        world.barrier()  # every rank's parts are written
        if not world.is_main:
            return run.path
        missing = set(cases["case_id"]) - run.done_case_ids()
        if missing:
            raise MechmodError(f"{run.path}: {len(missing)} case(s) have no result after all ranks finished "
                               f"(e.g. {sorted(missing)[0]!r}); re-run the same command to resume")
        return finalize(run.path)


def finalize(out: str | Path, results: pd.DataFrame | None = None, radius: float | None = None) -> Path:
    """Write the run's outputs from ``results`` (by default its merged
    parts): results.parquet with ``region`` filled, report.html, then
    summary.json. Everything is computed before the first file is written,
    so a failure (a bad table, a full disk) never leaves a summary without
    its report. When no case could be scored, results.parquet is still
    written (its 'error' column says why) before the MechmodError. Holds
    the run directory (:meth:`RunDir.launch`) while it writes."""
    run = RunDir(out)
    with run.launch():
        run.clean_temps()  # e.g. a results.parquet temp of a finalize killed midway
        merged = results is None
        if merged:
            results = run.read_parts()
            if "status" in results and not (results["status"] == "ok").any():
                run.write_outputs(results)  # the error below points to its 'error' column
        summary, table = summarize_run(run.path, results, radius=radius)
        lens_path = run.config().get("lens_path")
        if lens_path is not None and not isinstance(lens_path, str):
            raise MechmodError(f"{run.run_file}: lens_path {lens_path!r} is not a path; restore run.json")
        html = run_page(summary, table, lens_path).render()
        run.write_outputs(table, summary, html)
    return run.path
