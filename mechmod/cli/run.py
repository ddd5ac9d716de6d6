"""`mechmod run` (the behavioural study) and `mechmod summarize`."""

from __future__ import annotations

from pathlib import Path

import click

from mechmod.cli import cli
from mechmod.errors import MechmodError

DEFAULT_GROUPS = 12


@cli.command("run")
@click.option("--model", default="organism", show_default=True, help="Built-in name, local directory or hub id.")
@click.option("--dataset", "dataset_dir", type=click.Path(path_type=Path), default=None,
              help="A dataset directory (from `mechmod dataset ...`). Default: generate a color dataset into RUN/dataset.")
@click.option("--groups", default=DEFAULT_GROUPS, show_default=True, help="Groups of the generated color dataset (without --dataset).")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated color dataset (without --dataset).")
@click.option("--lens", type=click.Choice(["logit", "tuned"]), default="logit", show_default=True)
@click.option("--lens-path", type=click.Path(path_type=Path), default=None, help="Directory of a tuned lens (`mechmod lens train`).")
@click.option("--backend", type=click.Choice(["nnsight", "transformer_lens"]), default="nnsight", show_default=True)
@click.option("--uncertainty", type=click.Choice(["entropy", "label_entropy", "margin"]), default="entropy", show_default=True,
              help="The unimodal uncertainty dHrel is computed from.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA).")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--radius", default=0.5, show_default=True, help="Half-width of the ambiguous region around the balance point.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run (off by default).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory (created, or resumed).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_cmd(model, dataset_dir, groups, seed, lens, lens_path, backend, uncertainty, device, dtype, batch_size,
            radius, trust_remote_code, out, quiet):
    """Run the behavioural study: three answers per conflict case, entropies,
    dHrel, following curve, balance point, per-layer votes. Writes
    RUN/results.parquet, RUN/summary.json and RUN/report.html; re-running
    the same command resumes an interrupted run."""
    from mechmod.lenses import LogitLens, TunedLens, Unembed
    from mechmod.models import load_model
    from mechmod.runner import RunConfig, dataset_fingerprint, run_study

    if batch_size < 1:
        raise MechmodError(f"--batch-size must be >= 1, got {batch_size}")
    if lens == "tuned" and lens_path is None:
        raise MechmodError("--lens tuned needs --lens-path DIR (train one with `mechmod lens train --out DIR`)")
    if dataset_dir is None:
        from mechmod.runner import GENERATED_DATASET

        dataset_dir = out / GENERATED_DATASET
        if not (dataset_dir / "manifest.json").is_file():
            from mechmod.data import generate_color

            click.echo(f"generating a color dataset ({groups} groups, seed {seed}) into {dataset_dir}", err=True)
            generate_color(dataset_dir, groups=groups, seed=seed, controls=True, progress=not quiet)
    config = RunConfig(
        model=str(model), dataset=str(Path(dataset_dir).resolve()), dataset_sha256=dataset_fingerprint(dataset_dir),
        lens=lens, lens_path=str(lens_path) if lens_path else None, backend=backend, uncertainty=uncertainty,
        batch_size=batch_size, radius=radius,
    )
    mllm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    unembed = Unembed(mllm.final_norm, mllm.lm_head)
    lens_mod = TunedLens.load(lens_path, unembed) if lens == "tuned" else LogitLens(unembed)
    run_study(mllm, lens_mod, dataset_dir, out, config, progress=not quiet)
    _print_headline(out)


@cli.command("summarize")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--radius", default=None, type=float, help="Ambiguous-region half-width (default: the run's, else 0.5).")
def summarize_cmd(run_dir, radius):
    """Recompute RUN/summary.json and RUN/report.html from RUN/results.parquet alone."""
    from mechmod.runner import PARTS_DIR, RESULTS_FILE, finalize
    from mechmod.summary import summarize_run

    if not (run_dir / RESULTS_FILE).is_file() and any((run_dir / PARTS_DIR).glob("part-*.parquet")):
        finalize(run_dir)  # an unfinished run: merge what its parts hold
    summarize_run(run_dir, radius=radius)
    _print_headline(run_dir)


def _print_headline(run_dir: Path) -> None:
    import json

    s = json.loads((Path(run_dir) / "summary.json").read_text())

    def f(x):
        return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    ci = s.get("balance_ci")
    click.echo(
        f"{s['model']}: {s['n_cases']} cases ({s.get('n_failed', 0)} failed)  TFR {f(s['tfr'])}  "
        f"TFR(both correct) {f(s['tfr_both_correct'])}  balance point {f(s['balance_point'])} "
        f"[{f(ci[0]) if ci else 'n/a'}, {f(ci[1]) if ci else 'n/a'}]  -> {Path(run_dir) / 'report.html'}"
    )
