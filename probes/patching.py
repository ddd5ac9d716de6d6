"""Probe: activation patching over a dataset (the study behind `mechmod
patch`): per layer, the residual stream (or attention / MLP output) at a
position group copied from a source prompt (vision-only V->C, text-only
T->C, image-irrelevant control I->C) into the conflict prompt; flip rate
and logit-difference restoration per layer, first layer with 50% flips,
critical window, dHrel bins; heads and MLPs at the last token patched and
knocked out. Runs the study itself (``--run`` is not used).

    python probes/patching.py --out out/patching --groups 3 --positions question last --knockouts zero
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from _ingredients import RunSpec, dataset_dir, entry, load_model, parse, write

from mechmod.interventions.patch_study import PatchStudyConfig

_STUDY = PatchStudyConfig()


@dataclass
class Config(RunSpec):
    """The fields named as in :class:`PatchStudyConfig` go to the study."""

    out: Path = Path("out/probes/patching")
    groups: int = 3
    directions: tuple[str, ...] = _STUDY.directions  # V->C, T->C, I->C
    positions: tuple[str, ...] = _STUDY.positions  # image, description, question, template, last, all
    components: tuple[str, ...] = _STUDY.components  # resid, attn, mlp
    units: bool = _STUDY.units  # single heads and MLPs at the last token
    knockouts: tuple[str, ...] = _STUDY.knockouts  # zero, mean
    max_rows: int = _STUDY.max_rows
    dh_bins: int = _STUDY.dh_bins
    t_min: float = _STUDY.t_min
    radius: float = _STUDY.radius  # half-width of the ambiguous region (flip rates by region)
    backend: str = _STUDY.backend


def main(argv=None) -> dict:
    from mechmod.data import load_cases
    from mechmod.interventions.patch_study import run_patching
    from mechmod.report import lines, panels

    cfg = parse(Config, argv, __doc__)
    study_cfg = PatchStudyConfig(**{f.name: getattr(cfg, f.name) for f in fields(PatchStudyConfig)})
    ds = dataset_dir(cfg)
    summary = dict(run_patching(load_model(cfg), ds, load_cases(ds), study_cfg).summary)
    for line in lines("patch", summary):
        print(line)
    data = {"model": str(cfg.model), "dataset": str(ds), "study_config": summary.pop("config"), **summary}
    return write(cfg, "patching", f"Activation patching: {cfg.model}", data, panels("patch", summary))


if __name__ == "__main__":
    entry(main)
