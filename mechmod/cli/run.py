"""`mechmod run` (the behavioural study) and `mechmod summarize`."""

from __future__ import annotations

import math
from pathlib import Path

import click

from mechmod.cli import check_device, cli, generated_color_dataset
from mechmod.errors import MechmodError
from mechmod.names import BACKENDS, LENS_KINDS, UNCERTAINTY_MEASURES

DEFAULT_GROUPS = 12


@cli.command("run")
@click.option("--model", default="organism", show_default=True, help="Built-in name, local directory or hub id.")
@click.option("--dataset", "dataset_dir", type=click.Path(path_type=Path), default=None,
              help="A dataset directory (from `mechmod dataset ...`). Default: generate a color dataset into RUN/dataset.")
@click.option("--groups", default=DEFAULT_GROUPS, show_default=True, help="Groups of the generated color dataset (without --dataset).")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the generated color dataset (without --dataset) and of the sampled answers.")
@click.option("--lens", type=click.Choice(LENS_KINDS), default="logit", show_default=True)
@click.option("--lens-path", type=click.Path(path_type=Path), default=None, help="Directory of a tuned lens (`mechmod lens train`).")
@click.option("--backend", type=click.Choice(BACKENDS), default="hooks", show_default=True,
              help="How the forward is read: plain forward hooks (fastest), nnsight, or the TransformerLens bridge; "
                   "hooks and nnsight read the same tensors (equal results).")
@click.option("--uncertainty", type=click.Choice(UNCERTAINTY_MEASURES), default="entropy", show_default=True,
              help="The unimodal uncertainty dHrel is computed from.")
@click.option("--sampled-entropy", is_flag=True,
              help="Also sample --samples answers per unimodal prompt at temperature 1 and record the Miller-Madow "
                   "entropy of their labels (hs_v, hs_t; up to 4 more forwards per sample where the first token does not "
                   "decide the answer).")
@click.option("--samples", default=20, show_default=True, type=click.IntRange(min=20),
              help="Answers sampled per prompt for --sampled-entropy.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA).")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--share-prefix/--no-share-prefix", default=True, show_default=True,
              help="Compute each image's prefix (and vision features) once and reuse its KV cache (not with --backend transformer_lens, whose bridge runs whole prompts).")
@click.option("--attention/--no-attention", default=True, show_default=True,
              help="Record the answer position's attention mass on image, description and question tokens per layer.")
@click.option("--radius", default=0.5, show_default=True, help="Half-width of the ambiguous region around the balance point.")
@click.option("--include-embedding", is_flag=True,
              help="Count the embedding output (layer -1) in the votes' oscillations, commit layer and last sign change "
                   "(default: the decoder layers 0..L-1 only, as the paper).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run (off by default).")
@click.option("--device-map", default=None,
              help="Spread the model over devices (accelerate big-model inference): auto, balanced, balanced_low_0, "
                   "sequential, or a JSON object {module: device}; --device is then ignored.")
@click.option("--num-processes", default=1, show_default=True,
              help="Data-parallel processes on this machine (each scores its share of the images; same as "
                   "`accelerate launch --num_processes N -m mechmod run ...`).")
@click.option("--loader-workers", default=None, type=click.IntRange(min=0),
              help="Processes decoding images and building prefixes (image processor, tokenisation) ahead of the "
                   "model; 0: in this process. Default: 0 on a CPU model (its forward uses every core and the inputs "
                   "are a few percent of the run), else 2 with 4 or more cores. Results do not depend on it.")
