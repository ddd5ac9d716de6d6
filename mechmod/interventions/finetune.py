"""Boundary-case fine-tuning: which conflicts to train on, and the training.

The paper's later version (arXiv 2511.02243, "Beyond Fixed Biases")
reports that supervised fine-tuning on cases near the balance point
(boundary cases) teaches a model to follow a modality where fine-tuning on
easy cases does not. :func:`select_cases` draws the two sets from a run's
conflict cases (boundary: |dHrel - balance point| <= radius; easy: the
rest), matched in number; :func:`train_on_cases` fine-tunes the model in
place on their multimodal prompts with the target modality's answer
(answer-only cross-entropy on the label's probability mass: the softmax
summed over the tokens that write the label, :mod:`mechmod.answers`).
:func:`tuned` wraps one fine-tuning: full fine-tuning (the organism) or a
LoRA adapter through ``peft`` (hub models), undone on exit so the next seed
starts from the same model. Adapters and weights are saved as safetensors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mechmod import _io
from mechmod.answers import LabelSet
from mechmod.errors import MechmodError
from mechmod.interventions.cases import Images, encode
from mechmod.names import FINETUNE_METHODS, FINETUNE_SELECTIONS, FINETUNE_TARGETS

#: half-width of the boundary band around the balance point: the run's ambiguous region
DEFAULT_RADIUS = 0.5


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning's budget, the same for every selection and seed:
    ``steps`` optimiser steps of ``batch_size`` cases (drawn without
    replacement, reshuffled each epoch), AdamW at ``lr`` (constant after a
    linear warm-up of ``warmup`` steps), gradients clipped at 1. ``method``
    'full' trains every weight; 'lora' trains rank-``lora_rank`` adapters on
    ``lora_targets`` (module names inside the decoder layers)."""

    target: str = "text"
    steps: int = 40
    batch_size: int = 8
    lr: float = 5e-5
    warmup: int = 5
    method: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self):
        if self.target not in FINETUNE_TARGETS:
            raise MechmodError(f"--target {self.target!r}: use one of {', '.join(FINETUNE_TARGETS)}")
        if self.method not in FINETUNE_METHODS:
            raise MechmodError(f"--method {self.method!r}: use one of {', '.join(FINETUNE_METHODS)}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise MechmodError("fine-tuning needs --steps >= 1, --train-batch-size >= 1 and --lr > 0")


def select_cases(table: pd.DataFrame, balance: float | None, radius: float, selections,
                 seed: int) -> dict[str, pd.DataFrame]:
    """Per selection ('boundary', 'easy') the conflict cases to train on:
    boundary = |dh_rel - balance| <= radius, easy = the rest; both drawn
    down (without replacement, ``seed``) to the size of the smaller set, so
    every selection gets the same number of cases."""
    unknown = [s for s in selections if s not in FINETUNE_SELECTIONS]
    if unknown:
        raise MechmodError(f"unknown selection(s) {unknown}; use {', '.join(FINETUNE_SELECTIONS)}")
    if balance is None:
        raise MechmodError("the selection run has no balance point, so no case is a boundary case; "
                           "use more groups (--groups) or another --run")
    dh = table["dh_rel"].to_numpy(float)
    near = np.abs(dh - balance) <= radius
    pools = {"boundary": table[near], "easy": table[~near & np.isfinite(dh)]}
    n = min(len(p) for p in pools.values())
    if n == 0:
        raise MechmodError(f"no {'boundary' if not near.any() else 'easy'} case within radius {radius} of the balance "
                           f"point {balance:+.3f} among {len(table)} conflict cases; change --radius or use more groups")
    rng = np.random.default_rng(seed)
    return {s: pools[s].iloc[np.sort(rng.choice(len(pools[s]), n, replace=False))].reset_index(drop=True)
            for s in selections}


def label_loss(logits: torch.Tensor, labels: LabelSet, targets) -> torch.Tensor:
    """Mean of -log P(target label) at the answer position, P summed over
    the tokens that stand for the label (:meth:`LabelSet.logit_token_ids`)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows = [torch.logsumexp(logp[i, labels.logit_token_ids(t)], dim=0) for i, t in enumerate(targets)]
    return -torch.stack(rows).mean()


def train_on_cases(mllm, cases: pd.DataFrame, dataset_dir: str | Path, cfg: FinetuneConfig, seed: int,
                   progress: bool = True, desc: str = "finetune") -> list[float]:
    """Fine-tune ``mllm.model``'s trainable parameters in place on the
    multimodal prompts of ``cases`` towards their ``answer_{target}``;
    returns the loss of every step."""
    params = [p for p in mllm.model.parameters() if p.requires_grad]
    if not params:
        raise MechmodError(f"{mllm.name}: no trainable parameter")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    images = Images(dataset_dir)
    labels = {cand: LabelSet(mllm.tokenizer, list(cand)) for cand in set(cases["candidates"].map(tuple))}
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    order: list[int] = []
    losses = []
    was_training = mllm.model.training
    mllm.model.train()
    try:
        for step in tqdm(range(cfg.steps), desc=desc, unit="step", disable=None if progress else True, leave=False):
            while len(order) < min(cfg.batch_size, len(cases)):
                order.extend(rng.permutation(len(cases)).tolist())
            batch = cases.iloc[order[:cfg.batch_size]]
            del order[:cfg.batch_size]
            for g in opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            loss = _batch_loss(mllm, images, labels, batch, cfg.target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        mllm.model.train(was_training)
    return losses


def _batch_loss(mllm, images: Images, labels: dict, batch: pd.DataFrame, target: str) -> torch.Tensor:
    """The batch's label loss, one forward per label set it holds."""
    parts, sizes = [], []
    for cand, sub in batch.groupby(batch["candidates"].map(tuple), sort=False):
        enc = encode(mllm, images, sub["image_path"], sub["description"], sub["question"])
        inputs = {k: v.to(mllm.device) if isinstance(v, torch.Tensor) else v for k, v in enc.inputs.items()}
        logits = mllm.model(**inputs).logits
        at = enc.answer_index.to(logits.device)
        parts.append(label_loss(logits[torch.arange(len(sub), device=logits.device), at], labels[cand],
                                sub[f"answer_{target}"].tolist()))
        sizes.append(len(sub))
    w = torch.tensor(sizes, dtype=torch.float32, device=parts[0].device)
    return (torch.stack(parts) * w).sum() / w.sum()


@contextlib.contextmanager
def tuned(mllm, cfg: FinetuneConfig) -> Iterator[None]:
    """Inside: ``mllm.model`` ready to fine-tune (every weight, or a fresh
    LoRA adapter); on exit the model is back as it came in (weights
    restored, adapter removed), in eval mode without gradients."""
    model = mllm.model
    if cfg.method == "full":
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        model.requires_grad_(True)
        try:
            yield
        finally:
            model.load_state_dict(saved)
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
            model.eval()
        return
    handle = _inject_lora(mllm, cfg)
    try:
        yield
    finally:
        handle.unload()  # the LoRA layers out, the base modules back in place
        model.eval()


def _inject_lora(mllm, cfg: FinetuneConfig):
    """A fresh LoRA adapter on the decoder layers' ``lora_targets`` (peft
    is imported here: only LoRA fine-tuning needs it)."""
    from peft import LoraConfig, inject_adapter_in_model

    names = [n for n, _ in mllm.layers.named_modules() if n.rsplit(".", 1)[-1] in cfg.lora_targets]
    if not names:
        raise MechmodError(f"{mllm.name}: no module named {list(cfg.lora_targets)} in the decoder layers; "
                           "choose --lora-target among the layers' linear modules")
    prefix = _path_of(mllm.model, mllm.layers)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                        target_modules=[f"{prefix}.{n}" for n in names])
    mllm.model.requires_grad_(False)
    inject_adapter_in_model(config, mllm.model)
    return _Injected(mllm.model)


