"""Probe: mean layer-wise logit difference, logit(text answer) -
logit(vision answer) under the run's lens, in bins of dHrel (paper Fig. 6a),
over the decoder layers 0..L-1 (and the embedding output, layer -1, when the
run counts it: ``mechmod run --include-embedding``).

    python probes/logit_heatmap.py --out out/heat --edges -2 -1 -0.5 0 0.5 1 2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from _ingredients import RunSpec, ensure_run, entry, load_run, main_cases, parse, write

from mechmod.dynamics import DH_EDGES


@dataclass
class Config(RunSpec):
    out: Path = Path("out/probes/logit_heatmap")
    edges: tuple[float, ...] = field(default_factory=lambda: tuple(DH_EDGES))


def main(argv=None) -> dict:
    import numpy as np

    from mechmod.dynamics import first_counted_layer, logit_diff_by_dh
    from mechmod.report import panels

    cfg = parse(Config, argv, __doc__)
    summary, results = load_run(ensure_run(cfg))
    main_ = main_cases(results)
    emb = summary.get("include_embedding") is True
    diffs = np.stack([np.asarray(v, float) for v in main_["layer_logit_diff"]])
    if emb:
        diffs = np.column_stack([main_["embedding_logit_diff"].to_numpy(float), diffs])
    heat = logit_diff_by_dh(main_["dh_rel"].to_numpy(float), diffs, edges=cfg.edges, first_layer=first_counted_layer(emb))
    print(f"{len(main_)} cases, layers {heat['layers'][0]}..{heat['layers'][-1]}, cases per bin {heat['n']}")
    data = {"model": summary.get("model"), "lens": summary.get("lens"), "heatmap": heat}
    return write(cfg, "logit_heatmap", f"Logit difference by layer: {summary.get('model')}", data,
                 panels("run", {"logit_diff_heatmap": heat}, names=["logit_diff_heatmap"]),
                 "Red: the text answer leads; blue: the vision answer leads. Empty bins are blank.")


if __name__ == "__main__":
    entry(main)