@click.option("--chunk-size", default=None, type=int,
              help="Cases per written part (default max(4 x batch size, 256)); a kill loses at most one chunk.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory (created, or resumed).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_cmd(model, dataset_dir, groups, seed, lens, lens_path, backend, uncertainty, sampled_entropy, samples, device,
            dtype, batch_size, share_prefix, attention, radius, include_embedding, trust_remote_code, device_map,
            num_processes, loader_workers, chunk_size, out, quiet):
    """Run the behavioural study: three answers per conflict case, entropies,
    dHrel, following curve, balance point, per-layer votes. Writes
    RUN/results.parquet, RUN/summary.json and RUN/report.html; re-running
    the same command resumes an interrupted run (with any number of processes)."""
    from contextlib import ExitStack

    from mechmod import distributed
    from mechmod.models import _parse_dtype
    from mechmod.rundir import RunDir

    if batch_size < 1:
        raise MechmodError(f"--batch-size must be >= 1, got {batch_size}")
    if chunk_size is not None and chunk_size < 1:
        raise MechmodError(f"--chunk-size must be >= 1, got {chunk_size}")
    if num_processes < 1:
        raise MechmodError(f"--num-processes must be >= 1, got {num_processes}")
    if lens == "tuned" and lens_path is None:
        raise MechmodError("--lens tuned needs --lens-path DIR (train one with `mechmod lens train --out DIR`)")
    check_radius(radius)
    dmap = parse_device_map(device_map)
    if dmap is None:
        check_device(device)
    _parse_dtype(dtype)
    run = RunDir(out)
    generated = dataset_dir is None
    if generated:
        from mechmod.data.writer import check_groups, check_seed

        check_groups(groups)
        check_seed(seed)
        dataset_dir = run.dataset
    dataset_args = {"generator": "color", "groups": groups, "seed": seed} if generated else None
    world = distributed.World() if num_processes > 1 else distributed.setup()
    with ExitStack() as held:
        if world.is_main:  # everything is checked before the first write into --out
            run.accept(dict(model=str(model), dataset=str(Path(dataset_dir).resolve()), dataset_args=dataset_args,
                            lens=lens, lens_path=str(lens_path) if lens_path else None, backend=backend,
                            uncertainty=uncertainty, radius=radius, attention=attention,
                            include_embedding=include_embedding))
            if not generated:
                from mechmod.data import load_cases

                load_cases(dataset_dir)  # a malformed dataset is refused before anything is written or loaded
            run.create()
            launch = held.enter_context(run.launch())
            if generated:
                generated_color_dataset(dataset_dir, groups, seed, progress=not quiet)
        if generated:
            world.barrier()  # the other ranks use the dataset rank 0 generated
        if num_processes > 1:
            rc = distributed.launch_local(num_processes, _child_args(click.get_current_context()), launch_id=launch)
            if rc != 0:
                raise MechmodError(f"a data-parallel process exited with code {rc}; the others were stopped. "
                                   "Re-run the same command to resume (finished parts are kept)")
            return  # rank 0 printed the headline
        from mechmod.lenses import LogitLens, TunedLens, Unembed
        from mechmod.models import load_model
        from mechmod.rundir import RunConfig
        from mechmod.runner import dataset_fingerprint, run_study

        if world.parallel and str(device) == "cuda" and dmap is None:
            import torch

            device = f"cuda:{world.local_rank % max(1, torch.cuda.device_count())}"  # one GPU per local rank (shared if fewer)
        config = RunConfig(
            model=str(model), dataset=str(Path(dataset_dir).resolve()), dataset_sha256=dataset_fingerprint(dataset_dir),
            lens=lens, lens_path=str(lens_path) if lens_path else None, backend=backend, uncertainty=uncertainty,
            batch_size=batch_size, radius=radius, share_prefix=share_prefix, attention=attention,
            include_embedding=include_embedding,
            dataset_args=dataset_args, samples=samples if sampled_entropy else 0,
            sample_seed=seed if sampled_entropy else 0, loader_workers=loader_workers,
        )
        mllm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, device_map=dmap)
        unembed = Unembed.from_model(mllm)
        lens_mod = TunedLens.load(lens_path, unembed) if lens == "tuned" else LogitLens(unembed)
        run_study(mllm, lens_mod, dataset_dir, out, config, chunk_size=chunk_size, progress=not quiet, world=world)
    if world.is_main:
        _print_headline(out)
    distributed.teardown()


def check_radius(radius: float) -> float:
    """--radius: a finite half-width >= 0."""
    if not math.isfinite(radius) or radius < 0:
        raise MechmodError(f"--radius {radius}: give a finite number >= 0 (the half-width of the ambiguous region "
                           "around the balance point, e.g. 0.5)")
    return radius


DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(value: str | None):
    """``--device-map``: None, one of accelerate's strategies, or a JSON
    object mapping module names to devices (a GPU index, "cpu", "cuda:1")."""
    import json

    if value is None:
        return None
    value = value.strip()
    if value in DEVICE_MAP_NAMES:
        return value
    try:
        dmap = json.loads(value)
    except json.JSONDecodeError:
        dmap = None
    if not isinstance(dmap, dict) or not dmap or not all(
            isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in dmap.items()):
        raise MechmodError(f"--device-map {value!r}: give one of {', '.join(DEVICE_MAP_NAMES)} or a JSON object "
                           'mapping module names to devices, e.g. \'{"model.language_model.layers.0": 0, "": "cpu"}\'')
    return dmap


def _child_args(ctx: click.Context) -> list[str]:
    """The command line of one data-parallel process: this command's options
    as given, without --num-processes."""
    args = [ctx.command.name]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name == "num_processes":
            continue
        value = ctx.params.get(param.name)
        flag = max(param.opts, key=len)
        if param.is_flag:
            if param.secondary_opts:  # --x/--no-x: say which
                args.append(flag if value else max(param.secondary_opts, key=len))
            elif value:
                args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
    return args


@cli.command("summarize")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--radius", default=None, type=float, help="Ambiguous-region half-width (default: the run's, else 0.5).")
def summarize_cmd(run_dir, radius):
    """Recompute RUN/summary.json and RUN/report.html from RUN/results.parquet
    alone (from the parts of an unfinished run, marked partial)."""
    from mechmod.rundir import RunDir
    from mechmod.runner import finalize

    if radius is not None:
        check_radius(radius)
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise MechmodError(f"{run_dir}: not a directory; give a run directory written by `mechmod run`")
    results = run.read_results() if run.results.is_file() else None  # None: merge the parts of an unfinished run
    finalize(run.path, results, radius=radius)
    _print_headline(run.path)


def _print_headline(run_dir: Path) -> None:
    from mechmod.rundir import RunDir

    run = RunDir(run_dir)
    s = run.read_summary()

    def f(x):
        return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    ci = s.get("balance_ci") or [None, None]
    partial = f"PARTIAL ({s.get('n_cases_missing')} of {s.get('n_cases_expected')} cases missing)  " \
        if s.get("partial") else ""
    click.echo(
        f"{partial}{s.get('model')}: {s.get('n_cases')} cases ({s.get('n_failed', 0)} failed)  TFR {f(s.get('tfr'))}  "
        f"TFR(both correct) {f(s.get('tfr_both_correct'))}  balance point {f(s.get('balance_point'))} "
        f"[{f(ci[0])}, {f(ci[1])}]  -> {run.report}"
    )
    for name, why in (s.get("left_out") or {}).items():
        click.echo(f"left out: {name} ({why})", err=True)
