"""`mechmod study`: what to run first on a new checkpoint. The behavioural
run, a tuned lens, patching, steering, direct logit attribution and
attention knockout on one generated dataset into one directory, each step
skipped when finished, then DIR/index.html linking every report."""

from __future__ import annotations

from pathlib import Path

import click

from mechmod.cli import cli
from mechmod.errors import MechmodError

_STEPS = "run,lens,patch,steer,attribute,flow"


@cli.command("study")
@click.option("--model", default="organism", show_default=True, help="Built-in name, local directory or hub id.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Study directory (created, or resumed: finished steps are skipped).")
@click.option("--groups", default=2, show_default=True, type=click.IntRange(min=2),
              help="Groups of the generated colour dataset every step runs on (the lens's held-out split needs 2).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the dataset, the splits and the bootstrap.")
@click.option("--steps", default=_STEPS, show_default=True, help="The steps to run, comma-separated (in this order).")
@click.option("--lens-steps", default=100, show_default=True, type=click.IntRange(min=1),
              help="Optimiser steps of the tuned lens.")
@click.option("--patch-units", is_flag=True,
              help="Also patch and knock out single heads and MLPs in the patching step (about doubles its time).")
@click.option("--n-boot", default=200, show_default=True, type=click.IntRange(min=0), help="Bootstrap draws per interval.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Cases per batch.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run.")
@click.option("--quiet", is_flag=True, help="No progress bars (there are none when stderr is not a terminal).")
def study_cmd(model, out, groups, seed, steps, lens_steps, patch_units, n_boot, device, dtype, batch_size, threads,
              trust_remote_code, quiet):
    """The whole study in one command: the behavioural run (DIR/run, which
    generates the dataset), a tuned lens trained on it (DIR/lens), patching
    (DIR/patch), steering (DIR/steer), direct logit attribution
    (DIR/attribute) and attention knockout (DIR/flow). A failed step is
    recorded in DIR/study.json and the others go on; re-running the command
    skips the finished steps and retries the rest. DIR/index.html links
    every step's report with its status, time and headline numbers."""
    from mechmod.cli import check_device
    from mechmod.pipeline import StudyOptions, parse_steps, run_pipeline

    asked = parse_steps(steps)
    check_device(device)
    if threads:
        import torch

        torch.set_num_threads(threads)
    options = StudyOptions(model=str(model), groups=groups, seed=seed, device=device, dtype=dtype,
                           batch_size=batch_size, lens_steps=lens_steps, patch_units=patch_units, n_boot=n_boot,
                           trust_remote_code=trust_remote_code, progress=not quiet)
    record = run_pipeline(out, options, asked, echo=click.echo)
    failed = [name for name, e in record["steps"].items() if e["status"] == "failed"]
    if failed:
        raise MechmodError(f"step(s) {', '.join(failed)} failed (errors in {out / 'study.json'}); fix the cause and "
                           "re-run the same command: finished steps are skipped")
