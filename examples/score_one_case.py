"""Score one conflict case: the model's answer from the image alone, from
the description alone and from both; the entropies, dHrel, and which
modality it followed.

    python examples/score_one_case.py            # the shipped model organism
"""

import argparse
import tempfile

import mechmod
from mechmod.data import generate_color, load_cases, open_image
from mechmod.following import follow_outcome


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="organism")
    ap.add_argument("--dv", type=int, default=6, help="visual difficulty tier of the image (0-13)")
    args = ap.parse_args(argv)

    mllm = mechmod.load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:  # one group: one image, one description
        ds = generate_color(f"{tmp}/ds", groups=1, dv=[args.dv], dt=[0], controls=False, progress=False)
        case = load_cases(ds).iloc[0]
        image = open_image(ds, case.image_path)
    labels = mechmod.LabelSet(mllm.tokenizer, list(case.candidates))

    inputs = {"vision": ([image], [None]), "text": ([None], [case.description]),
              "multimodal": ([image], [case.description])}
    answer, h = {}, {}
    for kind, (images, descriptions) in inputs.items():
        enc = mllm.encode(images, descriptions, [case.question])
        tr = mechmod.trace(mllm, enc, keep_resid=False)  # logits [1, V] at the answer position
        answer[kind] = labels.predict(tr.logits)[0]
        h[kind] = float(mechmod.entropy(tr.logits)[0])

    dh_rel, _ = mechmod.relative_uncertainty([h["text"]], [h["vision"]])
    follow = follow_outcome([answer["multimodal"]], [answer["vision"]], [answer["text"]])[0]
    print(f"image shows {case.answer_vision}, description says {case.answer_text}: {case.description!r}")
    for kind in inputs:
        print(f"  {kind:>10}: answers {answer[kind]:<8} entropy {h[kind]:.3f} nats")
    print(f"dHrel = {float(dh_rel[0]):+.3f} (negative: the text is easier); the model follows: {follow}")
    return {"answers": answer, "entropy": h, "dh_rel": float(dh_rel[0]), "follow": str(follow)}


if __name__ == "__main__":
    main()
