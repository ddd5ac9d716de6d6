"""The tuned lens's report: its held-out fidelity (LENS/fidelity.json,
written by ``mechmod lens train``), drawn in the report of a run that
decoded with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go

from mechmod import _io
from mechmod.report._plot import OTHER_COLOR, layout
from mechmod.report.registry import LeftOut, figure, study

study("lens", "mechmod lens fidelity: {model}")


def fidelity(lens_path: str | Path) -> dict[str, Any]:
    """LENS/fidelity.json, or {} where the lens has none (its figure then says so)."""
    path = Path(lens_path) / "fidelity.json"
    return _io.read_json(path, "retrain the lens with `mechmod lens train`", expect=dict) if path.is_file() else {}


@figure("lens", "fidelity", title="Lens fidelity: held-out KL(final || lens) per layer",
        needs={"heldout": "the lens directory has no fidelity.json; `mechmod lens train` writes it"})
def fidelity_by_layer(summary: Mapping[str, Any]) -> go.Figure:
    """Per-layer mean KL(final || lens) of the logit lens and the tuned lens."""
    held = summary["heldout"]
    if not held.get("kl_logit"):
        raise LeftOut("the held-out fidelity has no per-layer KL")
    layers = list(range(-1, len(held["kl_logit"]) - 1))  # entry i is layer i - 1
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=np.asarray(held["kl_logit"], float), mode="lines+markers", name="logit lens",
                             line=dict(color=OTHER_COLOR)))
    fig.add_trace(go.Scatter(x=layers, y=np.asarray(held["kl_tuned"], float), mode="lines+markers", name="tuned lens",
                             line=dict(color="#2ca02c")))
    return layout(fig, "Lens fidelity: KL(final || lens) per layer", "layer (-1 = embedding output, 0..L-1 = decoder layers)",
                  "mean KL (nats)")
