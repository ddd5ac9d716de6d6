"""The ``mechmod`` command line. Each command group lives in its own module
and registers itself on ``cli``; errors meant for the user
(:class:`mechmod.errors.MechmodError`) print as one line, exit code 2."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from mechmod.errors import MechmodError

# Modules that define commands (each imports ``cli`` from here and adds to it).
COMMAND_MODULES = [
    "mechmod.cli.run",
    "mechmod.cli.lens",
    "mechmod.cli.dataset",
    "mechmod.cli.organism",
    "mechmod.cli.models",
    "mechmod.cli.compare",
    "mechmod.cli.patch",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mechmod")
def cli() -> None:
    """mechmod: which modality does a multimodal LLM follow, and where is the choice made."""


def generated_color_dataset(target: Path, groups: int, seed: int, dv=None, progress: bool = False) -> Path:
    """The colour dataset (controls included) a command generates when given
    no --dataset; a re-run of the command finds it there and reuses it."""
    if not (Path(target) / "manifest.json").is_file():
        from mechmod.data import generate_color

        click.echo(f"generating a colour dataset ({groups} groups, seed {seed}) into {target}", err=True)
        generate_color(target, groups=groups, seed=seed, controls=True, progress=progress,
                       **({"dv": list(dv)} if dv else {}))
    return Path(target)


def load_for_command(model: str, device: str, dtype: str | None, trust_remote_code: bool = False,
                     threads: int | None = None):
    """``load_model`` with a command's --device/--dtype/--threads options."""
    from mechmod.models import load_model

    if threads:
        import torch

        torch.set_num_threads(threads)
    return load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        cli.main(args=argv, standalone_mode=False)
    except MechmodError as err:
        click.echo(f"error: {err}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
