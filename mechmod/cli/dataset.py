"""``mechmod dataset``: generate, convert and check conflict datasets."""

from __future__ import annotations

import time

import click

from mechmod.cli import cli
from mechmod.names import ATTRIBUTE_SUBSETS


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip().lower() for v in value.split(",") if v.strip()]


def _report(path, t0: float) -> None:
    from mechmod.data.schema import MANIFEST

    import json

    man = json.loads((path / MANIFEST).read_text())
    click.echo(f"wrote {man['n_cases']} cases, {man['n_groups']} groups, {man['n_images']} images to {path} "
               f"in {time.time() - t0:.1f} s")


@cli.group("dataset")
def dataset() -> None:
    """Conflict datasets (one schema: DIR/cases.parquet, DIR/images/, DIR/manifest.json)."""


_groups = click.option("--groups", required=True, type=int, help="Number of groups (positive).")
_seed = click.option("--seed", default=0, show_default=True, type=int, help="Fixes the dataset byte for byte.")
_out = click.option("--out", "out", required=True, type=click.Path(), help="New or empty output directory.")
_progress = click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")


@dataset.command("color")
@_groups
@_seed
@_out
@click.option("--controls/--no-controls", default=True, show_default=True,
              help="Also write text_irrelevant and image_irrelevant cases for every (dv, dt).")
@click.option("--dv", default=None, help="Visual tiers, e.g. '0-4,9' (default all 0-13).")
@click.option("--dt", default=None, help="Text tiers, e.g. '0,2' (default 0-2).")
@click.option("--colors", default=None, help="Answer colours, comma separated (default all 6).")
@click.option("--shapes", default=None, help="Target shapes, comma separated (default all).")
@click.option("--workers", default=1, show_default=True, type=int, help="Rendering processes (same bytes).")
@click.option("--consistent", is_flag=True, help="Also write the opt-in `consistent` control for every (dv, dt): "
              "the description states the image's colour, otherwise the conflict case's words.")
@_progress
def color_cmd(groups, seed, out, controls, dv, dt, colors, shapes, workers, consistent, progress) -> None:
    """Colour recognition: 14 visual x 3 text tiers per group (the paper's colour dataset)."""
    from mechmod.data import generate_color

    t0 = time.time()
    path = generate_color(out, groups=groups, seed=seed, controls=controls, progress=progress, dv=dv, dt=dt,
                          colors=_split(colors), shapes=_split(shapes), workers=workers, consistent=consistent)
    _report(path, t0)


@dataset.command("attribute")
@click.option("--subset", type=click.Choice(ATTRIBUTE_SUBSETS), default="both", show_default=True)
@_groups
@_seed
@_out
@click.option("--controls/--no-controls", default=True, show_default=True)
@click.option("--dv", default=None, help="Visual tiers, e.g. '0,3' (default 0-3).")
@click.option("--dt", default=None, help="Text tiers, e.g. '0-2' (default 0-3).")
@click.option("--shapes", default=None, help="Answer shapes for the shape subset (default sphere,cube,cylinder).")
@_progress
def attribute_cmd(subset, groups, seed, out, controls, dv, dt, shapes, progress) -> None:
    """Attribute recognition (shape, material) on rendered CLEVR-like scenes."""
    from mechmod.data import generate_attribute

    t0 = time.time()
    path = generate_attribute(out, groups=groups, seed=seed, subset=subset, controls=controls, progress=progress,
                              dv=dv, dt=dt, shapes=_split(shapes))
    _report(path, t0)


@dataset.command("clevr")
@click.option("--clevr-dir", required=True, type=click.Path(), help="A CLEVR_v1.0 directory (scenes/ and images/).")
@click.option("--split", default="val", show_default=True)
@click.option("--subset", type=click.Choice(ATTRIBUTE_SUBSETS), default="both", show_default=True)
@_groups
@_seed
@_out
@click.option("--controls/--no-controls", default=True, show_default=True)
@_progress
def clevr_cmd(clevr_dir, split, subset, groups, seed, out, controls, progress) -> None:
    """Attribute conflict groups from a local CLEVR copy (images are copied)."""
    from mechmod.data.clevr import load_clevr

    t0 = time.time()
    path = load_clevr(clevr_dir, split, out, groups=groups, seed=seed, subset=subset, controls=controls,
                      progress=progress)
    _report(path, t0)


@dataset.command("mc2")
@click.option("--mc2-file", "files", required=True, multiple=True, type=click.Path(),
              help="A released MC2 JSON file, e.g. data/evaluate_final_text_error1.json (repeat for several).")
@click.option("--coco-dir", "coco_dirs", required=True, multiple=True, type=click.Path(),
              help="Folder of the COCO images the records name, e.g. val2014/ (repeat for several).")
@_out
@click.option("--seed", default=0, show_default=True, type=int, help="Recorded in the rows.")
@_progress
def mc2_cmd(files, coco_dirs, out, seed, progress) -> None:
    """Convert the MC2 benchmark's released files (with their COCO images) to the mechmod schema;
    records without an image are skipped, one line each on stderr."""
    from mechmod.data.mc2 import load_mc2

    t0 = time.time()
    path = load_mc2(files, out, coco_dirs, seed=seed, progress=progress, report=lambda line: click.echo(line, err=True))
    _report(path, t0)


@dataset.command("check")
@click.argument("directory", type=click.Path())
@click.option("--hashes/--no-hashes", default=False, show_default=True, help="Also verify every image digest.")
def check_cmd(directory, hashes) -> None:
    """Validate a dataset directory and print a summary."""
    from mechmod.data.schema import load_cases, read_manifest

    df = load_cases(directory, verify_hashes=hashes)
    man = read_manifest(directory)
    tasks = ", ".join(f"{k}={v}" for k, v in df["task"].value_counts().sort_index().items())
    click.echo(f"{directory}: ok ({man['format']}), {len(df)} cases, {df['group_id'].nunique()} groups, "
               f"{df['image_path'].nunique()} images; tasks {tasks}")