class _Injected:
    """The LoRA layers ``inject_adapter_in_model`` put into a model: undone by
    :meth:`unload` (each wrapped module replaced by its base layer)."""

    def __init__(self, model):
        self.model = model

    def unload(self) -> None:
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.model.named_modules()):
            if isinstance(module, LoraLayer):
                parent_name, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent_name), child, module.get_base_layer())
        if hasattr(self.model, "peft_config"):  # set by the injection; a later one would warn of two adapters
            del self.model.peft_config


def _path_of(root: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    raise MechmodError("the decoder layers are not a submodule of the model")


def save_tuned(mllm, cfg: FinetuneConfig, path: Path) -> Path:
    """The fine-tuned parameters as one safetensors file: the LoRA adapter's
    weights (method 'lora') or every weight (method 'full')."""
    if cfg.method == "lora":
        state = {n: p.detach() for n, p in mllm.model.named_parameters() if "lora_" in n}
    else:
        state = {n: p.detach() for n, p in mllm.model.named_parameters()}
    with _io.atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp))
    return path


def load_adapter(mllm, cfg: FinetuneConfig, path: Path) -> _Injected:
    """Put a saved LoRA adapter (:func:`save_tuned`) into ``mllm.model``;
    the returned handle's ``unload()`` takes it out again."""
    handle = _inject_lora(mllm, cfg)
    state = load_file(str(path))
    missing = [n for n, p in mllm.model.named_parameters() if "lora_" in n and n not in state]
    if missing:
        handle.unload()
        raise MechmodError(f"{path}: lacks adapter weight(s) {missing[:3]}; was it saved with the same --lora-rank "
                           "and --lora-target?")
    mllm.model.load_state_dict(state, strict=False)
    return handle
