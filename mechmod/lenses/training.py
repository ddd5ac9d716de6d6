"""Training a tuned lens and measuring how faithful a lens is.

Everything here works on tensors of answer-position residuals
(``resid [N, L+1, d]``, before the final norm) and the model's final logits
(``[N, V]``), except :func:`collect_residuals`, which produces them from a
model and a dataset through :func:`mechmod.tracing.trace`.

Fidelity of a lens at layer ``l`` is the mean ``KL(final || lens_l)`` in nats
(natural log, float32): how much information about the model's final
next-token distribution the decoded layer loses. The tuned lens is trained to
minimise the sum of these KLs over layers (Belrose et al. 2023), with SGD +
Nesterov momentum, linear warm-up and decay, and gradient clipping as the
reference implementation does (Adam available).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
import itertools
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from mechmod.errors import MechmodError
from mechmod.lenses.logit_lens import Lens, LogitLens
from mechmod.lenses.tuned_lens import TunedLens, translate
from mechmod.names import LENS_OPTIMIZERS

KINDS = ("vision", "text", "multimodal")


# --------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------
def kl_from_logits(target_logits: torch.Tensor, lens_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(lens))`` over the last axis, in nats,
    computed in float32; shapes broadcast (e.g. target ``[B, 1, V]`` against
    lens ``[B, L, V]``)."""
    logp = torch.log_softmax(target_logits.to(torch.float32), dim=-1)
    logq = torch.log_softmax(lens_logits.to(torch.float32), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


@torch.no_grad()
def lens_kl_by_layer(
    lens: Lens, resid: torch.Tensor, final_logits: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """Mean ``KL(final || lens_l)`` (nats) for every residual index ``l``:
    ``resid [N, L+1, d]``, ``final_logits [N, V]`` -> ``np.ndarray [L+1]``
    (float64 holding float32-computed values)."""
    _check_pair(resid, final_logits, lens)
    n = resid.shape[0]
    total = torch.zeros(resid.shape[1], dtype=torch.float64)
    device = lens.unembed.lm_head.weight.device
    for start in range(0, n, batch_size):
        r = resid[start : start + batch_size].to(device)
        f = final_logits[start : start + batch_size].to(device)
        kl = kl_from_logits(f[:, None, :], lens.forward_all(r))  # [b, L+1]
        total += kl.sum(dim=0).to("cpu", torch.float64)
    return (total / n).numpy()


def _check_pair(resid: torch.Tensor, final_logits: torch.Tensor, lens: Lens | None = None) -> None:
    if not isinstance(resid, torch.Tensor) or resid.ndim != 3:
        raise MechmodError(
            f"residuals must be a tensor [examples, layers+1, d_model], got "
            f"{tuple(resid.shape) if isinstance(resid, torch.Tensor) else type(resid).__name__}"
        )
    if not isinstance(final_logits, torch.Tensor) or final_logits.ndim != 2:
        raise MechmodError("final logits must be a tensor [examples, vocab]")
    if resid.shape[0] != final_logits.shape[0]:
        raise MechmodError(
            f"{resid.shape[0]} residual rows but {final_logits.shape[0]} final-logit rows"
        )
    if resid.shape[0] == 0:
        raise MechmodError("no examples: residuals and logits are empty")
    if lens is not None and final_logits.shape[1] != lens.unembed.vocab_size:
        raise MechmodError(
            f"final logits have vocabulary {final_logits.shape[1]}, the lens's unembedding "
            f"{lens.unembed.vocab_size}: they come from different models"
        )


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
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

    gen = torch.Generator().manual_seed(seed)
    if isinstance(resid, torch.Tensor):
        if final_logits is None:
            raise MechmodError("final_logits is required with a residual tensor")
        _check_pair(resid, final_logits, lens)
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
    batches = itertools.chain([first], batches)
    device = lens.weight.device
    L = lens.n_layers

    # Train the bias in units of each layer's residual scale (b = s_l * b_hat,
    # s_l = RMS of layer l's residuals): the same affine map, but the step
    # sizes no longer depend on how large the model's residual stream is.
    sample = resid[: min(len(resid), 4096)] if n_examples is not None else first[0]
    scale = sample[:, :L].to(device, torch.float32).pow(2).mean(dim=(0, 2)).sqrt().clamp_min(1e-8)
    bias_hat = (lens.bias.detach() / scale[:, None]).clone().requires_grad_(True)
    params = [lens.weight, bias_hat]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="tuned lens", unit="step")
    lens.train()
    for _ in range(steps):
        try:
            r, f = next(batches)
        except StopIteration:
            break
        _check_pair(r, f, lens)
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


def split_heldout(n: int, heldout_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random example-level split ``(train_idx, heldout_idx)`` for tensors with
    no group structure (use :meth:`ResidualSet.split_by_group` for datasets)."""
    if not 0 < heldout_fraction < 1:
        raise MechmodError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if n < 2:
        raise MechmodError(f"need at least 2 examples to hold some out, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, int(round(heldout_fraction * n))))
    return np.sort(order[k:]), np.sort(order[:k])


# --------------------------------------------------------------------------
# residuals of a model on a dataset
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ResidualSet:
    """Answer-position residuals of a model's prompts.

    Attributes:
        resid: ``[N, L+1, d]`` float32: embedding output, then each decoder
            layer's output, before the final norm.
        logits: ``[N, V]`` float32: the model's final next-token logits.
        group_id: ``[N]`` str: the dataset group each prompt comes from.
        kind: ``[N]`` str: ``vision`` (image + question), ``text``
            (description + question) or ``multimodal`` (all three).
        key: ``[N]`` str: what identifies the prompt (case_id for multimodal,
            image_id / description for the unimodal prompts, which cases share).
    """

    resid: torch.Tensor
    logits: torch.Tensor
    group_id: np.ndarray
    kind: np.ndarray
    key: np.ndarray

    def __post_init__(self) -> None:
        _check_pair(self.resid, self.logits)
        n = self.resid.shape[0]
        for name in ("group_id", "kind", "key"):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.shape != (n,):
                raise ValueError(f"ResidualSet.{name} must be an array of shape ({n},)")

    def __len__(self) -> int:
        return int(self.resid.shape[0])

    def subset(self, mask: np.ndarray) -> "ResidualSet":
        idx = torch.as_tensor(np.flatnonzero(mask))
        return ResidualSet(
            self.resid[idx], self.logits[idx], self.group_id[mask], self.kind[mask], self.key[mask]
        )

    def split_by_group(
        self, heldout_fraction: float = 0.2, seed: int = 0
    ) -> tuple["ResidualSet", "ResidualSet"]:
        """``(train, heldout)`` with every group entirely on one side; the
        held-out groups are a seeded random ``heldout_fraction`` of the groups
        (at least one, leaving at least one for training). A held-out prompt
        identical to a training prompt (same kind and key, e.g. the same
        description text in two groups) is dropped from the held-out side."""
        heldout_groups = heldout_group_ids(np.unique(self.group_id), heldout_fraction, seed)
        mask = np.isin(self.group_id, heldout_groups)
        prompt = np.char.add(np.char.add(self.kind.astype(str), "\x00"), self.key.astype(str))
        held = mask & ~np.isin(prompt, prompt[~mask])
        return self.subset(~mask), self.subset(held)


def heldout_group_ids(groups: Sequence[str], heldout_fraction: float = 0.2, seed: int = 0) -> list[str]:
    """The held-out groups of a seeded group-level split (sorted)."""
    groups = sorted(set(map(str, groups)))
    if not 0 < heldout_fraction < 1:
        raise MechmodError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if len(groups) < 2:
        raise MechmodError(
            f"a group-level held-out split needs at least 2 groups, the data has {len(groups)}; "
            "use a dataset with more groups (e.g. --groups 10)"
        )
    k = min(len(groups) - 1, max(1, int(round(heldout_fraction * len(groups)))))
    order = np.random.default_rng(seed).permutation(len(groups))
    return sorted(groups[i] for i in order[:k])


def _prompt_table(cases, kinds: Sequence[str]):
    """One row per distinct prompt: (kind, key, group_id, image_path,
    description, question). Unimodal prompts shared by several cases are run once."""
    import pandas as pd

    missing = {"case_id", "group_id", "image_id", "image_path", "description", "question"} - set(cases.columns)
    if missing:
        raise MechmodError(f"cases table lacks columns {sorted(missing)}; load it with mechmod.data.load_cases")
    bad = set(kinds) - set(KINDS)
    if bad or not kinds:
        raise MechmodError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    parts = []
    if "vision" in kinds:
        v = cases.drop_duplicates(["image_id", "question"]).copy()
        v["kind"] = "vision"
        v["key"] = v["image_id"] + "|" + v["question"]
        v["description"] = None
        parts.append(v)
    if "text" in kinds:
        t = cases.drop_duplicates(["group_id", "description", "question"]).copy()
        t["kind"] = "text"
        t["key"] = t["description"] + "|" + t["question"]
        t["image_path"] = None
        parts.append(t)
    if "multimodal" in kinds:
        m = cases.copy()
        m["kind"] = "multimodal"
        m["key"] = m["case_id"]
        parts.append(m)
    cols = ["kind", "key", "group_id", "image_path", "description", "question"]
    return pd.concat([p[cols] for p in parts], ignore_index=True)


def collect_residuals(
    mllm,
    cases,
    dataset_dir: str | Path,
    batch_size: int = 16,
    *,
    kinds: Sequence[str] = KINDS,
    backend: str = "nnsight",
    progress: bool = False,
) -> ResidualSet:
    """Run the dataset's vision-only, text-only and multimodal prompts
    through :func:`mechmod.tracing.trace` and keep the answer-position
    residuals and final logits (for training and evaluating lenses on the
    model's own inputs).

    Each distinct prompt is run once (cases sharing an image or a description
    share their unimodal prompts). Rows are ordered by kind, then by the
    cases table's order. Split with :meth:`ResidualSet.split_by_group`.
    """
    from mechmod.data import open_image
    from mechmod.tracing import trace

    table = _prompt_table(cases, kinds)
    if len(table) == 0:
        raise MechmodError(f"the cases table of {dataset_dir} is empty: no prompts to run")
    resid_parts: list[torch.Tensor] = []
    logit_parts: list[torch.Tensor] = []
    batches = []
    for kind in KINDS:  # one kind per batch (same prompt layout within a forward pass)
        sub = table[table["kind"] == kind]
        for start in range(0, len(sub), batch_size):
            batches.append(sub.iloc[start : start + batch_size])
    order = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(table), desc="residuals", unit="prompt")
    for chunk in batches:
        kind = chunk["kind"].iloc[0]
        n = len(chunk)
        images = [None] * n
        descriptions = [None] * n
        if kind in ("vision", "multimodal"):
            images = [open_image(dataset_dir, p) for p in chunk["image_path"]]
        if kind in ("text", "multimodal"):
            descriptions = list(chunk["description"])
        encoded = mllm.encode(images, descriptions, list(chunk["question"]))
        with torch.no_grad():
            tr = trace(mllm, encoded, backend=backend)
        resid_parts.append(tr.resid.detach().to("cpu", torch.float32))
        logit_parts.append(tr.logits.detach().to("cpu", torch.float32))
        order.append(chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    import pandas as pd

    rows = pd.concat(order, ignore_index=True)
    return ResidualSet(
        resid=torch.cat(resid_parts),
        logits=torch.cat(logit_parts),
        group_id=rows["group_id"].astype(str).to_numpy(),
        kind=rows["kind"].astype(str).to_numpy(),
        key=rows["key"].astype(str).to_numpy(),
    )


# --------------------------------------------------------------------------
# fidelity
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class LensFidelity:
    """Per-layer held-out fidelity of the logit lens and the tuned lens.

    Attributes:
        kl_logit: ``[L+1]`` mean KL(final || logit lens at layer l), nats.
        kl_tuned: ``[L+1]`` mean KL(final || tuned lens at layer l), nats.
        n_examples: number of prompts the means are over.
        split: which examples (e.g. ``heldout``).
    """

    kl_logit: np.ndarray
    kl_tuned: np.ndarray
    n_examples: int
    split: str = "heldout"

    def __post_init__(self) -> None:
        if self.kl_logit.ndim != 1 or self.kl_logit.shape != self.kl_tuned.shape:
            raise ValueError(
                f"kl_logit and kl_tuned must be 1-D of equal length [L+1], got "
                f"{self.kl_logit.shape} and {self.kl_tuned.shape}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "n_examples": int(self.n_examples),
            "layers": list(range(len(self.kl_logit))),
            "kl_logit": [float(x) for x in self.kl_logit],
            "kl_tuned": [float(x) for x in self.kl_tuned],
            "units": "nats, mean KL(final || lens) per residual index (0 = embeddings)",
        }

    def table(self) -> str:
        """Plain-text per-layer table."""
        lines = [f"{'layer':>5}  {'logit lens KL':>13}  {'tuned lens KL':>13}"]
        for i, (a, b) in enumerate(zip(self.kl_logit, self.kl_tuned)):
            lines.append(f"{i:>5}  {a:>13.4f}  {b:>13.4f}")
        return "\n".join(lines)


def evaluate_lenses(tuned: TunedLens, resid: torch.Tensor, final_logits: torch.Tensor, split: str = "heldout") -> LensFidelity:
    """Per-layer KL of the logit lens (same unembedding) and of ``tuned``."""
    logit = LogitLens(tuned.unembed, tuned.n_layers)
    return LensFidelity(
        kl_logit=lens_kl_by_layer(logit, resid, final_logits),
        kl_tuned=lens_kl_by_layer(tuned, resid, final_logits),
        n_examples=int(resid.shape[0]),
        split=split,
    )
