"""mechmod.names defines every user-facing name once: the library's
constants are its tuples and every CLI choice list reads one of them."""

import click

from mechmod import names
from mechmod.cli import _register, cli


def _commands(group: click.Group):
    for cmd in group.commands.values():
        yield cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd)


def test_every_cli_choice_is_a_registered_name():
    _register()
    registered = [v for k, v in vars(names).items() if k.isupper()]
    choices = [(cmd.name, p.name, p.type.choices) for cmd in _commands(cli) for p in cmd.params
               if isinstance(p.type, click.Choice)]
    assert len(choices) >= 13
    # the very tuple, not an equal copy
    assert [c[:2] for c in choices if not any(c[2] is v for v in registered)] == []


def test_library_constants_are_the_names():
    from mechmod import tracing
    from mechmod.data import schema
    from mechmod.interventions import cases, core, heads, patching, steering
    from mechmod.uncertainty import UNCERTAINTY_MEASURES

    assert tracing.BACKENDS is core.BACKENDS is names.BACKENDS
    assert tracing.SPANS is names.ATTENTION_SPANS and patching.SPANS is names.SPANS
    assert patching.POSITION_GROUPS is names.POSITION_GROUPS and patching.COMPONENTS is names.PATCH_COMPONENTS
    assert core.SITE_COMPONENTS is names.SITE_COMPONENTS and heads.KNOCKOUT_MODES is names.KNOCKOUT_MODES
    assert steering.STEER_POSITIONS is names.STEER_POSITIONS and schema.CONTROLS is names.CONTROLS
    assert tuple(UNCERTAINTY_MEASURES) == names.UNCERTAINTY_MEASURES
    assert tuple(cases.DIRECTIONS) == names.PATCH_DIRECTIONS
