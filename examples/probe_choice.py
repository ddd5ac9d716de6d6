"""Probe whether a model's residual stream knows that image and text
disagree: encode conflict cases and their `consistent` twins (the same
prompt, the description stating the image's colour), read the answer
position's residual at every layer, and fit a logistic probe per layer,
held out by group.

    python examples/probe_choice.py --groups 4
"""

import argparse
import tempfile

import numpy as np

import mechmod
from mechmod.data import generate_color, load_cases, open_image
from mechmod.interventions.probes import probe_rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="organism")
    ap.add_argument("--groups", type=int, default=4)
    args = ap.parse_args(argv)

    mllm = mechmod.load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:  # conflict cases and the opt-in control, two image tiers
        ds = generate_color(f"{tmp}/ds", groups=args.groups, dv=[0, 9], controls=False, consistent=True,
                            progress=False)
        cases = load_cases(ds)
        images = [open_image(ds, p) for p in cases["image_path"]]

    resid = []
    for s in range(0, len(cases), 8):  # resid [B, L+1, D]: the embedding output, then each decoder layer
        enc = mllm.encode(images[s : s + 8], list(cases["description"][s : s + 8]), list(cases["question"][s : s + 8]))
        resid.append(mechmod.trace(mllm, enc).resid.numpy())
    conflict = (cases["control"] == "none").to_numpy()
    rows = probe_rows(np.concatenate(resid), conflict, cases["group_id"].to_numpy(), "conflict", n_boot=200)

    print(f"{conflict.sum()} conflict and {(~conflict).sum()} consistent cases from {args.groups} groups; "
          f"chance {rows[0]['chance']:.2f}")
    for r in rows:
        print(f"  layer {r['layer']:>2}: held-out accuracy {r['accuracy']:.2f} [{r['ci_lo']:.2f}, {r['ci_hi']:.2f}]")
    return {"layers": [r["layer"] for r in rows], "accuracy": [r["accuracy"] for r in rows],
            "n_cases": len(cases)}


if __name__ == "__main__":
    main()
