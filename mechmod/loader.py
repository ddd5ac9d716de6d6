"""Host work ahead of the model: each chunk of cases gets its images
decoded and, with prefix sharing, their prefixes built (the image
processor, the chat template, tokenisation: :func:`mechmod.prefix.image_prefix`)
before the model scores it.

With ``workers`` > 0 a torch ``DataLoader`` does this in that many worker
processes (forked: they share the loaded processor and tokenizer), up to
two chunks ahead of the model; on a CUDA model the prefix tensors come back
in pinned memory and are copied to the device without blocking
(:func:`mechmod.prefix.trace_shared`). The rows do not depend on where the
inputs were built (tests/test_loader.py).

Workers pay off where the host has cores the model does not use: on a
CPU-only model the forward already uses every core through torch's
threads, and the inputs are a small share of the run (measured on a 2-core
machine, see :func:`default_workers`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from mechmod.data import open_image
from mechmod.errors import MechmodError
from mechmod.prefix import Prefix, image_prefix


@dataclass(frozen=True)
class Prepared:
    """One chunk's host-side inputs: ``images`` (image path -> PIL image, or
    the MechmodError saying why it does not decode), ``prefixes`` (image
    path -> its prefix; empty without prefix sharing) and the host seconds
    spent building them."""

    cases: pd.DataFrame
    images: dict[str, Any]
    prefixes: dict[str, Prefix] = field(default_factory=dict)
    seconds: float = 0.0

    def pin_memory(self) -> "Prepared":
        """The same chunk with its prefix tensors in pinned memory (called by
        the DataLoader's pinning thread)."""
        pinned = {p: replace(pre, inputs={k: v.pin_memory() for k, v in pre.inputs.items()})
                  for p, pre in self.prefixes.items()}
        return replace(self, prefixes=pinned)


def prepare(mllm, cases: pd.DataFrame, dataset_dir: Path, share_prefix: bool) -> Prepared:
    """Decode ``cases``' images and, with ``share_prefix``, build their
    prefixes on the CPU. An image that does not decode, or whose prefix the
    processor refuses, is left out of ``prefixes`` (scoring records the
    failure per case, as without the loader)."""
    t0 = time.perf_counter()
    images: dict[str, Any] = {}
    prefixes: dict[str, Prefix] = {}
    for rel in cases["image_path"].unique():
        try:
            images[rel] = open_image(dataset_dir, rel)
        except MechmodError as err:
            images[rel] = err
            continue
        if share_prefix:
            try:
                prefixes[rel] = image_prefix(mllm, images[rel], device="cpu")
            except MechmodError:
                pass  # scored in process, where the same error is raised and recorded
    return Prepared(cases=cases, images=images, prefixes=prefixes, seconds=time.perf_counter() - t0)


class _Chunks(Dataset):
    """The runner's chunks as a map-style dataset (one item: one chunk)."""

    def __init__(self, mllm, chunks: Sequence[pd.DataFrame], dataset_dir: Path, share_prefix: bool):
        self.mllm, self.chunks, self.dataset_dir, self.share_prefix = mllm, chunks, dataset_dir, share_prefix

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Prepared:
        return prepare(self.mllm, self.chunks[i], self.dataset_dir, self.share_prefix)


def default_workers(device: str | torch.device, cpus: int | None = None) -> int:
    """Loader workers when none are asked: 0 on a CPU model, else 2 where
    at least 4 cores leave room beside the process driving the accelerator,
    1 on 3 cores, 0 on fewer. On a CPU model (2 cores, the organism, 252
    cases, alternating runs) building inputs took 7.5-7.8 s of 294-316 s in
    process; 2 workers cut the wait to 2.4-3.0 s, within the runs' noise
    (243-319 s), while their processes take cores and memory from the
    forward, which already uses every core."""
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    if torch.device(device).type == "cpu":
        return 0
    return 2 if cpus >= 4 else (1 if cpus == 3 else 0)


def check_workers(workers: int | None) -> None:
    """``--loader-workers``: None (the default rule) or a count >= 0."""
    if workers is not None and workers < 0:
        raise MechmodError(f"--loader-workers must be >= 0, got {workers} (0: build inputs in the main process)")


def prepared_chunks(mllm, chunks: Sequence[pd.DataFrame], dataset_dir: Path, share_prefix: bool,
                    workers: int | None = None) -> Iterator[Prepared]:
    """``chunks`` prepared in order: in this process (``workers`` 0) or by
    a DataLoader with that many workers (None: :func:`default_workers`)."""
    check_workers(workers)
    workers = default_workers(mllm.device) if workers is None else workers
    if workers == 0 or len(chunks) == 0:
        for chunk in chunks:
            yield prepare(mllm, chunk, dataset_dir, share_prefix)
        return
    loader = DataLoader(_Chunks(mllm, chunks, dataset_dir, share_prefix), batch_size=None, shuffle=False,
                        num_workers=min(workers, len(chunks)), pin_memory=mllm.device.type == "cuda",
                        prefetch_factor=2, multiprocessing_context="fork")
    yield from loader
