"""``mechmod lens``: train a tuned lens on a model's own prompts and measure
how faithfully the logit lens and the tuned lens decode each layer."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from mechmod.cli import cli, load_for_command
from mechmod.errors import MechmodError
from mechmod.names import LENS_OPTIMIZERS, LENS_SPLITS


@cli.group("lens")
def lens() -> None:
    """Logit and tuned lenses: per-layer decoding of the answer position."""


def _dataset_options(f):
    f = click.option("--seed", default=0, show_default=True, type=int, help="Seed of a generated dataset (with --groups).")(f)
    f = click.option("--groups", default=None, type=click.IntRange(min=2),
                     help="Generate a colour dataset with this many groups instead of --dataset.")(f)
    f = click.option("--dataset", "dataset", default=None, type=click.Path(file_okay=False),
                     help="An existing dataset directory (mechmod dataset ...).")(f)
    return f


def _common_options(f):
    f = click.option("--quiet", is_flag=True, help="No progress bars (there are none when stderr is not a terminal).")(f)
    f = click.option("--threads", default=2, show_default=True, type=int, help="torch CPU threads.")(f)
    f = click.option("--trace-batch-size", default=16, show_default=True, type=click.IntRange(min=1),
                     help="Prompts per traced forward pass.")(f)
    f = click.option("--dtype", default=None, help="Model dtype (float32, bfloat16, float16); default: the model's.")(f)
    f = click.option("--device", default="cpu", show_default=True, help="Device for the model and the lens.")(f)
    return f


def _resolve_dataset(dataset: str | None, groups: int | None, seed: int, generate_into: Path) -> Path:
    if (dataset is None) == (groups is None):
        raise MechmodError("give exactly one of --dataset DIR or --groups N (to generate a colour dataset)")
    if dataset is not None:
        path = Path(dataset)
        if not path.is_dir():
            raise MechmodError(f"dataset directory {path} does not exist; create one with `mechmod dataset` or use --groups N")
        return path
    from mechmod.data import generate_color

    click.echo(f"generating a colour dataset: {groups} groups, seed {seed} -> {generate_into}")
    generate_color(generate_into, groups=groups, seed=seed, controls=False, progress=True)
    return generate_into


@lens.command("train")
@click.option("--model", "model", default="organism", show_default=True, help="Model name or path (load_model).")
@_dataset_options
@click.option("--steps", default=250, show_default=True, type=click.IntRange(min=1), help="Optimiser steps.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Prompts per step.")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(LENS_OPTIMIZERS),
              help="SGD with Nesterov momentum (tuned-lens default) or Adam.")
@click.option("--lr", default=None, type=float, help="Peak learning rate (default 1.0 for SGD, 1e-3 for Adam).")
@click.option("--heldout-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of the dataset's groups held out for evaluation.")
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the held-out group split and the batch order.")
@_common_options
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Lens directory to write.")
def train_cmd(model, dataset, groups, seed, steps, batch_size, optimizer, lr, heldout_fraction, split_seed,
              device, dtype, trace_batch_size, threads, quiet, out) -> None:
    """Train a tuned lens on the model's vision-only, text-only and
    multimodal prompts; print and save (OUT/fidelity.json) the held-out
    per-layer KL of the logit lens and the tuned lens."""
    from mechmod.data import load_cases
    from mechmod.pipeline.steps import train_lens_dir

    out = Path(out)
    ds = _resolve_dataset(dataset, groups, seed, out / "dataset")
    mllm = load_for_command(model, device, dtype, threads=threads)
    click.echo(f"model {mllm.name}: {mllm.n_layers} layers, d_model {mllm.d_model}; dataset {ds}: "
               f"{len(load_cases(ds))} cases")
    report, fid, info = train_lens_dir(
        mllm, ds, out, steps=steps, batch_size=batch_size, optimizer=optimizer, lr=lr, heldout_fraction=heldout_fraction,
        split_seed=split_seed, trace_batch_size=trace_batch_size, progress=not quiet,
        data_info={"generated": groups is not None, "groups": groups, "dataset_seed": seed if groups is not None else None})
    click.echo(f"{info['n_prompts']} prompts: {info['n_train']} train / {info['n_heldout']} held out "
               f"({len(info['heldout_groups'])} groups held out)")
    click.echo(f"held-out KL(final || lens), nats, over {fid.n_examples} prompts:")
    click.echo(fid.table())
    click.echo(f"lens -> {out}/lens.safetensors, {out}/config.json; fidelity -> {out}/fidelity.json "
               f"({report['seconds']} s)")


@lens.command("eval")
@click.option("--lens-path", "lens_path", required=True, type=click.Path(file_okay=False), help="A tuned lens directory.")
@click.option("--model", "model", default=None, help="Model name or path (default: the one the lens was trained for).")
@_dataset_options
@click.option("--split", default="heldout", show_default=True, type=click.Choice(LENS_SPLITS),
              help="heldout: only the groups held out in training (when the dataset is the training one).")
@_common_options
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the result JSON here.")
def eval_cmd(lens_path, model, dataset, groups, seed, split, device, dtype, trace_batch_size, threads, quiet,
             json_out) -> None:
    """Per-layer KL(final || lens) of the logit lens and a saved tuned lens on
    a dataset (default: the lens's training dataset, held-out groups)."""
    import numpy as np

    from mechmod import _io
    from mechmod.data import load_cases
    from mechmod.lenses import TunedLens, Unembed, collect_residuals, evaluate_lenses
    from mechmod.lenses.tuned_lens import CONFIG_FILE
    from mechmod.pipeline.steps import fidelity_by_kind
    from mechmod.runner import dataset_fingerprint

    lens_path = Path(lens_path)
    cfg_file = lens_path / CONFIG_FILE
    if not cfg_file.is_file():
        raise MechmodError(f"{cfg_file} not found: --lens-path must be a directory written by `mechmod lens train`")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MechmodError(f"{cfg_file} is not valid JSON ({err})") from None
    info = (cfg.get("training") or {}).get("data") or {}
    model = model or cfg.get("model") or "organism"

    with tempfile.TemporaryDirectory(prefix="mechmod-lens-eval-") as tmp:
        if dataset is None and groups is None:
            if not info.get("dataset") or not Path(info["dataset"]).is_dir():
                raise MechmodError(
                    f"the lens's training dataset ({info.get('dataset') or 'not recorded'}) is not available; "
                    "pass --dataset DIR or --groups N"
                )
            dataset = info["dataset"]
        ds = _resolve_dataset(dataset, groups, seed, Path(tmp) / "dataset")
        cases = load_cases(ds)
        if split == "heldout":
            heldout = set(info.get("heldout_groups") or [])
            same = info.get("dataset_manifest_sha256") is not None and info.get("dataset_manifest_sha256") == dataset_fingerprint(ds)
            if not same or not heldout:
                raise MechmodError(
                    f"{ds} is not the dataset the lens was trained on (or its held-out groups were not recorded), "
                    "so there is no held-out split to use; pass --split all"
                )
            cases = cases[cases["group_id"].astype(str).isin(heldout)]
        mllm = load_for_command(model, device, dtype, threads=threads)
        tuned = TunedLens.load(lens_path, Unembed.from_model(mllm))
        data = collect_residuals(mllm, cases, ds, batch_size=trace_batch_size, progress=not quiet)
        fid = evaluate_lenses(tuned, data.resid, data.logits, split=split)
        report = {"model": str(mllm.name), "lens_path": str(lens_path.resolve()), "dataset": str(Path(ds).resolve()),
                  split: fid.to_dict(), f"{split}_by_kind": fidelity_by_kind(tuned, data)}
    if json_out:
        _io.write_json(json_out, _io.jsonable(report))
    click.echo(f"{split} KL(final || lens), nats, over {fid.n_examples} prompts ({model}):")
    click.echo(fid.table())
    gain = np.asarray(fid.kl_logit) - np.asarray(fid.kl_tuned)
    click.echo(f"tuned lens better than the logit lens at {int((gain[:-1] > 0).sum())} of {len(gain) - 1} layers "
               "(-1..L-2; the last decoder layer has no translator)")
