"""Probe: preference steering (the study behind `mechmod steer`): the
direction mean(text-following) - mean(vision-following) answer-position
residual after a layer, estimated on a train split of the groups, added
with strength alpha while the held-out conflicts are answered; TFR,
following curve and balance point per alpha, and the balance point's
shift per unit alpha. Needs >= 2 groups; runs the study itself (``--run``
is not used).

    python probes/steering.py --out out/steering --groups 8 --layers 2 4 --alphas -1 1
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from _ingredients import RunSpec, dataset_dir, entry, load_model, parse, write

from mechmod.interventions.steering import SteerStudyConfig

_STUDY = SteerStudyConfig()


@dataclass
class Config(RunSpec):
    """The fields named as in :class:`SteerStudyConfig` go to the study
    (``seed`` also seeds the train / held-out split)."""

    out: Path = Path("out/probes/steering")
    layers: tuple[int, ...] | None = _STUDY.layers  # None: every layer
    alphas: tuple[float, ...] = _STUDY.alphas  # 0 is always added
    positions: str = _STUDY.positions  # all, last
    train_fraction: float = _STUDY.train_fraction
    within_group: bool = _STUDY.within_group  # --no-within-group: the pooled direction
    max_rows: int = _STUDY.max_rows
    n_boot: int = _STUDY.n_boot
    backend: str = _STUDY.backend


def main(argv=None) -> dict:
    from mechmod.data import load_cases
    from mechmod.interventions.steering import run_steering
    from mechmod.report import lines, panels

    cfg = parse(Config, argv, __doc__)
    study_cfg = SteerStudyConfig(**{f.name: getattr(cfg, f.name) for f in fields(SteerStudyConfig)})
    ds = dataset_dir(cfg)
    summary = dict(run_steering(load_model(cfg), ds, load_cases(ds), study_cfg).summary)
    for line in lines("steer", summary):
        print(line)
    data = {"model": str(cfg.model), "dataset": str(ds), "study_config": summary.pop("config"), **summary}
    return write(cfg, "steering", f"Preference steering: {cfg.model}", data, panels("steer", summary))


if __name__ == "__main__":
    entry(main)
