"""Ship the trained organism family into the package.

Takes the output of ``scripts/train_organisms.sh RUN`` and writes, for each
of ``organism``, ``organism-text`` and ``organism-vision``, a bfloat16
safetensors copy with its processor, ``organism.json`` (the base's training
recorded beside the fine-tune's), training log and behaviour card into
``mechmod/models/organism/checkpoints/<name>/``. Each copy is built in a
temporary folder and renamed into place; the card is computed on the
shipped (bfloat16) weights.

    python scripts/ship_organisms.py runs/organism-v2 [--n 200] [--only organism-text]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mechmod import _io
from mechmod.models.organism import CHECKPOINTS, VARIANTS
from mechmod.organism.evaluate import DEFAULT_EVAL_SEED, evaluate, format_card, save_card

BASE_KEYS = ("seed", "steps", "steps_done", "device", "wall_time_s", "total_time_s", "pool_seconds", "lr", "threads")


def median_step_s(path: Path) -> float:
    """Median seconds per step between the training log's rows (robust to
    pauses and to a busy machine, which the wall time counts)."""
    log = _io.read_json(path / "training_log.json", f"{path}'s training log", list)
    steps = [(0, 0.0)] + [(r["step"], r["elapsed_s"]) for r in log]
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(steps, steps[1:]) if s1 > s0]
    return round(float(np.median(rates)), 3)


def finished_info(path: Path) -> dict:
    info = _io.read_json(path / "organism.json", f"{path} (a trained organism)", dict)
    if info.get("partial"):
        sys.exit(f"{path}: training is not finished (step {info.get('step')}); run scripts/train_organisms.sh again")
    return info


def ship(run: Path, name: str, n: int) -> str:
    src = run / name
    info = finished_info(src)
    if abs(info["text_weight"] - VARIANTS[name]) > 1e-9:
        sys.exit(f"{src}: trained with W = {info['text_weight']}, but {name} is W = {VARIANTS[name]}")
    base = finished_info(run / "base")
    info["base"] = {"dir": "base", "text_weight": base.get("text_weight", 1.0), **{k: base.get(k) for k in BASE_KEYS},
                    "median_step_s": median_step_s(run / "base")}
    info["median_step_s"] = median_step_s(src)
    info["shipped_dtype"] = "bfloat16"
    dst, tmp = CHECKPOINTS / name, CHECKPOINTS / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model = LlavaForConditionalGeneration.from_pretrained(src, local_files_only=True, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    AutoProcessor.from_pretrained(src, local_files_only=True).save_pretrained(tmp)
    shutil.copy(src / "training_log.json", tmp / "training_log.json")
    _io.write_json(tmp / "organism.json", info)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    card = evaluate(dst, seed=DEFAULT_EVAL_SEED, n=n)
    save_card(card, dst / "card.json")
    text = format_card(card)
    _io.write_text(dst / "card.txt", text + "\n")
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="The folder scripts/train_organisms.sh wrote (base/ and the variants).")
    ap.add_argument("--n", type=int, default=200, help="Card samples per tier (conflicts: 6 n).")
    ap.add_argument("--only", choices=list(VARIANTS), action="append", help="Ship only these (repeatable).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.only or VARIANTS:
        print(ship(args.run, name, args.n), flush=True)
    total = sum(p.stat().st_size for p in CHECKPOINTS.glob("*/model.safetensors"))
    print(f"shipped weights: {total / 2**20:.1f} MiB in all")


if __name__ == "__main__":
    main()
