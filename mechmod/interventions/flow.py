"""Attention knockout between spans: where does information move from one
part of the prompt to another on its way to the answer?

A flow ``src->dst`` (``FLOWS``: image, description, question into the last
position, and image -> description, image -> question, description ->
question) is blocked in a window of k consecutive decoder layers by
removing, in each of them, the (query in dst, key in src) entries of the
layer's materialised 4D attention mask (site ``mask``: the family's own
mask, sliding windows and bidirectional image blocks included; only
entries are removed). Windows slide with stride 1 and are full (k layers);
every (flow, window) is one setting of the generic batched sweep. Per
case: the follow outcome with the flow blocked (a change, to 'other'
included, is a flip) and the change of LD = logit(answer_text) -
logit(answer_vision). Needs eager or sdpa attention (a flash kernel has no
4D mask)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from mechmod._gc import frozen_heap
from mechmod.answers import LabelSet
from mechmod.backends.sites import attention_implementation
from mechmod.decoding import reforward
from mechmod.errors import MechmodError
from mechmod.following import follow_outcome
from mechmod.interventions.clean import CleanCases
from mechmod.interventions.core import Site, chunk_for, forward, sweep
from mechmod.interventions.patching import logit_diff
from mechmod.names import FLOWS
from mechmod.stats import bootstrap_mean_ci

ROW_COLUMNS = ["flow", "window_start", "window_end", "case_id", "region", "follow", "follow_knocked", "flipped",
               "delta_logit_diff"]
FLOW_COLUMNS = ["flow", "window_start", "window_end", "region", "n_cases", "flip_rate", "flip_rate_lo", "flip_rate_hi",
                "delta_logit_diff", "delta_logit_diff_lo", "delta_logit_diff_hi"]


@dataclass(frozen=True)
class Knockout:
    """Block ``flow`` ('src->dst') in decoder layers [start, end)."""

    flow: str
    start: int
    end: int

    def __post_init__(self):
        if self.flow not in FLOWS:
            raise MechmodError(f"unknown flow {self.flow!r}; one of {', '.join(FLOWS)}")

    @property
    def spans(self) -> tuple[str, str]:
        src, dst = self.flow.split("->")
        return src, dst


def windows(n_layers: int, k: int | None = None) -> list[tuple[int, int]]:
    """Every full window of ``k`` consecutive layers, stride 1 (default k: a
    quarter of the layers, at least 1)."""
    k = max(1, n_layers // 4) if k is None else int(k)
    if not 1 <= k <= n_layers:
        raise MechmodError(f"window of {k} layers: the model has {n_layers}; choose 1..{n_layers}")
    return [(s, s + k) for s in range(n_layers - k + 1)]


def check_kernel(mllm) -> None:
    kernel = attention_implementation(mllm)
    if kernel not in ("eager", "sdpa"):
        raise MechmodError(f"attention knockout edits the 4D attention mask, which {mllm.name}'s {kernel} attention "
                           "does not materialise; load the model with sdpa or eager attention")


def knockout_setter(spans: dict[str, torch.Tensor]):
    """Sweep setter: a :class:`Knockout` -> mask edits on the copy's rows
    (``spans``: the batch's bool [B, T] span masks). The prompt's T
    positions are addressed; tokens written after it (a continuation) are
    left as they are."""

    def setter(ko: Knockout, rows: slice):
        src, dst = ko.spans
        pair = spans[dst][:, :, None] & spans[src][:, None, :]  # [B, Tq, K]

        def block(x):
            T = pair.shape[1]
            x[rows, :, :T, :T] &= ~pair[:, None].to(x.device)
            return x
        return [(Site(layer, "mask"), block) for layer in range(ko.start, ko.end)]
    return setter


def knockout_batch(mllm, encoded, labels: LabelSet, knockouts: Sequence[Knockout], answer_text, answer_vision,
                   max_rows: int = 64, backend: str = "nnsight"):
    """(LD [n_knockouts, B], answers per knockout, clean LD [B], clean answers)
    of one encoded batch; an answer its first token does not decide is
    written on with the same knockout applied."""
    setter = knockout_setter(encoded.spans)
    pad = mllm.tokenizer.pad_token_id

    def answers(logits, edits):
        more = reforward(encoded.inputs, lambda x: forward(mllm, x, edits, backend=backend)[0], pad)
        return labels.predict(logits, more)

    clean_logits = forward(mllm, encoded.inputs, backend=backend)[0]
    clean_ld = logit_diff(clean_logits, labels, answer_text, answer_vision)
    chunk = chunk_for(encoded.batch_size, max_rows)
    ld, preds = [], []
    for s in range(0, len(knockouts), chunk):
        part = list(knockouts[s : s + chunk])
        logits = sweep(mllm, encoded.inputs, part, setter, chunk=len(part), backend=backend)
        for ko, lg in zip(part, logits):
            ld.append(logit_diff(lg, labels, answer_text, answer_vision))
            preds.append(answers(lg, setter(ko, slice(None))))
    return torch.stack(ld), preds, clean_ld, answers(clean_logits, ())


@frozen_heap()
def run_flow(mllm, clean: CleanCases, flows: Sequence[str] = FLOWS, k: int | None = None, batch_size: int = 8,
             max_rows: int = 64, backend: str = "nnsight") -> pd.DataFrame:
    """One row per (flow, window, conflict case): ROW_COLUMNS."""
    check_kernel(mllm)
    kos = [Knockout(f, s, e) for f in flows for s, e in windows(mllm.n_layers, k)]
    frames = []
    for labels, b, enc in clean.batches(mllm, batch_size):
        at, av = list(b["answer_text"]), list(b["answer_vision"])
        ld, preds, clean_ld, clean_y = knockout_batch(mllm, enc, labels, kos, at, av, max_rows, backend)
        y_v, y_t = b["y_v"].to_numpy(object), b["y_t"].to_numpy(object)
        base = follow_outcome(clean_y, y_v, y_t)
        for ko, d, y in zip(kos, ld, preds):
            knocked = follow_outcome(y, y_v, y_t)
            frames.append(pd.DataFrame({
                "flow": ko.flow, "window_start": ko.start, "window_end": ko.end, "case_id": b["case_id"].to_numpy(),
                "region": b["region"].to_numpy(object), "follow": base, "follow_knocked": knocked,
                "flipped": knocked != base, "delta_logit_diff": (d - clean_ld).numpy()}))
    return pd.concat(frames, ignore_index=True)[ROW_COLUMNS]


def flow_table(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """FLOW_COLUMNS: per (flow, window, region; 'all' pools the regions) the
    flip rate and mean LD change with 95% bootstrap intervals over cases."""
    out = []
    pooled = pd.concat([rows, rows.assign(region="all")], ignore_index=True)
    for (flow, start, end, region), sub in pooled.groupby(["flow", "window_start", "window_end", "region"], sort=False):
        flip = bootstrap_mean_ci(sub["flipped"].to_numpy(float), n_boot, seed)
        dld = bootstrap_mean_ci(sub["delta_logit_diff"].to_numpy(float), n_boot, seed)
        out.append({"flow": flow, "window_start": int(start), "window_end": int(end), "region": region,
                    "n_cases": int(len(sub)), "flip_rate": flip["mean"], "flip_rate_lo": _bound(flip, 0),
                    "flip_rate_hi": _bound(flip, 1), "delta_logit_diff": dld["mean"],
                    "delta_logit_diff_lo": _bound(dld, 0), "delta_logit_diff_hi": _bound(dld, 1)})
    return pd.DataFrame(out, columns=FLOW_COLUMNS)


def _bound(stat: dict, i: int) -> float | None:
    return None if stat["ci"] is None else stat["ci"][i]


def flow_summary(table: pd.DataFrame, clean: CleanCases, k: int) -> dict:
    """The summary `mechmod flow` writes: per flow and region, the windows'
    flip rates and LD changes (the figure's input) and the strongest window."""
    flows = {}
    for flow, sub in table.groupby("flow", sort=False):
        by_region = {}
        for region, r in sub.groupby("region", sort=True):
            r = r.sort_values("window_start")
            by_region[region] = {c: [None if pd.isna(x) else float(x) for x in r[c]] for c in FLOW_COLUMNS[5:]}
            by_region[region]["window_start"] = [int(x) for x in r["window_start"]]
            by_region[region]["n_cases"] = int(r["n_cases"].max())
        flows[flow] = by_region
    allr = table[table["region"] == "all"]
    peak = allr.loc[allr["delta_logit_diff"].abs().idxmax()] if len(allr) else None
    return {"window": int(k), "n_cases": int(len(clean.table)), "balance_point": clean.balance, "radius": clean.radius,
            "flows": flows,
            "strongest": None if peak is None else {"flow": peak["flow"], "window_start": int(peak["window_start"]),
                                                   "window_end": int(peak["window_end"]),
                                                   "delta_logit_diff": float(peak["delta_logit_diff"]),
                                                   "flip_rate": float(peak["flip_rate"])}}
