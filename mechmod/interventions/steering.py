"""Preference steering: move the model between following the text and
following the image by adding a direction to the residual stream.

Direction at layer l (:func:`preference_direction`): the mean answer-
position residual after decoder layer l of text-following cases minus that
of vision-following cases, on a train split (``alpha = 1`` moves a
vision-following mean onto the text-following mean). By default the
difference is taken within each group (same answer colours) and averaged,
so that it carries the preference and not the colours. Steering
(:class:`SteerSpec`, :func:`steer`) adds ``alpha * direction`` to the
output of layer l at every attended position (or only the last) during
the forward; a sweep of alphas is one generic batched sweep (the batch
stacked once per alpha).

On held-out cases (:func:`run_steering`) each alpha gives the multimodal
answer, hence TFR, the following curve and the balance point; dHrel stays
the unsteered vision-only / text-only one. Preference control is reported
in balance-point units: the shift of the balance point from alpha = 0 and
its least-squares slope per unit alpha.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mechmod._gc import frozen_heap
from mechmod.answers import OTHER, LabelSet
from mechmod.errors import MechmodError
from mechmod.following import (balance_point, follow_outcome, following_curve, following_rates,
                                weighted_balance_points)
from mechmod.interventions.cases import Images, baseline, batches, encode
from mechmod.interventions.core import Site, chunk_for, sweep
from mechmod.interventions.patching import logit_diff
from mechmod._io import jsonable
from mechmod.names import STEER_POSITIONS
from mechmod.phrase_answers import answer_set

DEFAULT_ALPHAS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class SteerSpec:
    """Add ``alpha * direction`` to the output of decoder layer ``layer``,
    at ``positions`` ('all' attended positions or the 'last'), for each
    alpha of ``alphas``."""

    layer: int
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    positions: str = "all"

    def __post_init__(self):
        if self.positions not in STEER_POSITIONS:
            raise MechmodError(f"SteerSpec.positions {self.positions!r}: one of {STEER_POSITIONS}")
        if not self.alphas:
            raise MechmodError("SteerSpec.alphas is empty")


def preference_direction(resid: torch.Tensor, follow: Sequence[str], layer: int, groups=None) -> torch.Tensor:
    """mean(text-following) - mean(vision-following) of ``resid`` [N, L+1,
    D] (ResidualTrace layout) after decoder layer ``layer`` -> [D].

    With ``groups`` (e.g. group ids: one image set and one pair of answer
    colours each), the difference is taken within each group that holds
    both outcomes and averaged over those groups (weighted by their size),
    so the answers' identities (which differ between groups) cancel and
    only the preference is left; the pooled difference otherwise also
    carries whichever colours happen to dominate each side."""
    f = np.asarray(follow, dtype=object)
    h = resid[:, layer + 1].float()
    if groups is None:
        t, v = torch.as_tensor(f == "text"), torch.as_tensor(f == "vision")
        if not (t.any() and v.any()):
            raise MechmodError(f"preference_direction: needs text- and vision-following cases, got {int(t.sum())} "
                               f"text and {int(v.sum())} vision")
        return h[t].mean(0) - h[v].mean(0)
    g = np.asarray(groups, dtype=object)
    diffs, weights = [], []
    for key in dict.fromkeys(g):
        sel = g == key
        t, v = torch.as_tensor(sel & (f == "text")), torch.as_tensor(sel & (f == "vision"))
        if t.any() and v.any():
            diffs.append(h[t].mean(0) - h[v].mean(0))
            weights.append(float(t.sum() + v.sum()))
    if not diffs:
        raise MechmodError("preference_direction: no group holds both text- and vision-following cases (needed "
                           "for the within-group direction); use more groups or the pooled direction")
    w = torch.tensor(weights)
    return (torch.stack(diffs) * (w / w.sum())[:, None]).sum(0)


def steer_setter(direction: torch.Tensor, spec: SteerSpec, attention_mask: torch.Tensor | None = None):
    """Sweep setter: setting = alpha; adds alpha * direction at layer
    ``spec.layer`` to the copy's rows (where ``attention_mask`` is 1)."""

    def setter(alpha: float, rows: slice):
        def add(x):
            d = (float(alpha) * direction).to(x.device, x.dtype)
            if spec.positions == "last":
                x[rows, -1] += d
            elif attention_mask is None:
                x[rows] += d
            else:
                x[rows] += attention_mask.to(x.device, x.dtype)[..., None] * d
            return x
        return [(Site(spec.layer, "resid"), add)]
    return setter


def steer(mllm, encoded, direction: torch.Tensor, spec: SteerSpec, metric=None, chunk: int | None = None,
          max_rows: int = 64, backend: str = "nnsight") -> torch.Tensor:
    """Answer logits (or ``metric`` of them) for every alpha of ``spec``:
    [n_alphas, B, ...]."""
    mask = encoded.inputs.get("attention_mask")
    chunk = chunk or chunk_for(encoded.batch_size, max_rows)
    return sweep(mllm, encoded.inputs, list(spec.alphas), steer_setter(direction, spec, mask), metric, chunk, backend)


