"""Patch one layer: copy the residual stream at the answer (last) token of
the vision-only prompt into the conflict prompt (image + contradicting
description) after one decoder layer, and see whether the answer flips
to what the image alone says.

    python examples/patch_one_layer.py --layer 3   # default: the middle layer
"""

import argparse
import tempfile

import mechmod
from mechmod.data import generate_color, load_cases, open_image
from mechmod.interventions import PatchSpec, patch_layers, restoration
from mechmod.interventions.patching import logit_diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="organism")
    ap.add_argument("--layer", type=int, default=None, help="decoder layer to patch (0-based)")
    args = ap.parse_args(argv)

    mllm = mechmod.load_model(args.model)
    layer = mllm.n_layers // 2 if args.layer is None else args.layer
    with tempfile.TemporaryDirectory() as tmp:  # one group, the easiest image tier
        ds = generate_color(f"{tmp}/ds", groups=1, dv=[0], controls=False, progress=False)
        case = load_cases(ds).iloc[0]
        image = open_image(ds, case.image_path)
    labels = mechmod.LabelSet(mllm.tokenizer, list(case.candidates))
    target = mllm.encode([image], [case.description], [case.question])  # conflict prompt
    source = mllm.encode([image], [None], [case.question])  # vision-only prompt (shorter: aligned at the last token)

    spec = PatchSpec(component="resid", positions="last", layers=(layer,))
    patched, source_logits, _ = patch_layers(mllm, source, target, spec)  # [1 layer, 1, V], [1, V]
    runs = {"conflict": mechmod.trace(mllm, target, keep_resid=False).logits,
            "vision-only": source_logits, "patched": patched[0]}
    answer = {k: labels.predict(lg)[0] for k, lg in runs.items()}
    ld = {k: float(logit_diff(lg, labels, [case.answer_vision], [case.answer_text])[0]) for k, lg in runs.items()}
    restored = float(restoration(ld["patched"], ld["conflict"], ld["vision-only"]))
    flipped = answer["patched"] != answer["conflict"]

    print(f"image shows {case.answer_vision}, description says {case.answer_text}: {case.description!r}")
    print(f"patching the residual stream at the last token after layer {layer} of {mllm.n_layers}")
    for k in runs:
        print(f"  {k:>11}: answers {answer[k]:<8} LD = logit({case.answer_vision}) - logit({case.answer_text}) = {ld[k]:+.3f}")
    print(f"LD {ld['conflict']:+.3f} -> {ld['patched']:+.3f} (restoration {restored:.2f}); the answer "
          + (f"flips: {answer['conflict']} -> {answer['patched']}" if flipped else f"stays {answer['conflict']}"))
    return {"layer": layer, "answers": answer, "ld": ld, "restoration": restored, "flipped": flipped}


if __name__ == "__main__":
    main()
