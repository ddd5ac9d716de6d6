"""Probe: how faithfully each lens decodes each layer. Trains a tuned lens
on the model's own vision-only, text-only and multimodal prompts and
reports the held-out KL(final || lens) per layer for it and the logit lens.

    python probes/lens_fidelity.py --out out/lens --steps 250
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from _ingredients import RunSpec, dataset_dir, entry, load_model, parse, write


@dataclass
class Config(RunSpec):
    out: Path = Path("out/probes/lens_fidelity")
    steps: int = 250
    optimizer: str = "sgd"  # or "adam"
    lr: float | None = None
    heldout_fraction: float = 0.2
    split_seed: int = 0


def main(argv=None) -> dict:
    import numpy as np

    from mechmod.data import load_cases
    from mechmod.lenses import TunedLens, Unembed, collect_residuals, evaluate_lenses, split_heldout, train_tuned_lens
    from mechmod.report import panels

    cfg = parse(Config, argv, __doc__)
    ds = dataset_dir(cfg, controls=False)
    mllm = load_model(cfg)
    data = collect_residuals(mllm, load_cases(ds), ds, batch_size=cfg.batch_size)
    if len(set(data.group_id)) >= 2:  # whole groups held out: no shared image or description leaks
        train, held = data.split_by_group(cfg.heldout_fraction, seed=cfg.split_seed)
        split = "group"
    else:
        print("one group only: holding out prompts, not groups (use more --groups for a clean split)")
        tr_idx, he_idx = split_heldout(len(data), cfg.heldout_fraction, seed=cfg.split_seed)
        train, held = data.subset(np.isin(np.arange(len(data)), tr_idx)), data.subset(np.isin(np.arange(len(data)), he_idx))
        split = "prompt"
    tuned = TunedLens(Unembed.from_model(mllm), mllm.n_layers, mllm.d_model, model_name=str(mllm.name))
    result = train_tuned_lens(tuned, train.resid, train.logits, steps=cfg.steps, batch_size=64,
                              optimizer=cfg.optimizer, lr=cfg.lr, seed=cfg.split_seed)
    fid = evaluate_lenses(tuned, held.resid, held.logits, split="heldout")
    tuned.save(Path(cfg.out) / "lens")
    print(fid.table())
    out = {"model": str(mllm.name), "split": split, "n_train": len(train), "n_heldout": len(held),
           "heldout": fid.to_dict(), "training": result.settings, "lens_path": str(Path(cfg.out) / "lens")}
    return write(cfg, "lens_fidelity", f"Lens fidelity: {mllm.name}", out,
                 panels("lens", out),
                 f"Tuned lens trained {cfg.steps} steps on {len(train)} prompts; {len(held)} held out by {split}.")


if __name__ == "__main__":
    entry(main)
