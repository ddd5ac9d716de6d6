"""Validation of the balance-point estimator on simulated populations.

    python -m benchmarks.estimators [--seeds 100] [--n 500] [--n-boot 200]

Cases are drawn from a known following curve P(text) = sigmoid(slope *
(dHrel - b)) with dHrel uniform on [-2, 2]; for each true b the 95%
bootstrap interval's coverage and the estimate's bias are reported (one
JSON line per true balance point, then the pooled line)."""

from __future__ import annotations

import argparse
import json

import numpy as np

from mechmod.following import balance_point


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--slope", type=float, default=-2.5)
    a = p.parse_args(argv)
    rng = np.random.default_rng(20261126)
    pooled_cover, pooled_err = [], []
    for truth in (-0.6, 0.0, 0.4):
        cover, err, status = [], [], []
        for _ in range(a.seeds):
            dh = rng.uniform(-2, 2, a.n)
            t = rng.random(a.n) < 1 / (1 + np.exp(-a.slope * (dh - truth)))
            bp = balance_point(dh, t, n_boot=a.n_boot, seed=int(rng.integers(1 << 30)))
            status.append(bp.status)
            if bp.status == "ok" and bp.ci:
                cover.append(bp.ci[0] <= truth <= bp.ci[1])
                err.append(bp.estimate - truth)
        pooled_cover += cover
        pooled_err += err
        print(json.dumps({"truth": truth, "runs": a.seeds, "ok": len(cover), "coverage": round(float(np.mean(cover)), 3),
                          "bias": round(float(np.mean(err)), 4), "rmse": round(float(np.sqrt(np.mean(np.square(err)))), 4)}))
    print(json.dumps({"pooled": True, "runs": len(pooled_cover), "coverage": round(float(np.mean(pooled_cover)), 3),
                      "bias": round(float(np.mean(pooled_err)), 4), "n": a.n, "n_boot": a.n_boot, "slope": a.slope}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
