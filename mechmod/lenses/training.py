"""Training a tuned lens (Belrose et al. 2023): each layer's translator is
fitted so the decoded distribution matches the model's final one, minimising
the sum over layers of ``KL(final || lens_l)`` with SGD + Nesterov momentum,
linear warm-up and decay, and gradient clipping as the reference
implementation does (Adam available). Works on residual tensors or a stream
of batches (:mod:`mechmod.lenses.residuals` collects them from a model)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from mechmod.errors import MechmodError
from mechmod.lenses.fidelity import check_pair, kl_from_logits
from mechmod.lenses.tuned_lens import TunedLens, translate
from mechmod.names import LENS_OPTIMIZERS


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_tuned_lens` returns.

    Attributes:
        lens: the trained lens (the same object that was passed in).
        loss: ``[steps_done]`` training loss per step (sum over layers of the
            batch-mean KL, nats).
        settings: the optimisation settings used (also in ``lens.train_info``).
    """

    lens: TunedLens
    loss: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss.ndim != 1:
            raise ValueError(f"loss must be 1-D [steps], got shape {self.loss.shape}")


def train_tuned_lens(
    lens: TunedLens,
    resid: torch.Tensor | Iterable[tuple[torch.Tensor, torch.Tensor]],
    final_logits: torch.Tensor | None = None,
    *,
    steps: int = 250,
    batch_size: int = 64,
    optimizer: str = "sgd",
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    warmup_steps: int | None = None,
    grad_clip: float = 1.0,
    seed: int = 0,
    data_info: dict[str, Any] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``lens``'s translators in place so each layer's decoded
    distribution matches the model's final one.

    Args:
        lens: a :class:`TunedLens` (fresh, or one to fine-tune).
        resid: precomputed residuals ``[N, L+1, d]`` (with ``final_logits``
            ``[N, V]``), or an iterable of ``(resid_batch, logits_batch)``
            pairs to stream from (then ``final_logits`` must be None); a
            re-iterable source (a list, a DataLoader) is cycled, a one-shot
            iterator ends training when exhausted.
        steps: optimiser steps.
        batch_size: examples per step (tensor input only).
        optimizer: ``"sgd"`` (Nesterov momentum, the tuned-lens default) or ``"adam"``.
        lr: peak learning rate; default 1.0 for SGD, 1e-3 for Adam (as tuned-lens).
        momentum: SGD momentum / Adam beta1.
        weight_decay: L2 penalty on the translators (pulls them towards
            zero, i.e. towards the logit lens).
        warmup_steps: linear warm-up length (default ``steps // 10``); the
            rate then decays linearly to 0 at ``steps``.
        grad_clip: max global gradient norm (None or 0 to disable).
        seed: fixes the batch order.
        data_info: what the lens was trained on (recorded in ``lens.train_info``).

    Loss per step: ``sum_l mean_batch KL(final || lens_l)`` over residual
    indices ``0..L-1`` (the last has no translator). The bias is optimised
    as ``b_l = s_l * b_hat_l`` with ``s_l`` the RMS of layer ``l``'s training
    residuals (same affine map; step sizes independent of the residual
    stream's scale, which otherwise makes SGD at ``lr=1`` diverge on models
    with small residuals).
    """
    if not isinstance(lens, TunedLens):
        raise MechmodError(f"train_tuned_lens trains a TunedLens, got {type(lens).__name__}")
    if steps < 1:
        raise MechmodError(f"steps must be >= 1, got {steps}")
    optimizer = optimizer.lower()
    if optimizer not in LENS_OPTIMIZERS:
        raise MechmodError(f"optimizer must be {' or '.join(map(repr, LENS_OPTIMIZERS))}, got {optimizer!r}")
    if lr is None:
        lr = 1.0 if optimizer == "sgd" else 1e-3
    if warmup_steps is None:
        warmup_steps = steps // 10
    warmup_steps = max(0, min(int(warmup_steps), steps - 1))

    batches, first, n_examples = _batch_source(lens, resid, final_logits, batch_size, seed)
    L = lens.n_layers
    # Train the bias in units of each layer's residual scale (b = s_l * b_hat,
    # s_l = RMS of layer l's residuals): the same affine map, but the step
    # sizes no longer depend on how large the model's residual stream is.
    sample = resid[: min(len(resid), 4096)] if n_examples is not None else first[0]
    scale = sample[:, :L].to(lens.weight.device, torch.float32).pow(2).mean(dim=(0, 2)).sqrt().clamp_min(1e-8)
    bias_hat = (lens.bias.detach() / scale[:, None]).clone().requires_grad_(True)
    params = [lens.weight, bias_hat]
    opt, sched = _optimizer(params, optimizer, lr, momentum, weight_decay, steps, warmup_steps)
    losses = _fit(lens, batches, scale, bias_hat, opt, sched, steps, grad_clip, progress)
    with torch.no_grad():
        lens.bias.copy_(scale[:, None] * bias_hat)
    lens.eval()
    if not math.isfinite(losses[-1]):
        raise MechmodError(
            f"tuned-lens training diverged (loss {losses[-1]}); lower the learning rate "
            f"(now {lr}) or use optimizer='adam'"
        )
    settings = {
        "steps": len(losses),
        "steps_requested": steps,
        "batch_size": batch_size if n_examples is not None else None,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "nesterov": optimizer == "sgd" and momentum > 0,
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "grad_clip": grad_clip,
        "seed": seed,
        "loss": "sum over layers of mean KL(final || lens), nats",
        "n_train_examples": n_examples,
        "final_train_loss": losses[-1],
    }
    lens.train_info = {**settings, "data": dict(data_info or {})}
    return TrainResult(lens=lens, loss=np.asarray(losses, dtype=np.float64), settings=settings)



def _batch_source(lens: TunedLens, resid, final_logits, batch_size: int, seed: int):
    """(batches, the first batch, number of examples or None): seeded shuffled
    batches of a residual tensor, or the given batches (cycled when re-iterable)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(resid, torch.Tensor):
        if final_logits is None:
            raise MechmodError("final_logits is required with a residual tensor")
        check_pair(resid, final_logits, lens)
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = _shuffled_batches(
            resid, final_logits, batch_size, gen
        )
        n_examples: int | None = int(resid.shape[0])
    else:
        if final_logits is not None:
            raise MechmodError("pass final_logits only with a residual tensor, not with an iterable of batches")
        batches = _cycled(resid)
        n_examples = None
    try:
        first = next(batches)
    except StopIteration:
        raise MechmodError("the batch source yielded no batches; nothing to train on") from None
    return itertools.chain([first], batches), first, n_examples


def _optimizer(params, optimizer: str, lr: float, momentum: float, weight_decay: float, steps: int,
               warmup_steps: int):
    """The optimiser and its schedule: linear warm-up over ``warmup_steps``,
    then linear decay to 0 at ``steps``."""
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _fit(lens: TunedLens, batches: Iterator, scale: torch.Tensor, bias_hat: torch.Tensor, opt, sched, steps: int,
         grad_clip: float, progress: bool) -> list[float]:
    """The optimisation loop; returns the loss of every step done (fewer than
    ``steps`` when a one-shot batch source runs out)."""
    device = lens.weight.device
    L = lens.n_layers
    params = [lens.weight, bias_hat]
    losses: list[float] = []
    bar = tqdm(total=steps, desc="tuned lens", unit="step", disable=None) if progress else None  # off unless a terminal
    lens.train()
    for _ in range(steps):
        try:
            r, f = next(batches)
        except StopIteration:
            break
        check_pair(r, f, lens)
        r = r.to(device, torch.float32)
        f = f.to(device, torch.float32)
        if r.shape[1] != L + 1:
            raise MechmodError(f"residual batch has {r.shape[1]} layer entries, the lens expects {L + 1}")
        translated = translate(r[:, :L], lens.weight, scale[:, None] * bias_hat)  # [b, L, d]
        kl = kl_from_logits(f[:, None, :], lens.unembed(translated))  # [b, L]
        loss = kl.mean(dim=0).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if bar is not None:
        bar.close()
    return losses


def _shuffled_batches(
    resid: torch.Tensor, logits: torch.Tensor, batch_size: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = resid.shape[0]
    batch_size = max(1, min(batch_size, n))
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield resid[idx], logits[idx]


def _cycled(source: Iterable) -> Iterator:
    if iter(source) is source:  # one-shot iterator: no cycling
        yield from source
        return
    while True:
        empty = True
        for item in source:
            empty = False
            yield item
        if empty:
            return
