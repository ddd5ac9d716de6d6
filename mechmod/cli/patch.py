"""`mechmod patch` (activation patching) and `mechmod steer` (preference
steering). Each writes parquet tables, a summary JSON and an HTML report
into --out through :func:`mechmod.report.write_study` (atomically); they may
share one directory."""

from __future__ import annotations

from pathlib import Path

import click

from mechmod.cli import STUDY_GROUPS, cli, load_for_command, study_dataset
from mechmod.names import BACKENDS, KNOCKOUT_MODES, PATCH_COMPONENTS, PATCH_DIRECTIONS, POSITION_GROUPS, STEER_POSITIONS


def _shared(f):
    opts = [
        click.option("--model", default="organism", show_default=True, help="Built-in name, local directory or hub id."),
        click.option("--dataset", "dataset_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help="A dataset directory (mechmod dataset ...). Default: generate a colour dataset into OUT/dataset."),
        click.option("--groups", default=None, type=click.IntRange(min=1),
                     help=f"Groups of the generated colour dataset (default {STUDY_GROUPS}; not with --dataset)."),
        click.option("--seed", default=0, show_default=True, help="Seed of the generated dataset and of the split."),
        click.option("--dv", multiple=True, type=click.IntRange(0, 13), help="Visual tiers to generate (repeatable; default all)."),
        click.option("--backend", type=click.Choice(BACKENDS), default="hooks", show_default=True,
                     help="hooks: plain forward hooks, the fastest; nnsight and transformer_lens give equal results."),
        click.option("--device", default="cpu", show_default=True),
        click.option("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's)."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Cases per batch."),
        click.option("--max-rows", default=64, show_default=True, type=click.IntRange(min=1),
                     help="Rows per forward of a sweep (cases x settings stacked)."),
        click.option("--threads", default=None, type=click.IntRange(min=1),
                     help="torch CPU threads (1 is fastest for the organism on a busy machine)."),
        click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run."),
        click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Output directory."),
        click.option("--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@cli.command("patch")
@_shared
@click.option("--direction", "directions", multiple=True, type=click.Choice(PATCH_DIRECTIONS),
              help="Pairs: conflict <- vision-only, <- text-only, <- image-irrelevant control (default all).")
@click.option("--positions", "positions", multiple=True,
              type=click.Choice(POSITION_GROUPS),
              help="Position groups (default image, description, question, last).")
@click.option("--component", "components", multiple=True, type=click.Choice(PATCH_COMPONENTS),
              help="Components to patch (default resid).")
@click.option("--no-units", is_flag=True, help="Skip single heads and MLPs.")
@click.option("--knockout", "knockouts", multiple=True, type=click.Choice(KNOCKOUT_MODES),
              help="Knock-out modes for heads and MLPs (default both).")
def patch_cmd(model, dataset_dir, groups, seed, dv, backend, device, dtype, batch_size, max_rows, threads,
              trust_remote_code, out, quiet, directions, positions, components, no_units, knockouts):
    """Activation patching: per layer, copy the residual stream (or attention
    / MLP output) at a position group from a source prompt into the conflict
    prompt; flip rate and logit-difference restoration per layer, first
    layer with 50% flips, critical window, dHrel bins; heads and MLPs at the
    last token patched and knocked out. Writes OUT/patch_layers.parquet,
    OUT/patch_units.parquet, OUT/patch_summary.json, OUT/patch_report.html."""
    from mechmod.data import load_cases
    from mechmod.interventions.patch_study import PatchStudyConfig, run_patching
    from mechmod.report import lines, write_study

    ds = study_dataset(dataset_dir, groups, seed, dv, out)
    defaults = PatchStudyConfig()
    cfg = PatchStudyConfig(directions=tuple(directions) or defaults.directions, positions=tuple(positions) or defaults.positions,
                           components=tuple(components) or defaults.components, units=not no_units,
                           knockouts=tuple(knockouts) or defaults.knockouts, batch_size=batch_size, max_rows=max_rows,
                           backend=backend)
    mllm = load_for_command(model, device, dtype, trust_remote_code, threads)
    study = run_patching(mllm, ds, load_cases(ds), cfg, progress=not quiet)
    summary = dict(study.summary, model=str(model), dataset=str(ds))
    report = write_study(out, "patch", summary, {"layers": study.layers, "units": study.units})
    for line in lines("patch", summary):
        click.echo(line)
    click.echo(f"-> {report}")


@cli.command("steer")
@_shared
@click.option("--layer", "layers", multiple=True, type=int,
              help="Decoder layers (0..L-1) whose output is steered (repeatable; default all).")
@click.option("--alpha", "alphas", multiple=True, type=float, help="Steering strengths (repeatable; 0 is always added).")
@click.option("--positions", type=click.Choice(STEER_POSITIONS), default="all", show_default=True,
              help="Add the direction at every attended position or only the last.")
@click.option("--train-fraction", default=0.5, show_default=True, type=click.FloatRange(0.05, 0.95),
              help="Share of groups the directions are estimated on.")
@click.option("--pooled", is_flag=True, help="Direction = pooled difference of means (default: within-group differences, "
              "which cancel the answer colours).")
@click.option("--n-boot", default=200, show_default=True, type=click.IntRange(min=0), help="Bootstrap draws per balance point.")
def steer_cmd(model, dataset_dir, groups, seed, dv, backend, device, dtype, batch_size, max_rows, threads,
              trust_remote_code, out, quiet, layers, alphas, positions, train_fraction, pooled, n_boot):
    """Preference steering: direction = mean text-following minus mean
    vision-following answer-position residual at a layer (train groups);
    add alpha * direction while answering the held-out conflicts; TFR,
    following curve and balance point per alpha. Writes
    OUT/steer_rows.parquet, OUT/steer_summary.json, OUT/steer_directions.safetensors,
    OUT/steer_report.html."""
    from safetensors.torch import save_file

    from mechmod import _io
    from mechmod.data import load_cases
    from mechmod.interventions.steering import DEFAULT_ALPHAS, SteerStudyConfig, run_steering
    from mechmod.report import lines, write_study

    ds = study_dataset(dataset_dir, groups, seed, dv, out)
    cfg = SteerStudyConfig(layers=tuple(layers) or None, alphas=tuple(alphas) or DEFAULT_ALPHAS, positions=positions,
                           train_fraction=train_fraction, within_group=not pooled, seed=seed, batch_size=batch_size, max_rows=max_rows,
                           n_boot=n_boot, backend=backend)
    mllm = load_for_command(model, device, dtype, trust_remote_code, threads)
    study = run_steering(mllm, ds, load_cases(ds), cfg, progress=not quiet)
    summary = dict(study.summary, model=str(model), dataset=str(ds))
    with _io.atomic_path(out / "steer_directions.safetensors") as tmp:
        save_file({f"layer_{k}": v.contiguous().cpu() for k, v in study.directions.items()}, str(tmp))
    report = write_study(out, "steer", summary, {"rows": study.rows})
    for line in lines("steer", summary):
        click.echo(line)
    click.echo(f"-> {report}")
