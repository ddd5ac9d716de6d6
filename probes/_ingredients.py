"""What every probe shares (after tuned-lens's ``scripts/ingredients.py``):
a config dataclass turned into command-line options, a study run (made, or
reused with ``--run``), and the probe's outputs (HTML + JSON).

A probe is ``Config`` (a dataclass extending :class:`RunSpec`) plus
``main(argv) -> dict``; it computes nothing itself: the statistics come from
``mechmod`` and the figures from the registry of ``mechmod.report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mechmod.rundir import RunDir


@dataclass
class RunSpec:
    """Model, data and output of a probe.

    ``run``: an existing run directory (``mechmod run --out RUN``) to read
    instead of running the study (its own ``include_embedding`` holds);
    ``dataset``: a dataset directory (default: generate a colour dataset of
    ``groups`` groups into OUT/dataset)."""

    model: str = "organism"
    dataset: Path | None = None
    out: Path = Path("out/probes")
    run: Path | None = None
    groups: int = 4
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 8
    lens_path: Path | None = None
    include_embedding: bool = False  # count the embedding output (layer -1) in the votes of the run made here


def _base_type(tp):
    """``Path | None`` -> (Path, optional); ``tuple[float, ...]`` -> (float, nargs '+')."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return _base_type(args[0])
    if typing.get_origin(tp) in (tuple, list):
        return args[0], "+"
    return tp, None


def parse(cls, argv: Sequence[str] | None, doc: str | None = None):
    """An instance of the dataclass ``cls`` from command-line options
    (``--field-name VALUE``; booleans as ``--x/--no-x``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, nargs = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, dest=f.name, type=tp, nargs=nargs, default=default,
                                help=f"default: {default}")
    ns = parser.parse_args(list(argv) if argv is not None else None)
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(ns).items()}
    return cls(**values)


def dataset_dir(cfg: RunSpec, controls: bool = True, consistent: bool = False) -> Path:
    """``cfg.dataset``, else a colour dataset generated once into OUT/dataset
    (with the opt-in ``consistent`` control when asked)."""
    if cfg.dataset is not None:
        return Path(cfg.dataset)
    path = Path(cfg.out) / "dataset"
    if not (path / "manifest.json").is_file():
        from mechmod.data import generate_color

        print(f"generating a colour dataset ({cfg.groups} groups, seed {cfg.seed}) into {path}")
        generate_color(path, groups=cfg.groups, seed=cfg.seed, controls=controls, progress=False,
                       consistent=consistent)
    return path


def load_model(cfg: RunSpec):
    from mechmod.models import load_model as _load

    return _load(cfg.model, device=cfg.device)


def ensure_run(cfg: RunSpec) -> Path:
    """A finished run directory: ``cfg.run`` as given, else the study run
    (or resumed) into OUT/run with :func:`mechmod.runner.run_study`."""
    if cfg.run is not None:
        run = Path(cfg.run)
        if not RunDir(run).summary.is_file():
            from mechmod.errors import MechmodError

            raise MechmodError(f"{run}: no summary.json; give a finished run (`mechmod run --out {run}` "
                               f"or `mechmod summarize {run}`)")
        return run
    from mechmod.lenses import LogitLens, TunedLens, Unembed
    from mechmod.rundir import RunConfig
    from mechmod.runner import dataset_fingerprint, run_study

    ds = dataset_dir(cfg)
    mllm = load_model(cfg)
    unembed = Unembed.from_model(mllm)
    lens = TunedLens.load(cfg.lens_path, unembed) if cfg.lens_path else LogitLens(unembed)
    config = RunConfig(model=str(cfg.model), dataset=str(ds.resolve()), dataset_sha256=dataset_fingerprint(ds),
                       lens="tuned" if cfg.lens_path else "logit",
                       lens_path=str(cfg.lens_path) if cfg.lens_path else None, batch_size=cfg.batch_size,
                       include_embedding=cfg.include_embedding)
    return run_study(mllm, lens, ds, Path(cfg.out) / "run", config, progress=False)


def load_run(run: Path):
    """(summary dict, results DataFrame) of a finished run."""
    from mechmod.compare import load_run as _load

    return _load(run)


def write(cfg: RunSpec, name: str, title: str, data: dict[str, Any], panels: Sequence,
          caption: str | None = None) -> dict[str, Any]:
    """OUT/NAME.json (``data`` plus the config) and OUT/NAME.html (the
    figures, plotly embedded); returns the JSON dict. ``panels``: sections
    from :func:`mechmod.report.panels`; ``caption``, when given, replaces
    their registered captions (a probe's own wording)."""
    from mechmod import _io
    from mechmod.report import Page

    out = Path(cfg.out)
    doc = _io.jsonable({"probe": name, "config": dataclasses.asdict(cfg), **data})
    rep = Page(title)
    for panel in panels:
        rep.add_panel(panel if caption is None else dataclasses.replace(panel, caption=caption))
    rep.write(out / f"{name}.html")
    _io.write_text(out / f"{name}.json", json.dumps(doc, indent=2, default=str))
    print(f"{name}: -> {out / (name + '.html')}, {out / (name + '.json')}")
    return doc


def main_cases(results):
    """Scored conflict cases (no control)."""
    ok = results[results["status"] == "ok"] if "status" in results else results
    return ok[ok["control"] == "none"]


def entry(main) -> None:
    """Run ``main()`` as a script: a :class:`mechmod.errors.MechmodError`
    prints as one line and exits with code 2 (as the ``mechmod`` CLI does)."""
    import sys

    from mechmod.errors import MechmodError

    try:
        main()
    except MechmodError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
