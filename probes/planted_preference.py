"""Probe: does mechmod recover a planted preference? The shipped organisms
differ only in the text weight W their conflicts were trained with
(p_v * p_t^W): organism-vision (W = 0.4) < organism (W = 1) <
organism-text (W = 1.6) in balance point. Runs all of them on one fresh
dataset, sets each measured balance point beside the oracle one (where
argmax p_v * p_t^W over the model's own unimodal distributions switches),
and checks the order, the outer two with 95% intervals apart. W is read
from each model's ``organism.json`` unless ``--weights`` gives it.

    python probes/planted_preference.py --groups 24 --seed 11 --out out/planted
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from _ingredients import RunSpec, dataset_dir, ensure_run, entry, load_run, parse, write


@dataclass
class Config(RunSpec):
    out: Path = Path("out/probes/planted_preference")
    models: tuple[str, ...] = ("organism-vision", "organism", "organism-text")
    weights: tuple[float, ...] | None = None  # default: each organism's own organism.json
    groups: int = 24
    seed: int = 11


def planted_weight(model: str) -> float:
    """The text weight W a trained organism records in its ``organism.json``."""
    from mechmod import _io
    from mechmod.errors import MechmodError
    from mechmod.models import resolve

    path = Path(resolve(model)) / "organism.json"
    if not path.is_file():
        raise MechmodError(f"{model}: no organism.json records its planted text weight; pass --weights, "
                           "one per model")
    return float(_io.read_json(path, f"{model}'s organism.json", dict).get("text_weight", 1.0))


def main(argv=None) -> dict:
    from mechmod.compare import compare_runs
    from mechmod.errors import MechmodError
    from mechmod.organism.preference import oracle_balance_point
    from mechmod.report import panels

    cfg = parse(Config, argv, __doc__)
    weights = cfg.weights or tuple(planted_weight(m) for m in cfg.models)
    if len(cfg.models) != len(weights) or len(cfg.models) < 2:
        raise MechmodError("--models and --weights: one planted weight per model, at least two models")
    ds = dataset_dir(cfg)
    runs = [ensure_run(dataclasses.replace(cfg, model=m, dataset=ds, out=Path(cfg.out) / Path(m).name))
            for m in cfg.models]
    comparison = compare_runs(runs, labels=[Path(m).name for m in cfg.models])
    rows = []
    for run, model, w, info in zip(runs, cfg.models, weights, comparison["runs"]):
        _, results = load_run(run)
        ok = results[(results["status"] == "ok") & (results["control"] == "none")]
        oracle = oracle_balance_point(ok, w).to_dict()
        rows.append({"model": model, "text_weight": w, "balance_point": info["balance_point"],
                     "balance_ci": info["balance_ci"], "oracle_balance_point": oracle["estimate"],
                     "oracle_ci": oracle["ci"], "tfr": info["tfr"], "n_decided": info["n_decided"]})
    est = [r["balance_point"] for r in rows]
    ordered = all(a is not None and b is not None and a < b for a, b in zip(est, est[1:]))
    lo, hi = rows[0]["balance_ci"], rows[-1]["balance_ci"]
    apart = bool(lo and hi and lo[1] < hi[0])
    for r in rows:
        ci = "n/a" if not r["balance_ci"] else f"[{r['balance_ci'][0]:+.3f}, {r['balance_ci'][1]:+.3f}]"
        fmt = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
        print(f"{r['model']:>16} W={r['text_weight']:<4} balance {fmt(r['balance_point'])} {ci}  "
              f"oracle {fmt(r['oracle_balance_point'])}  TFR {fmt(r['tfr'])}")
    print(f"planted order recovered: {ordered}; outer intervals apart: {apart}")
    data = {"rows": rows, "ordered": ordered, "outer_intervals_apart": apart, "comparison": comparison}
    return write(cfg, "planted_preference", "Planted preference: organisms that differ only in W", data,
                 panels("compare", comparison))


if __name__ == "__main__":
    entry(main)
