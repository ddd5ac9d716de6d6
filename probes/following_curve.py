"""Probe: the following curve and the balance point (paper Figs. 3b, 4):
P(text-following) against relative uncertainty dHrel, its crossing of 0.5
(logistic fit, bootstrap interval), and the low/high total-entropy halves.

    python probes/following_curve.py --out out/curve --bins 10 --binning width
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _ingredients import RunSpec, ensure_run, entry, load_run, parse, write


@dataclass
class Config(RunSpec):
    out: Path = Path("out/probes/following_curve")
    bins: int = 8
    binning: str = "quantile"  # or "width"
    n_boot: int = 1000
    boot_seed: int = 0


def main(argv=None) -> dict:
    from mechmod.compare import decided_cases
    from mechmod.following import balance_point, entropy_split, following_curve, monotonicity_test
    from mechmod.report import panels

    cfg = parse(Config, argv, __doc__)
    summary, results = load_run(ensure_run(cfg))
    d = decided_cases(results)
    dh, text = d["dh_rel"].to_numpy(float), (d["follow"] == "text").to_numpy()
    curves = {"all": following_curve(dh, text, bins=cfg.bins, binning=cfg.binning).to_dict()}
    balances = {"all": balance_point(dh, text, n_boot=cfg.n_boot, seed=cfg.boot_seed, bins=cfg.bins).to_dict()}
    split = entropy_split(dh, text, (d["h_t"] + d["h_v"]).to_numpy(float), n_boot=cfg.n_boot, seed=cfg.boot_seed)
    for half in ("low", "high"):
        sel = split[f"{half}_mask"]
        if sel.any():
            curves[f"{half} total entropy"] = following_curve(dh[sel], text[sel], bins=cfg.bins, binning=cfg.binning).to_dict()
            balances[f"{half} total entropy"] = split[half].to_dict()
    b = balances["all"]
    ci = "n/a" if not b["ci"] else f"[{b['ci'][0]:+.3f}, {b['ci'][1]:+.3f}]"
    est = "n/a" if b["estimate"] is None else f"{b['estimate']:+.3f}"
    print(f"{len(d)} decided cases; balance point {est} {ci} ({b['status']})")
    data = {"model": summary.get("model"), "n_decided": int(len(d)), "curves": curves, "balance": balances,
            "entropy_median": float(split["median"]), "monotonicity": monotonicity_test(dh, text)}
    halves = {h: {"curve": curves[f"{h} total entropy"], "balance": balances[f"{h} total entropy"]}
              for h in ("low", "high") if f"{h} total entropy" in curves}
    shown = {"curve": curves["all"], "balance": balances["all"], "entropy_split": halves}
    return write(cfg, "following_curve", f"Following curve: {summary.get('model')}", data,
                 panels("run", shown, {"results": d}, names=["following_curve", "dh_rel_histogram"]), caption="")


if __name__ == "__main__":
    entry(main)
