"""Train a tuned lens on the model's own prompts, compare its held-out
fidelity with the logit lens, save it, load it back and use it.

    python examples/train_tuned_lens.py --steps 200
"""

import argparse
import tempfile
from pathlib import Path

import torch

import mechmod
from mechmod.data import generate_color, load_cases
from mechmod.lenses import collect_residuals, evaluate_lenses, train_tuned_lens


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="organism")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default=None, help="where to save the lens (default: a temporary directory)")
    args = ap.parse_args(argv)

    mllm = mechmod.load_model(args.model)
    unembed = mechmod.Unembed.from_model(mllm)
    with tempfile.TemporaryDirectory() as tmp:
        ds = generate_color(f"{tmp}/ds", groups=3, dv=[0, 6, 12], controls=False, progress=False)
        # answer-position residuals of every vision-only, text-only and multimodal prompt
        data = collect_residuals(mllm, load_cases(ds), ds)
        train, held = data.split_by_group(heldout_fraction=0.34)  # whole groups held out

        lens = mechmod.TunedLens(unembed, mllm.n_layers, model_name=str(mllm.name))
        result = train_tuned_lens(lens, train.resid, train.logits, steps=args.steps, batch_size=32)
        print(f"trained on {len(train)} prompts: loss {result.loss[0]:.3f} -> {result.loss[-1]:.3f}")
        fidelity = evaluate_lenses(lens, held.resid, held.logits)
        print(f"held-out KL(final || lens) over {len(held)} prompts:\n{fidelity.table()}")

        out = Path(args.out or f"{tmp}/lens")
        lens.save(out)  # lens.safetensors + config.json (with the unembedding's hash)
        loaded = mechmod.TunedLens.load(out, unembed)
        logits = loaded.forward_all(held.resid[:1])  # [1, L+1, V]
        assert torch.allclose(logits, lens.forward_all(held.resid[:1]))
        top = [mllm.tokenizer.decode([int(i)]) for i in logits[0].argmax(-1)]
        print(f"tuned-lens top-1 per layer of one held-out prompt: {top}")
    return {"kl_logit": fidelity.kl_logit.tolist(), "kl_tuned": fidelity.kl_tuned.tolist()}


if __name__ == "__main__":
    main()
