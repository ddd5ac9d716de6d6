"""Trace one conflict case layer by layer: decode the answer position's
residual stream at every layer with a lens, see which answer each layer
votes for, and count the oscillations between the two.

    python examples/trace_trajectory.py                      # logit lens
    python examples/trace_trajectory.py --lens-path LENS_DIR  # a tuned lens
"""

import argparse
import tempfile

import mechmod
from mechmod.data import generate_color, load_cases, open_image
from mechmod.dynamics import layer_votes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="organism")
    ap.add_argument("--lens-path", default=None, help="a tuned lens directory (mechmod lens train)")
    ap.add_argument("--dv", type=int, default=8)
    args = ap.parse_args(argv)

    mllm = mechmod.load_model(args.model)
    unembed = mechmod.Unembed.from_model(mllm)
    lens = mechmod.TunedLens.load(args.lens_path, unembed) if args.lens_path else mechmod.LogitLens(unembed)
    with tempfile.TemporaryDirectory() as tmp:
        ds = generate_color(f"{tmp}/ds", groups=1, dv=[args.dv], dt=[1], controls=False, progress=False)
        case = load_cases(ds).iloc[0]
        image = open_image(ds, case.image_path)

    enc = mllm.encode([image], [case.description], [case.question])
    tr = mechmod.trace(mllm, enc)                  # resid [1, L+1, D]: the embedding output, then each layer
    layer_logits = lens.forward_all(tr.resid)      # [1, L+1, V]
    labels = mechmod.LabelSet(mllm.tokenizer, list(case.candidates))
    top1 = labels.top1_labels(layer_logits)        # [1, L+1]: a label or 'other'
    probs = labels.label_probs(layer_logits)[0]    # [L+1, n_labels]
    votes = layer_votes(top1, [case.answer_vision], [case.answer_text])[0]
    iv, it = labels.labels.index(case.answer_vision), labels.labels.index(case.answer_text)

    print(f"image: {case.answer_vision}; text: {case.answer_text}; lens: {type(lens).__name__}")
    print("layer  top-1     vote    p(vision)  p(text)   (layer -1: the embedding output, not counted)")
    for i, (t, v) in enumerate(zip(top1[0], votes)):  # residual index i is layer i - 1
        print(f"{i - 1:>5}  {t:<8}  {v:<6}  {float(probs[i, iv]):9.3f}  {float(probs[i, it]):7.3f}")
    votes = votes[1:]                              # the decoder layers 0..L-1, as `mechmod run` counts
    n_osc = mechmod.count_oscillations(list(votes))
    print(f"final answer: {labels.predict(tr.logits)[0]}; oscillations: {n_osc}")
    return {"votes": list(votes), "oscillations": n_osc}


if __name__ == "__main__":
    main()
