"""Probe: unimodal answer entropy and accuracy by difficulty tier (paper
Fig. 2). Vision-only entropy H(v) should rise with the visual tier dv and
text-only entropy H(t) with the text tier dt.

    python probes/entropy_by_tier.py --out out/entropy            # the organism
    python probes/entropy_by_tier.py --run RUN --out out/entropy  # an existing run
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _ingredients import RunSpec, ensure_run, entry, load_run, parse, write


@dataclass
class Config(RunSpec):
    out: Path = Path("out/probes/entropy_by_tier")


def main(argv=None) -> dict:
    from mechmod.report import panels

    cfg = parse(Config, argv, __doc__)
    summary, _ = load_run(ensure_run(cfg))
    data = {"model": summary.get("model"), "entropy_by_tier": summary["entropy_by_tier"],
            "accuracy_by_tier": summary.get("accuracy_by_tier")}
    for key in ("vision", "text"):
        tiers = ", ".join(f"{r['tier']}: {r['mean']:.3f}" for r in data["entropy_by_tier"][key] if r["mean"] is not None)
        print(f"mean H({key[0]}) by tier  {tiers}")
    return write(cfg, "entropy_by_tier", f"Entropy by tier: {summary.get('model')}", data,
                 panels("run", summary, names=["entropy_by_tier"]))


if __name__ == "__main__":
    entry(main)
