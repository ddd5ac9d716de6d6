"""`mechmod finetune`: boundary-case vs easy-case fine-tuning, scored
before and after on held-out groups (:mod:`mechmod.interventions.finetune_study`).
Not to be confused with `mechmod organism finetune`, which trains organism
variants with another planted text weight."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mechmod import _io
from mechmod.cli import cli, generated_color_dataset, load_for_command, study_dataset
from mechmod.errors import MechmodError
from mechmod.names import BACKENDS, FINETUNE_METHODS, FINETUNE_SELECT_OPTIONS, FINETUNE_SELECTIONS, FINETUNE_TARGETS

#: groups of the generated selection (and held-out) colour datasets: enough for a balance point on the organism
FINETUNE_GROUPS = 8


@cli.command("finetune")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="A finished `mechmod run` directory whose conflict cases (dHrel, balance point) are selected from.")
@click.option("--dataset", "dataset_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="A dataset to select from (its clean baseline is computed here; not with --run).")
@click.option("--groups", default=None, type=click.IntRange(min=1),
              help=f"Groups of the generated selection dataset (default {FINETUNE_GROUPS}; not with --run/--dataset).")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated selection dataset.")
@click.option("--heldout", "heldout_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The held-out dataset scored before and after (groups never selected or trained on). "
                   "Default: a colour dataset generated into OUT/heldout.")
@click.option("--heldout-groups", default=None, type=click.IntRange(min=1),
              help="Groups of the generated held-out dataset (default: as many as --groups, else "
                   f"{FINETUNE_GROUPS}).")
@click.option("--heldout-seed", default=None, type=int,
              help="Seed of the generated held-out dataset (default: the selection dataset's seed + 1).")
@click.option("--model", default=None, help="Built-in name, local directory or hub id (default: the run's, else organism).")
@click.option("--target", type=click.Choice(FINETUNE_TARGETS), required=True,
              help="The modality whose answer the conflicts are trained towards.")
@click.option("--select", "select", type=click.Choice(FINETUNE_SELECT_OPTIONS), default="both",
              show_default=True, help="Boundary cases (|dHrel - balance point| <= radius), easy cases (the rest, "
                                      "matched in number), or both.")
@click.option("--radius", default=0.5, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Half-width of the boundary band around the balance point (the run's ambiguous region).")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Fine-tuning seeds per selection (seeds 0..N-1; each also draws the matched cases).")
@click.option("--steps", default=40, show_default=True, type=click.IntRange(min=1), help="Optimiser steps per fine-tuning.")
@click.option("--lr", default=5e-5, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="AdamW learning rate (after a 5-step warm-up).")
@click.option("--train-batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Cases per optimiser step.")
@click.option("--method", type=click.Choice(FINETUNE_METHODS), default=None,
              help="full: every weight (default for the organism); lora: LoRA adapters through peft (default otherwise).")
@click.option("--lora-rank", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--lora-target", "lora_targets", multiple=True,
              help="Linear modules of the decoder layers that get adapters (repeatable; default q_proj, v_proj).")
@click.option("--backend", type=click.Choice(BACKENDS), default="nnsight", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default=None, help="float32, bfloat16 or float16 (default: the run's, else the model's).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Cases per scoring batch.")
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(min=10), help="Bootstrap draws per interval.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Output directory.")
@click.option("--quiet", is_flag=True, help="No progress bars (there are none when stderr is not a terminal).")
def finetune_cmd(run_dir, dataset_dir, groups, seed, heldout_dir, heldout_groups, heldout_seed, model, target, select,
                 radius, seeds, steps, lr, train_batch_size, method, lora_rank, lora_targets, backend, device, dtype,
                 batch_size, n_boot, threads, trust_remote_code, out, quiet):
    """Fine-tune copies of the model on conflict cases near the balance
    point (boundary) or far from it (easy), same number of cases, steps and
    learning rate, towards the --target modality's answer, several seeds
    each; score the model before and after on held-out groups. Writes
    OUT/finetune_summary.json ("before"/"after" per selection and seed,
    boundary vs easy with intervals over seeds and cases),
    OUT/finetune_cases.parquet, OUT/finetune_report.html and the trained
    parameters as OUT/models/SELECTION-seedK.safetensors."""
    from mechmod.interventions.clean import from_baseline, from_run
    from mechmod.interventions.finetune import FinetuneConfig
    from mechmod.interventions.finetune_study import run_finetune
    from mechmod.report import lines, write_study

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if run_dir is not None:
        if dataset_dir is not None or groups is not None:
            raise MechmodError("give --run RUN, or --dataset DIR, or --groups N; not several")
        clean = from_run(run_dir)
        heldout = _heldout(heldout_dir, heldout_groups, heldout_seed, groups, clean.dataset_dir, out)
        mllm = load_for_command(model or clean.model or "organism", device, dtype or clean.dtype, trust_remote_code,
                                threads)
    else:
        ds = study_dataset(dataset_dir, groups if dataset_dir is not None else groups or FINETUNE_GROUPS, seed, None, out)
        heldout = _heldout(heldout_dir, heldout_groups, heldout_seed, groups, ds, out)
        mllm = load_for_command(model or "organism", device, dtype, trust_remote_code, threads)
        clean = from_baseline(mllm, ds, batch_size=batch_size, backend=backend, radius=radius, n_boot=0)
    cfg = FinetuneConfig(target=target, steps=steps, batch_size=train_batch_size, lr=lr,
                         method=method or ("full" if mllm.name == "organism" else "lora"), lora_rank=lora_rank,
                         lora_alpha=2.0 * lora_rank, **({"lora_targets": tuple(lora_targets)} if lora_targets else {}))
    selections = FINETUNE_SELECTIONS if select == "both" else (select,)
    study = run_finetune(mllm, clean, heldout, cfg, selections, list(range(seeds)), radius, out, batch_size=batch_size,
                         backend=backend, n_boot=n_boot, progress=not quiet)
    summary = _io.jsonable(dict(study.summary, model=mllm.name, seconds=round(time.perf_counter() - start, 1)))
    report = write_study(out, "finetune", summary, {"cases": study.cases})
    for line in lines("finetune", summary):
        click.echo(line)
    click.echo(f"-> {report}")


def _heldout(heldout_dir, heldout_groups, heldout_seed, groups, selection_dir: Path, out: Path) -> Path:
    """The held-out dataset: --heldout DIR, or a colour dataset generated
    into OUT/heldout with a seed other than the selection dataset's."""
    if heldout_dir is not None:
        if heldout_groups is not None or heldout_seed is not None:
            raise MechmodError("give --heldout DIR or --heldout-groups/--heldout-seed, not both")
        if not (Path(heldout_dir) / "manifest.json").is_file():
            raise MechmodError(f"--heldout {heldout_dir}: not a mechmod dataset (no manifest.json)")
        return Path(heldout_dir)
    manifest = _io.read_json(Path(selection_dir) / "manifest.json", "the selection dataset's manifest", expect=dict)
    sel_seed = manifest.get("seed")
    seed = heldout_seed if heldout_seed is not None else (sel_seed + 1 if isinstance(sel_seed, int) else 1)
    if seed == sel_seed and "color" in str(manifest.get("generator")):
        raise MechmodError(f"--heldout-seed {seed} is the selection dataset's seed: its groups would be the ones "
                           "selected from; choose another seed")
    return generated_color_dataset(out / "heldout", heldout_groups or groups or FINETUNE_GROUPS, seed)
