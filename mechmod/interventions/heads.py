"""Single attention heads and MLPs at the answer (last) token: patch them
from a source run, or knock them out (zero or mean ablation), batched over
units with the generic sweep (every unit of a chunk is one stacked copy of
the target batch, so all heads of all layers take a few forwards, not one
per example per layer per head).

A head's output is its slice of the attention values entering the output
projection (site ``z``, [N, T, H, d_head]); an MLP's is the MLP block's
output. Classification: a unit *promotes the text answer* when knocking it
out lowers LD = logit(text answer) - logit(vision answer), i.e. its
contribution LD_clean - LD_knocked is positive (and vision when negative),
called only when the mean contribution is ``t_min`` standard errors away
from 0 (else 'neutral')."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mechmod.errors import MechmodError
from mechmod.interventions.core import Site, chunk_for, forward, sweep
from mechmod.names import KNOCKOUT_MODES


@dataclass(frozen=True, order=True)
class Unit:
    """A head (``kind='head'``, ``head`` its index) or an MLP (``kind='mlp'``,
    ``head`` = -1) of decoder layer ``layer``."""

    layer: int
    kind: str
    head: int = -1

    @property
    def site(self) -> Site:
        return Site(self.layer, "z" if self.kind == "head" else "mlp")

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"L{self.layer}MLP"


def units(mllm, layers: Sequence[int] | None = None, heads: bool = True, mlps: bool = True) -> list[Unit]:
    """Every head and/or MLP of ``layers`` (default all)."""
    layers = range(mllm.n_layers) if layers is None else layers
    H = mllm.n_heads
    out = []
    for layer in layers:
        if heads:
            out.extend(Unit(layer, "head", h) for h in range(H))
        if mlps:
            out.append(Unit(layer, "mlp"))
    return out


def _index(unit: Unit, rows: slice):
    """(row slice, last position[, head]) of a unit's output in its site."""
    return (rows, -1, unit.head) if unit.kind == "head" else (rows, -1)


def last_token_outputs(mllm, encoded, unit_list: Sequence[Unit], backend: str = "nnsight"):
    """One forward: (answer logits [B, V], {site: [B, H, d_head] for z or
    [B, D] for mlp at the last token})."""
    sites = sorted({u.site for u in unit_list}, key=lambda s: s.order)
    logits, acts = forward(mllm, encoded.inputs, reads=[(s, lambda x: x[:, -1]) for s in sites], backend=backend)
    return logits, dict(zip(sites, acts))


def _value_setter(values: dict[Site, torch.Tensor] | None):
    """Setter writing into a unit's last-token output: ``values[site]`` (per
    row [B, ...] or one mean broadcast to every row), or 0 when None."""

    def setter(unit: Unit, rows: slice):
        def write(x):
            if values is None:
                x[_index(unit, rows)] = 0
            else:
                v = values[unit.site]
                x[_index(unit, rows)] = (v[..., unit.head, :] if unit.kind == "head" else v).to(x.device, x.dtype)
            return x
        return [(unit.site, write)]
    return setter


def patch_units(mllm, source, target, unit_list: Sequence[Unit], metric=None, chunk: int | None = None,
                max_rows: int = 64, backend: str = "nnsight"):
    """Patch each unit's last-token output from ``source`` into ``target``
    (row i into row i). Returns (metric [n_units, B, ...], source logits)."""
    if source.batch_size != target.batch_size:
        raise MechmodError(f"patch_units: {source.batch_size} source rows vs {target.batch_size} target rows")
    src_logits, acts = last_token_outputs(mllm, source, unit_list, backend)
    chunk = chunk or chunk_for(target.batch_size, max_rows)
    return sweep(mllm, target.inputs, list(unit_list), _value_setter(acts), metric, chunk, backend), src_logits


def knockout_units(mllm, target, unit_list: Sequence[Unit], mode: str = "zero", means: dict | None = None,
                   metric=None, chunk: int | None = None, max_rows: int = 64, backend: str = "nnsight"):
    """Knock out each unit's last-token output: ``zero`` it or replace it by
    ``means`` (from :func:`mean_outputs`). Returns metric [n_units, B, ...]."""
    if mode not in KNOCKOUT_MODES:
        raise MechmodError(f"knockout mode {mode!r}: one of {KNOCKOUT_MODES}")
    if mode == "mean" and means is None:
        raise MechmodError("mean ablation needs means=mean_outputs(...) over a reference set")
    chunk = chunk or chunk_for(target.batch_size, max_rows)
    setter = _value_setter(None if mode == "zero" else means)
    return sweep(mllm, target.inputs, list(unit_list), setter, metric, chunk, backend)


def mean_outputs(mllm, encoded_batches, unit_list: Sequence[Unit], backend: str = "nnsight") -> dict[Site, torch.Tensor]:
    """Mean last-token output of every unit's site over the rows of
    ``encoded_batches`` (the mean-ablation reference)."""
    sums: dict[Site, torch.Tensor] = {}
    n = 0
    for enc in encoded_batches:
        _, acts = last_token_outputs(mllm, enc, unit_list, backend)
        for s, a in acts.items():
            sums[s] = sums.get(s, 0) + a.float().sum(0)
        n += enc.batch_size
    if n == 0:
        raise MechmodError("mean_outputs: no reference rows")
    return {s: v / n for s, v in sums.items()}


def classify_units(contrib, t_min: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``contrib`` [n_units, n_cases] (LD_clean - LD_knocked, LD = text -
    vision): per unit (mean, t statistic, 'text' | 'vision' | 'neutral')."""
    c = np.asarray(contrib, dtype=float)
    n = np.isfinite(c).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(c, 1)
        se = np.nanstd(c, 1, ddof=1) / np.sqrt(n)
        t = np.where(se > 0, mean / se, np.sign(mean) * np.inf)
    t = np.where(n >= 2, t, np.nan)
    label = np.where(t >= t_min, "text", np.where(t <= -t_min, "vision", "neutral")).astype(object)
    return mean, t, label
