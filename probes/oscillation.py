"""Probe: layer-wise oscillation between the vision and the text answer
(paper Fig. 5): mean switches per case in the ambiguous region
(|dHrel - balance point| < radius), the clear region, and each control,
and where they happen: the per-layer switch rates and the third of the
decoder layers holding most switches. Votes count the decoder layers
(0..L-1), and the embedding output (layer -1) too when the run was made
with it (``--include-embedding`` here, or ``mechmod run --include-embedding``).

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
    from mechmod.dynamics import counted_votes, first_counted_layer, oscillation_summary, switch_rate_summary
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
    controls = ok["control"].to_numpy(object)
    osc = oscillation_summary(ok["oscillations"].to_numpy(int), regions, controls, n_boot=cfg.n_boot)
    emb = summary.get("include_embedding") is True
    votes = counted_votes(ok["layer_votes"], ok["embedding_vote"] if emb else None)
    rates = switch_rate_summary(votes, regions, controls, first_counted_layer(emb), n_boot=cfg.n_boot)
    for k, v in osc.items():
        band = rates[k].get("band")
        where = f"; {band['share']:.0%} of switches in the {band['name']} layers" if band else ""
        print(f"{k:>28}: mean {v.get('mean')} (n={v.get('n')}{where})")
    data = {"model": summary.get("model"), "balance": balance, "radius": cfg.radius, "lens": summary.get("lens"),
            "include_embedding": emb, "oscillations": osc, "switch_rates": rates}
    return write(cfg, "oscillation", f"Oscillations: {summary.get('model')}", data,
                 panels("run", data, names=["oscillations", "switch_rates"]),
                 f"Ambiguous: |dHrel - {balance:+.3f}| < {cfg.radius}; bars: bootstrap 95% intervals.")


if __name__ == "__main__":
    entry(main)
