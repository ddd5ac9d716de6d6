"""Probe: is the choice decodable before the lens shows it? Per layer (-1
the embedding output, 0..L-1 the decoder layers) an L2 logistic probe on
the answer-position residual predicts the follow outcome (text vs vision),
against the logit lens's vote at that layer, and conflict vs the opt-in
`consistent` control (image and description agree, otherwise the same
prompt); accuracy held out by group with bootstrap intervals over groups.
Also the answer position's text-dominance index per token (the study
behind `mechmod probe`).

    python probes/choice_probes.py --out out/choice_probes --groups 6
    python probes/choice_probes.py --run RUN   # a run's cases and answers (its dataset needs the control)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _ingredients import RunSpec, dataset_dir, entry, load_model, parse, write


@dataclass
class Config(RunSpec):
    out: Path = Path("out/probes/choice_probes")
    groups: int = 6
    l2: float = 1.0  # penalty: sum of log losses + l2 / 2 |w|^2 on standardised features
    folds: int = 5  # cross-validation folds, split by group
    n_boot: int = 1000
    radius: float = 0.5  # half-width of the ambiguous region (without --run)
    backend: str = "nnsight"


def main(argv=None) -> dict:
    from mechmod.interventions.clean import from_baseline, from_run
    from mechmod.interventions.probes import run_probes
    from mechmod.report import lines, panels

    cfg = parse(Config, argv, __doc__)
    mllm = load_model(cfg)
    clean = from_run(cfg.run) if cfg.run else from_baseline(
        mllm, dataset_dir(cfg, consistent=True), batch_size=cfg.batch_size, backend=cfg.backend, radius=cfg.radius,
        n_boot=cfg.n_boot, seed=cfg.seed)
    table, summary = run_probes(mllm, clean, cfg.batch_size, cfg.backend, cfg.l2, cfg.folds, cfg.n_boot, cfg.seed)
    summary = {"model": str(cfg.model), **summary}
    for line in lines("probes", summary):
        print(line)
    return write(cfg, "choice_probes", f"Linear probes: {cfg.model}", summary, panels("probes", summary))


if __name__ == "__main__":
    entry(main)