def _answer_metric(labels: LabelSet, answer_text, answer_vision):
    """Sweep metric: steered logits [B, V] -> [B, 2] (logit(text answer) -
    logit(vision answer), index of the steered answer in ``labels.labels``,
    -1 for 'other'); the answer is written on with the steering still
    applied where its first token does not decide it."""
    def metric(logits, more):
        index = {lab: i for i, lab in enumerate(labels.labels)}
        y = torch.tensor([index.get(p, -1) for p in labels.predict(logits, more)], dtype=torch.float32)
        return torch.stack([logit_diff(logits, labels, answer_text, answer_vision), y], 1)
    return metric


def split_groups(group_ids, train_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Bool mask of the train split, by group (one group's images and texts
    never sit on both sides)."""
    g = np.asarray(group_ids, dtype=object)
    uniq = np.array(sorted(set(g)), dtype=object)
    if uniq.size < 2:
        raise MechmodError(f"split_groups: {uniq.size} group(s); steering needs >= 2 to hold some out")
    rng = np.random.default_rng(seed)
    n_train = min(uniq.size - 1, max(1, int(round(train_fraction * uniq.size))))
    train = set(rng.permutation(uniq)[:n_train])
    return np.array([x in train for x in g])


def steering_summary(alphas: Sequence[float], dh_rel, follow_by_alpha, n_boot: int = 200, seed: int = 0,
                     bins: int = 6) -> dict:
    """Per alpha: TFR, following curve and balance point; the balance
    point's shift from alpha = 0 and its slope per unit alpha (least
    squares over the alphas with an estimate) with a bootstrap interval
    over those alphas (:func:`balance_shift_interval`; None without a
    slope). ``follow_by_alpha`` [n_alphas, n_cases] of 'text' / 'vision' /
    'other'."""
    x = np.asarray(dh_rel, dtype=float)
    per = []
    for a, follow in zip(alphas, np.asarray(follow_by_alpha, dtype=object)):
        tv = np.isin(follow, ["text", "vision"])
        t = follow[tv] == "text"
        bp = balance_point(x[tv], t, n_boot=n_boot, seed=seed)
        per.append({"alpha": float(a), **following_rates(follow),
                    "curve": following_curve(x[tv], t, bins=bins).to_dict() if tv.any() else None,
                    "balance_point": bp.to_dict()})
    ref = next((p["balance_point"]["estimate"] for p in per if p["alpha"] == 0.0), None)
    for p in per:
        est = p["balance_point"]["estimate"]
        p["balance_shift"] = None if est is None or ref is None else est - ref
    defined = [i for i, p in enumerate(per) if p["balance_point"]["estimate"] is not None]
    pts = [(per[i]["alpha"], per[i]["balance_point"]["estimate"]) for i in defined]
    slope = float(np.polyfit(*zip(*pts), 1)[0]) if len({a for a, _ in pts}) >= 2 else None
    tfr = [(p["alpha"], p["tfr"]) for p in per if p["tfr"] is not None]
    return jsonable({"per_alpha": per, "balance_per_alpha": slope,
                     "balance_per_alpha_ci": None if slope is None else balance_shift_interval(
                         [alphas[i] for i in defined], x, [follow_by_alpha[i] for i in defined], n_boot, seed),
                     "n_alphas_defined": len(pts), "all_alphas_defined": len(pts) == len(per),
                     "tfr_per_alpha": float(np.polyfit(*zip(*tfr), 1)[0]) if len(tfr) >= 2 else None})


def balance_shift_interval(alphas: Sequence[float], dh_rel, follow_by_alpha, n_boot: int = 200, seed: int = 0,
                           ci: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the balance point's least-squares
    slope per unit alpha: the held-out cases are resampled together across
    the alphas (one draw is one case set steered at every alpha), each
    alpha's balance point refitted (:func:`weighted_balance_points`) and
    the slope fitted over the alphas where it is defined (at least two).
    None when fewer than two draws give a slope."""
    x = np.asarray(dh_rel, dtype=float)
    follow = np.asarray(follow_by_alpha, dtype=object)
    if n_boot <= 0 or x.size == 0:
        return None
    w = np.random.default_rng(seed).multinomial(x.size, np.full(x.size, 1.0 / x.size), size=n_boot).astype(float)
    bp = np.stack([weighted_balance_points(x[tv], f[tv] == "text", w[:, tv])
                   for f in follow for tv in [np.isin(f, ["text", "vision"])]], axis=1)  # [n_boot, n_alphas]
    a = np.asarray(alphas, dtype=float)
    slopes = [np.polyfit(a[ok], row[ok], 1)[0] for row in bp for ok in [np.isfinite(row)] if len(set(a[ok])) >= 2]
    if len(slopes) < 2:
        return None
    lo, hi = np.quantile(slopes, [(1 - ci) / 2, (1 + ci) / 2])
    return [float(lo), float(hi)]


