"""Probe: one image with its three descriptions dt = 0, 1, 2 (paper
Fig. 6b): the per-layer logit difference of each, showing how a harder
description hands the decision back to the image.

    python probes/case_study.py --out out/case                        # the most instructive image
    python probes/case_study.py --run RUN --image-id color-s0-g3-dv5  # a chosen one
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _ingredients import RunSpec, ensure_run, entry, load_run, main_cases, parse, write


@dataclass
class Config(RunSpec):
    out: Path = Path("out/probes/case_study")
    image_id: str | None = None  # default: the image whose dt 0-2 final logit differences spread most


def main(argv=None) -> dict:
    import numpy as np

    from mechmod.dynamics import pick_case_study
    from mechmod.errors import MechmodError
    from mechmod.report import panels

    cfg = parse(Config, argv, __doc__)
    summary, results = load_run(ensure_run(cfg))
    m = main_cases(results)
    image = cfg.image_id
    if image is None:
        final = np.array([v[-1] for v in m["layer_logit_diff"]], dtype=float)
        image = pick_case_study(m["image_id"].to_numpy(object), m["dt"].to_numpy(int), final)
    rows = m[m["image_id"] == image].sort_values("dt", kind="stable")
    if image is None or rows.empty:
        raise MechmodError(f"no conflict case of image {image!r} in the run" if image else
                           "no image has conflict cases for dt 0, 1 and 2; pass --image-id")
    emb = summary.get("include_embedding") is True  # lead with the embedding output (layer -1) as the run counts it
    n_layers = len(rows["layer_logit_diff"].iloc[0])
    case = {"image_id": image, "dv": int(rows["dv"].iloc[0]), "answer_vision": rows["answer_vision"].iloc[0],
            "answer_text": rows["answer_text"].iloc[0], "layers": list(range(-1 if emb else 0, n_layers)),
            "cases": [{"case_id": r.case_id, "dt": int(r.dt), "dh_rel": float(r.dh_rel), "follow": r.follow,
                       "description": getattr(r, "description", None),
                       "layer_logit_diff": [float(x) for x in ([r.embedding_logit_diff] if emb else [])
                                            + list(r.layer_logit_diff)]} for r in rows.itertuples()]}
    for c in case["cases"]:
        print(f"dt={c['dt']}  dHrel {c['dh_rel']:+.3f}  follows {c['follow']:<6}  final diff {c['layer_logit_diff'][-1]:+.3f}")
    return write(cfg, "case_study", f"Case study {image}: {summary.get('model')}", {"model": summary.get("model"), "case": case},
                 panels("run", {"case_study": case}, names=["case_study"]))


if __name__ == "__main__":
    entry(main)
