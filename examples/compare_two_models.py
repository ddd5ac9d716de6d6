"""Run the behavioural study for two models on the same cases and compare
their following curves and balance points (paper Fig. 4a). By default the
organism against itself in bfloat16: does precision move the balance point?

    python examples/compare_two_models.py --models organism /path/to/other --dtypes float32 float32
"""

import argparse
import tempfile
from pathlib import Path

import mechmod
from mechmod.compare import compare_runs
from mechmod.data import generate_color
from mechmod.report import page
from mechmod.rundir import RunConfig
from mechmod.runner import dataset_fingerprint, run_study


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs=2, default=["organism", "organism"])
    ap.add_argument("--dtypes", nargs=2, default=["float32", "bfloat16"])
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--out", default="out/compare-example.html")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        ds = generate_color(f"{tmp}/ds", groups=args.groups, dv=None, controls=False, progress=False)
        runs, labels = [], []
        for i, (model, dtype) in enumerate(zip(args.models, args.dtypes)):
            mllm = mechmod.load_model(model, dtype=dtype)
            lens = mechmod.LogitLens(mechmod.Unembed.from_model(mllm))
            config = RunConfig(model=model, dataset=str(ds), dataset_sha256=dataset_fingerprint(ds))
            runs.append(run_study(mllm, lens, ds, Path(tmp) / f"run{i}", config, progress=False))
            labels.append(f"{i + 1}: {Path(model).name} ({dtype})")

        comparison = compare_runs(runs, labels=labels, n_boot=200)
    f = lambda x: "n/a" if x is None else f"{x:+.3f}"  # noqa: E731
    for r in comparison["runs"]:
        ci = r["balance_ci"] or [None, None]
        print(f"{r['label']}: TFR {f(r['tfr'])}, balance point {f(r['balance_point'])} "
              f"[{f(ci[0])}, {f(ci[1])}] ({r['balance_status']})")
    for p in comparison["pairs"]:
        ci = p["ci"] or [None, None]
        print(f"({p['second']}) - ({p['first']}): {f(p['difference'])} [{f(ci[0])}, {f(ci[1])}] {p['note']}")
    page("compare", comparison).write(args.out)
    print(f"-> {args.out}")
    return comparison


if __name__ == "__main__":
    main()