@dataclass(frozen=True)
class SteerStudyConfig:
    layers: tuple[int, ...] | None = None  # None: every layer
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    positions: str = "all"
    train_fraction: float = 0.5
    within_group: bool = True  # direction from within-group differences (see preference_direction)
    seed: int = 0
    batch_size: int = 8
    max_rows: int = 64
    n_boot: int = 200
    backend: str = "hooks"  # plain forward hooks: the fastest, equal to nnsight and transformer_lens


@dataclass(frozen=True)
class SteerStudy:
    rows: pd.DataFrame  # one per (layer, alpha, held-out case)
    directions: dict[int, torch.Tensor]
    summary: dict


@frozen_heap()
def run_steering(mllm, dataset_dir, cases: pd.DataFrame, config: SteerStudyConfig = SteerStudyConfig(),
                 progress: bool = False) -> SteerStudy:
    """Direction per layer on the train groups, alpha sweep on the held-out
    groups (conflict cases only). ``progress``: a bar of the (layer,
    held-out case) sweeps on stderr (when it is a terminal)."""
    cfg = config
    alphas = tuple(sorted(set(float(a) for a in cfg.alphas) | {0.0}))
    conf = cases[cases["control"] == "none"].reset_index(drop=True)
    if conf.empty:
        raise MechmodError("run_steering: no conflict cases (control == 'none')")
    bad = [x for x in cfg.layers or () if not 0 <= int(x) < mllm.n_layers]
    if bad:
        raise MechmodError(f"steering layers {bad}: {mllm.name} has layers 0..{mllm.n_layers - 1}")
    base = baseline(mllm, dataset_dir, conf, cfg.batch_size, cfg.backend, keep_resid=True)
    table = base.table
    train = split_groups(table["group_id"], cfg.train_fraction, cfg.seed)
    layers = list(range(mllm.n_layers)) if cfg.layers is None else [int(x) for x in cfg.layers]
    follow = table["follow"][train].to_numpy(object)
    groups = table["group_id"][train].to_numpy(object) if cfg.within_group else None
    directions = {l: preference_direction(base.resid[train], follow, l, groups) for l in layers}
    test = table[~train].reset_index(drop=True)
    images = Images(dataset_dir)
    frames, summaries = [], {}
    bar = tqdm(total=len(layers) * len(test), desc="steer", unit="case", disable=None if progress else True)
    for layer in layers:
        spec = SteerSpec(layer=layer, alphas=alphas, positions=cfg.positions)
        parts = []
        for cand, sub in test.groupby(test["candidates"].map(tuple), sort=False):
            labels = answer_set(mllm.tokenizer, list(cand))
            for b in batches(sub, cfg.batch_size):
                enc = encode(mllm, images, b["image_path"], b["description"], b["question"])
                at, av = list(b["answer_text"]), list(b["answer_vision"])
                out = steer(mllm, enc, directions[layer].to(mllm.device), spec, _answer_metric(labels, at, av),
                            max_rows=cfg.max_rows, backend=cfg.backend)
                names = np.array(labels.labels + [OTHER], dtype=object)
                for a, res in zip(alphas, out):
                    y_m = names[res[:, 1].long().numpy()]  # -1 indexes 'other'
                    f = b[["case_id", "group_id", "dv", "dt", "dh_rel", "y_v", "y_t", "answer_text", "answer_vision"]].copy()
                    f["layer"], f["alpha"], f["y_m"] = layer, a, y_m
                    f["follow"] = follow_outcome(y_m, b["y_v"], b["y_t"])
                    f["ld_text_vision"] = res[:, 0].numpy()
                    parts.append(f)
                bar.update(len(b))
        rows = pd.concat(parts, ignore_index=True)
        frames.append(rows)
        wide = rows.pivot(index="case_id", columns="alpha", values="follow")[list(alphas)]
        dh = rows.drop_duplicates("case_id").set_index("case_id").loc[wide.index, "dh_rel"].to_numpy(float)
        summaries[layer] = steering_summary(alphas, dh, wide.to_numpy(object).T, n_boot=cfg.n_boot, seed=cfg.seed)
        summaries[layer]["direction_norm"] = float(directions[layer].norm())
    bar.close()
    train_follow = following_rates(table["follow"][train])
    summary = jsonable({"config": asdict(cfg), "alphas": list(alphas), "n_train": int(train.sum()),
                              "n_heldout": int((~train).sum()), "train_following": train_follow,
                              "layers": {str(k): v for k, v in summaries.items()}})
    return SteerStudy(rows=pd.concat(frames, ignore_index=True), directions=directions, summary=summary)
