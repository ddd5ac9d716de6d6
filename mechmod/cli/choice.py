"""Where the choice is made: `mechmod attribute` (direct logit
attribution), `mechmod flow` (attention knockout between spans), `mechmod scale-heads`
(head scaling) and `mechmod probe` (linear probes against the lens, and
the text-dominance index). Each runs on the conflict cases of a
finished run (--run RUN: its answers, dHrel and regions) or of a dataset
(--dataset DIR, or a generated one: --groups N --seed S), and writes its
tables, summary JSON and HTML report into --out."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click

from mechmod import _io
from mechmod.cli import STUDY_GROUPS, cli, load_for_command, study_dataset
from mechmod.errors import MechmodError
from mechmod.names import BACKENDS, FLOWS, HEAD_SCALE_POSITIONS


def _shared(f):
    opts = [
        click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help="A finished `mechmod run` directory: its conflict cases, answers, dHrel and regions."),
        click.option("--model", default=None, help="Built-in name, local directory or hub id (default: the run's "
                     "model, else organism)."),
        click.option("--dataset", "dataset_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help="A dataset directory (not with --run). Default: generate a colour dataset into OUT/dataset."),
        click.option("--groups", default=None, type=click.IntRange(min=1),
                     help=f"Groups of the generated colour dataset (default {STUDY_GROUPS}; not with --run or --dataset)."),
        click.option("--seed", default=0, show_default=True, help="Seed of the generated dataset and of the bootstrap."),
        click.option("--dv", multiple=True, type=click.IntRange(0, 13), help="Visual tiers to generate (repeatable)."),
        click.option("--radius", default=0.5, show_default=True, type=click.FloatRange(min=0),
                     help="Half-width of the ambiguous region around the balance point (without --run)."),
        click.option("--backend", type=click.Choice(BACKENDS), default="nnsight", show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--dtype", default=None, help="float32, bfloat16 or float16 (default: the run's, else the model's)."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Cases per batch."),
        click.option("--max-rows", default=64, show_default=True, type=click.IntRange(min=1),
                     help="Rows per forward of a sweep (cases x settings stacked)."),
        click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(min=0),
                     help="Bootstrap draws per interval."),
        click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads."),
        click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run."),
        click.option("--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal)."),
        click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Output directory."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _setup(o: dict, consistent: bool = False):
    """(model, clean cases) from the shared options (a generated dataset with
    the opt-in ``consistent`` control when asked), the cases labelled for a
    progress bar unless --quiet."""
    mllm, clean = _cases(o, consistent)
    return mllm, replace(clean, progress=None if o["quiet"] else click.get_current_context().info_name)


def _cases(o: dict, consistent: bool):
    from mechmod.interventions.clean import from_baseline, from_run

    Path(o["out"]).mkdir(parents=True, exist_ok=True)
    if o["run_dir"] is not None:
        if o["dataset_dir"] is not None or o["groups"] is not None or o["dv"]:
            raise MechmodError("give --run RUN, or --dataset DIR, or --groups N [--dv ...]; not several")
        clean = from_run(o["run_dir"])
        mllm = load_for_command(o["model"] or clean.model or "organism", o["device"], o["dtype"] or clean.dtype,
                                o["trust_remote_code"], o["threads"])
        return mllm, clean
    ds = study_dataset(o["dataset_dir"], o["groups"], o["seed"], o["dv"] or None, o["out"], consistent)
    mllm = load_for_command(o["model"] or "organism", o["device"], o["dtype"], o["trust_remote_code"], o["threads"])
    return mllm, from_baseline(mllm, ds, batch_size=o["batch_size"], backend=o["backend"], radius=o["radius"],
                               n_boot=o["n_boot"], seed=o["seed"])


def _finish(study: str, out: Path, summary: dict, seconds: float, mllm) -> None:
    from mechmod.report import lines, write_study

    summary = _io.jsonable(dict(summary, model=mllm.name, seconds=round(seconds, 1)))
    report = write_study(out, study, summary)
    for line in lines(study, summary):
        click.echo(line)
    click.echo(f"-> {report}")


@cli.command("attribute")
@_shared
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1), help="Top heads listed per side.")
def attribute_cmd(top, **o):
    """Direct logit attribution of LD = logit(text answer) - logit(vision
    answer) at the answer position: the embedding, each layer's attention
    and MLP as added to the residual stream, each head (through o_proj and
    any post-norm), norms' scales frozen. Writes OUT/attribution.parquet,
    OUT/attribution_summary.json (by region and follow outcome, top heads),
    OUT/attribution_report.html."""
    from mechmod.interventions.attribution import attribute_cases, summarize_attribution

    start = time.perf_counter()
    mllm, clean = _setup(o)
    rows = attribute_cases(mllm, clean, o["batch_size"], o["backend"])
    _io.write_parquet(o["out"] / "attribution.parquet", rows)
    summary = summarize_attribution(rows, clean, o["n_boot"], top, o["seed"])
    _finish("attribution", o["out"], summary, time.perf_counter() - start, mllm)


@cli.command("flow")
@_shared
@click.option("--flow", "flows", multiple=True, type=click.Choice(FLOWS), help="Flows to block (default all).")
@click.option("--window", default=None, type=click.IntRange(min=1),
              help="Decoder layers per knockout window (default a quarter of the layers, at least 1).")
def flow_cmd(flows, window, **o):
    """Attention knockout between spans: block image/description/question
    -> last (and image -> description, image -> question, description ->
    question) in sliding windows of decoder layers by editing the attention
    mask; flip rate and LD change per window and region. Writes
    OUT/flows.parquet, OUT/flow_cases.parquet, OUT/flow_summary.json,
    OUT/flow_report.html."""
    from mechmod.interventions.flow import check_kernel, flow_summary, flow_table, run_flow, windows

    start = time.perf_counter()
    mllm, clean = _setup(o)
    check_kernel(mllm)
    k = windows(mllm.n_layers, window)[0][1]
    rows = run_flow(mllm, clean, tuple(flows) or FLOWS, k, o["batch_size"], o["max_rows"], o["backend"])
    table = flow_table(rows, o["n_boot"], o["seed"])
    _io.write_parquet(o["out"] / "flow_cases.parquet", rows)
    _io.write_parquet(o["out"] / "flows.parquet", table)
    _finish("flow", o["out"], flow_summary(table, clean, k), time.perf_counter() - start, mllm)


@cli.command("scale-heads")
@_shared
@click.option("--head", "heads", multiple=True, help="A head to scale, LAYER.HEAD (repeatable; scaled together). "
              "Default: the top text- and vision-promoting heads of a direct logit attribution, as two sets.")
@click.option("--attribution", "attribution_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="An `mechmod attribute` output directory to take the default heads from (else attributed here).")
@click.option("--top", default=3, show_default=True, type=click.IntRange(min=1), help="Default heads per side.")
@click.option("--alpha", "alphas", multiple=True, type=float, help="Scales (repeatable; 1 is always added).")
@click.option("--positions", type=click.Choice(HEAD_SCALE_POSITIONS), default="last", show_default=True,
              help="Scale the heads' outputs at the answer position or at every position.")
def scale_heads_cmd(heads, attribution_dir, top, alphas, positions, **o):
    """Head scaling: multiply the heads' outputs (before o_proj) by alpha;
    TFR, following curve and balance point per alpha. Writes
    OUT/scale_heads.parquet, OUT/scale_heads_summary.json,
    OUT/scale_heads_report.html."""
    from mechmod.interventions.attribution import attribute_cases, summarize_attribution
    from mechmod.interventions.head_scaling import DEFAULT_ALPHAS, default_head_sets, parse_head, run_head_scaling

    start = time.perf_counter()
    mllm, clean = _setup(o)
    if heads:
        sets = {"chosen": [parse_head(h, mllm.n_layers, mllm.n_heads) for h in heads]}
    elif attribution_dir is not None:
        sets = default_head_sets(_io.read_json(Path(attribution_dir) / "attribution_summary.json",
                                               "write it with `mechmod attribute --out DIR`", expect=dict), top)
    else:
        rows = attribute_cases(mllm, clean, o["batch_size"], o["backend"])
        sets = default_head_sets(summarize_attribution(rows, clean, 100, top), top)
    rows, summary = run_head_scaling(mllm, clean, sets, tuple(alphas) or DEFAULT_ALPHAS, positions, o["batch_size"],
                                     o["max_rows"], o["n_boot"], o["backend"])
    _io.write_parquet(o["out"] / "scale_heads.parquet", rows)
    _finish("scale_heads", o["out"], summary, time.perf_counter() - start, mllm)


@cli.command("probe")
@_shared
@click.option("--l2", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="L2 penalty of the logistic probes (sum of log losses + l2/2 |w|^2, standardised features).")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2),
              help="Cross-validation folds, split by group (at most one per group).")
def probe_cmd(l2, folds, **o):
    """Linear probes per layer on the answer-position residual: the follow
    outcome (text vs vision) against the logit lens's vote at that layer,
    and conflict vs the `consistent` control (generated with --groups; a
    --dataset or --run dataset needs it for this target), accuracy held out
    by group with intervals; the attention text-dominance index per token.
    Writes OUT/probes.parquet, OUT/probes_summary.json, OUT/probes_report.html."""
    from mechmod.interventions.probes import run_probes

    start = time.perf_counter()
    mllm, clean = _setup(o, consistent=True)
    table, summary = run_probes(mllm, clean, o["batch_size"], o["backend"], l2, folds, o["n_boot"], o["seed"])
    _io.write_parquet(o["out"] / "probes.parquet", table)
    _finish("probes", o["out"], summary, time.perf_counter() - start, mllm)
