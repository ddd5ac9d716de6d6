"""The ``mechmod`` command line. Each command group lives in its own module
and registers itself on ``cli``; errors meant for the user
(:class:`mechmod.errors.MechmodError`) print as one line, exit code 2."""

from __future__ import annotations

import importlib
import sys

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
