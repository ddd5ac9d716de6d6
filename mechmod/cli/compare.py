"""`mechmod compare RUN1 RUN2 ...`: several runs' following curves and
balance points overlaid (paper Fig. 4a), one HTML page plus its JSON."""

from __future__ import annotations

from pathlib import Path

import click

from mechmod.cli import cli


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--label", "labels", multiple=True,
              help="A name for each run, in order (repeat once per run; default: the directory names).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("compare.html"), show_default=True,
              help="The HTML report to write.")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The comparison as JSON (default: --out with a .json suffix).")
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(min=10),
              help="Bootstrap draws for each pair's balance-point difference.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--allow-partial", is_flag=True,
              help="Compare runs that are not finished (not every case scored); they are labelled '(partial)'.")
def compare_cmd(run_dirs, labels, out, json_out, n_boot, seed, allow_partial):
    """Overlay the following curves and balance points of several runs, with
    a table of TFR, balance point and interval, and every pair's
    balance-point difference (bootstrap interval, p-value)."""
    from mechmod import _io
    from mechmod.compare import compare_runs
    from mechmod._io import jsonable
    from mechmod.report import page

    comparison = jsonable(compare_runs(list(run_dirs), labels=list(labels) or None, n_boot=n_boot, seed=seed,
                                       allow_partial=allow_partial))
    json_out = json_out or out.with_suffix(".json")
    page("compare", comparison).write(out)
    _io.write_json(json_out, comparison)

    def f(x):
        return "n/a" if x is None else f"{x:+.3f}"

    for r in comparison["runs"]:
        ci = r["balance_ci"] or [None, None]
        tfr = "n/a" if r["tfr"] is None else f"{r['tfr']:.3f}"
        click.echo(f"{r['label']}: TFR {tfr}  balance point {f(r['balance_point'])} [{f(ci[0])}, {f(ci[1])}] "
                   f"({r['balance_status']})")
    for p in comparison["pairs"]:
        ci = p["ci"] or [None, None]
        click.echo(f"{p['second']} - {p['first']}: {f(p['difference'])} [{f(ci[0])}, {f(ci[1])}]"
                   + ("" if p["p_value"] is None else f"  p={p['p_value']:.3f}") + (f"  ({p['note']})" if p.get("note") else ""))
    click.echo(f"-> {out}, {json_out}")
