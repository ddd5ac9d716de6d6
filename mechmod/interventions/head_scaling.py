"""Head scaling: multiply chosen heads' outputs (site ``z``, before o_proj)
by alpha, at the answer position (default) or at every position, and see
what the choice does: TFR, the following curve and the balance point per
alpha (dHrel stays the unscaled one, so a balance shift is a preference
change in dHrel units). Alpha 1 is the clean model, alpha 0 the heads'
zero-ablation. A sweep over alphas is one generic batched sweep.

Default candidates: the top text-promoting and the top vision-promoting
heads of a direct logit attribution (:mod:`mechmod.interventions.attribution`),
each set scaled together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from mechmod._gc import frozen_heap
from mechmod.decoding import reforward
from mechmod.errors import MechmodError
from mechmod.following import follow_outcome
from mechmod.interventions.clean import CleanCases
from mechmod.interventions.core import Site, chunk_for, forward, sweep
from mechmod.interventions.patching import logit_diff
from mechmod.interventions.steering import steering_summary
from mechmod.names import HEAD_SCALE_POSITIONS

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
ROW_COLUMNS = ["head_set", "alpha", "case_id", "region", "dh_rel", "y_m", "follow", "logit_diff"]


def parse_head(text: str, n_layers: int, n_heads: int) -> tuple[int, int]:
    """'L.H' (or 'LxHy' as the attribution names heads, 'L5H3') -> (layer, head), checked."""
    t = text.strip().upper().lstrip("L").replace("H", ".")
    try:
        layer, head = (int(x) for x in t.split("."))
    except ValueError:
        raise MechmodError(f"head {text!r}: write LAYER.HEAD (e.g. 5.3) or L5H3") from None
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise MechmodError(f"head {text!r}: the model has layers 0..{n_layers - 1} and heads 0..{n_heads - 1}")
    return layer, head


@dataclass(frozen=True)
class HeadScale:
    """Scale the heads ``heads`` ((layer, head) pairs) by each of ``alphas``,
    at the answer position ('last') or at 'all' positions."""

    heads: tuple[tuple[int, int], ...]
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    positions: str = "last"

    def __post_init__(self):
        if self.positions not in HEAD_SCALE_POSITIONS:
            raise MechmodError(f"head scaling positions {self.positions!r}: one of {HEAD_SCALE_POSITIONS}")
        if not self.heads or not self.alphas:
            raise MechmodError("head scaling needs at least one head and one alpha")


def scale_setter(spec: HeadScale):
    """Sweep setter: alpha -> ``z`` edits multiplying the heads' outputs."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in spec.heads:
        by_layer.setdefault(int(layer), []).append(int(head))

    def setter(alpha: float, rows: slice):
        def edit(heads):
            def scale(x):
                pos = -1 if spec.positions == "last" else slice(None)
                x[rows, pos, heads] *= float(alpha)
                return x
            return scale
        return [(Site(layer, "z"), edit(heads)) for layer, heads in sorted(by_layer.items())]
    return setter


def scale_heads(mllm, encoded, spec: HeadScale, metric=None, chunk: int | None = None, max_rows: int = 64,
                backend: str = "nnsight") -> torch.Tensor:
    """Answer logits (or ``metric`` of them) per alpha: [n_alphas, B, ...]."""
    chunk = chunk or chunk_for(encoded.batch_size, max_rows)
    return sweep(mllm, encoded.inputs, list(spec.alphas), scale_setter(spec), metric, chunk, backend)


@frozen_heap()
def run_head_scaling(mllm, clean: CleanCases, head_sets: dict[str, Sequence[tuple[int, int]]],
                     alphas: Sequence[float] = DEFAULT_ALPHAS, positions: str = "last", batch_size: int = 8,
                     max_rows: int = 64, n_boot: int = 200, backend: str = "nnsight") -> tuple[pd.DataFrame, dict]:
    """Scale each named head set by each alpha (1 always added) on the
    conflict cases; (rows: ROW_COLUMNS, summary: per head set, TFR and
    balance point per alpha as in steering)."""
    alphas = tuple(sorted(set(float(a) for a in alphas) | {1.0}))
    pad = mllm.tokenizer.pad_token_id
    frames = []
    for name, heads in head_sets.items():
        spec = HeadScale(tuple((int(la), int(h)) for la, h in heads), alphas, positions)
        setter = scale_setter(spec)
        for labels, b, enc in clean.batches(mllm, batch_size):
            logits = scale_heads(mllm, enc, spec, max_rows=max_rows, backend=backend)
            for alpha, lg in zip(alphas, logits):
                more = reforward(enc.inputs, lambda x, a=alpha: forward(mllm, x, setter(a, slice(None)),
                                                                         backend=backend)[0], pad)
                y = labels.predict(lg, more)
                frames.append(pd.DataFrame({
                    "head_set": name, "alpha": alpha, "case_id": b["case_id"].to_numpy(),
                    "region": b["region"].to_numpy(object), "dh_rel": b["dh_rel"].to_numpy(float), "y_m": y,
                    "follow": follow_outcome(y, b["y_v"].to_numpy(object), b["y_t"].to_numpy(object)),
                    "logit_diff": logit_diff(lg, labels, list(b["answer_text"]), list(b["answer_vision"])).numpy()}))
    if not frames:
        raise MechmodError("head scaling: no conflict case")
    rows = pd.concat(frames, ignore_index=True)[ROW_COLUMNS]
    sets = {}
    for name, sub in rows.groupby("head_set", sort=False):
        wide = sub.pivot(index="case_id", columns="alpha", values="follow")
        dh = sub.drop_duplicates("case_id").set_index("case_id").loc[wide.index, "dh_rel"].to_numpy(float)
        s = steering_summary(list(wide.columns), dh, wide.to_numpy(object).T, n_boot=n_boot)
        ld = sub.groupby("alpha")["logit_diff"].mean()
        for p in s["per_alpha"]:
            p["mean_logit_diff"] = float(ld[p["alpha"]])
        ref = next(p["balance_point"]["estimate"] for p in s["per_alpha"] if p["alpha"] == 1.0)
        for p in s["per_alpha"]:  # steering's shift is from alpha 0; here the clean model is alpha 1
            est = p["balance_point"]["estimate"]
            p["balance_shift"] = None if est is None or ref is None else est - ref
        sets[name] = dict(s, heads=[f"L{la}H{h}" for la, h in head_sets[name]])
    summary = {"alphas": list(alphas), "positions": positions, "n_cases": int(len(clean.table)),
               "balance_point": clean.balance, "head_sets": sets}
    return rows, summary


def default_head_sets(attribution_summary: dict, k: int = 3) -> dict[str, list[tuple[int, int]]]:
    """The top ``k`` text-promoting and vision-promoting heads of an
    attribution summary, as two head sets (an empty side is left out)."""
    top = attribution_summary.get("top_heads") or {}
    sets = {f"top {side}-promoting": [(h["layer"], h["head"]) for h in top.get(side, [])[:k]]
            for side in ("text", "vision")}
    sets = {n: hs for n, hs in sets.items() if hs}
    if not sets:
        raise MechmodError("the attribution found no text- or vision-promoting head; name heads with --head L.H")
    return sets

