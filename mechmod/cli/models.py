"""`mechmod models`: the supported families and the built-in model names."""

from __future__ import annotations

import click

from mechmod.cli import cli


@cli.command("models")
def models_cmd():
    """List the model families mechmod supports and the built-in short names."""
    from mechmod.models import builtin_models, families

    click.echo("families (HF model_type -> class):")
    for name, adapter in families().items():
        click.echo(f"  {name:<11} {', '.join(adapter.model_types):<11} {adapter.model_class:<36} {adapter.description}")
    click.echo("built-in names (--model NAME):")
    for short, target in builtin_models().items():
        click.echo(f"  {short:<21} {target}")
