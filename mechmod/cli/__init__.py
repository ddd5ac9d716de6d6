"""The ``mechmod`` command line. Each command group lives in its own module
and registers itself on ``cli``; errors meant for the user
(:class:`mechmod.errors.MechmodError`) print as one line, exit code 2."""

from __future__ import annotations

import importlib
import sys
import warnings
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
    "mechmod.cli.choice",
    "mechmod.cli.study",
    "mechmod.cli.finetune",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mechmod")
def cli() -> None:
    """mechmod: which modality does a multimodal LLM follow, and where is the choice made."""


def generated_color_dataset(target: Path, groups: int, seed: int, dv=None, progress: bool = False,
                            consistent: bool = False) -> Path:
    """The colour dataset (controls included; the opt-in ``consistent``
    control with ``consistent``) a command generates when given no
    --dataset; a re-run of the command finds it there and reuses it, when
    it was generated with the same arguments (else it is refused)."""
    from mechmod import _io
    from mechmod.data.color import N_DV
    from mechmod.data.writer import parse_tiers

    target = Path(target)
    want = {"groups": groups, "seed": seed, "dv": list(parse_tiers(dv, N_DV, "visual (dv)")), "consistent": consistent}
    manifest = target / "manifest.json"
    if manifest.is_file():
        man = _io.read_json(manifest, f"remove {target} to generate it again", expect=dict)
        options = man.get("options") if isinstance(man.get("options"), dict) else {}
        have = {"groups": options.get("groups"), "seed": man.get("seed"), "dv": options.get("dv"),
                "consistent": "consistent" in (options.get("controls") or ())}
        if have != want:
            diff = ", ".join(f"{k} {have[k]!r} there vs {want[k]!r} asked" for k in want if have[k] != want[k])
            raise MechmodError(f"{target} holds a colour dataset generated with other arguments ({diff}); "
                               "choose another --out directory")
        return target
    from mechmod.data import generate_color

    click.echo(f"generating a colour dataset ({groups} groups, seed {seed}) into {target}", err=True)
    generate_color(target, groups=groups, seed=seed, controls=True, progress=progress, consistent=consistent,
                   **({"dv": list(dv)} if dv else {}))
    return target


#: groups of the colour dataset an intervention command generates without --groups
STUDY_GROUPS = 3


def study_dataset(dataset_dir, groups, seed, dv, out: Path, consistent: bool = False) -> Path:
    """The dataset of an intervention command: --dataset DIR as given, or a
    colour dataset generated into OUT/dataset (--groups, --seed, --dv; the
    ``consistent`` control with ``consistent``)."""
    if dataset_dir is not None:
        if groups is not None or dv:
            raise MechmodError("give --dataset DIR or --groups N [--dv ...], not both")
        if not (Path(dataset_dir) / "manifest.json").is_file():
            raise MechmodError(f"{dataset_dir}: not a mechmod dataset (no manifest.json)")
        return Path(dataset_dir)
    return generated_color_dataset(out / "dataset", groups or STUDY_GROUPS, seed, dv or None, consistent=consistent)


def check_device(device: str) -> str:
    """--device, checked before anything is loaded: cpu, cuda, cuda:N (of the
    GPUs visible) or mps (where available)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise MechmodError(f"--device {device!r}: not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise MechmodError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise MechmodError(f"--device {device}: only {n} CUDA GPU(s) are visible (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise MechmodError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise MechmodError(f"--device {device}: mechmod runs on cpu, cuda, cuda:N or mps")
    return device


def load_for_command(model: str, device: str, dtype: str | None, trust_remote_code: bool = False,
                     threads: int | None = None):
    """``load_model`` with a command's --device/--dtype/--threads options."""
    from mechmod.models import load_model

    check_device(device)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a user's mistake ends in one line and exit
    code 2 (warnings print as one line each too)."""
    _register()
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            cli.main(args=argv, standalone_mode=False)
        except MechmodError as err:
            click.echo("error: " + " ".join(str(err).split("\n")), err=True)
            return 2
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            return 130
        except click.UsageError as err:
            hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
            click.echo(f"error: {err.format_message()}{hint}", err=True)
            return 2
        except click.ClickException as err:
            err.show()
            return err.exit_code
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
