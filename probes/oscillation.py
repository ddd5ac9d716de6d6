"""Probe: layer-wise oscillation between the vision and the text answer
(paper Fig. 5): mean switches per case in the ambiguous region
(|dHrel - balance point| < radius), the clear region, and each control.

    python probes/oscillation.py --out out/osc --radius 0.3
    python probes/oscillation.py --run RUN --balance 0.0   # when the run has no balance point
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _ingredients import RunSpec, ensure_run, entry, load_run, parse, write


@dataclass
class Config(RunSpec):
    out: Path = Path("out/probes/oscillation")
    radius: float = 0.5
    balance: float | None = None  # default: the run's balance point
    n_boot: int = 1000


def main(argv=None) -> dict:
    from mechmod.dynamics import oscillation_summary
    from mechmod.errors import MechmodError
    from mechmod.following import region
    from mechmod.report import panels

    cfg = parse(Config, argv, __doc__)
    summary, results = load_run(ensure_run(cfg))
    balance = cfg.balance if cfg.balance is not None else summary.get("balance_point")
    if balance is None:
        status = (summary.get("balance") or {}).get("status")
        raise MechmodError(f"the run has no balance point (status {status!r}), so the ambiguous region is undefined; "
                           "pass --balance X to centre it by hand")
    ok = results[results["status"] == "ok"] if "status" in results else results
    regions = region(ok["dh_rel"].to_numpy(float), balance, cfg.radius)
    osc = oscillation_summary(ok["oscillations"].to_numpy(int), regions, ok["control"].to_numpy(object), n_boot=cfg.n_boot)
    for k, v in osc.items():
        print(f"{k:>28}: mean {v.get('mean')} (n={v.get('n')})")
    data = {"model": summary.get("model"), "balance": balance, "radius": cfg.radius,
            "lens": summary.get("lens"), "oscillations": osc}
    return write(cfg, "oscillation", f"Oscillations: {summary.get('model')}", data,
                 panels("run", data, names=["oscillations"]),
                 f"Ambiguous: |dHrel - {balance:+.3f}| < {cfg.radius}; bars: bootstrap 95% intervals.")


if __name__ == "__main__":
    entry(main)
