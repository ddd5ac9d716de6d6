"""Answer-position residuals of a model on a dataset (:func:`collect_residuals`
through :func:`mechmod.tracing.trace`), the data lenses are trained and
evaluated on, and their group-level held-out split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mechmod.data.schema import open_image
from mechmod.errors import MechmodError
from mechmod.lenses.fidelity import check_pair
from mechmod.tracing import trace

KINDS = ("vision", "text", "multimodal")


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
        check_pair(self.resid, self.logits)
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
        bar = tqdm(total=len(table), desc="residuals", unit="prompt", disable=None)  # None: off unless a terminal
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
    rows = pd.concat(order, ignore_index=True)
    return ResidualSet(
        resid=torch.cat(resid_parts),
        logits=torch.cat(logit_parts),
        group_id=rows["group_id"].astype(str).to_numpy(),
        kind=rows["kind"].astype(str).to_numpy(),
        key=rows["key"].astype(str).to_numpy(),
    )
