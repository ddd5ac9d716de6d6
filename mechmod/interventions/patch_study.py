"""The patching study over a dataset: layer sweeps for the standard
directions x components x position groups, then single heads and MLPs at
the last token (patched per direction, knocked out to classify them).

Tables (one row per case x layer, and per case x unit) and a summary dict
(curves with first-50% layer, critical window and dHrel bins; head
classification) for ``mechmod patch``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mechmod._gc import frozen_heap
from mechmod.answers import LabelSet
from mechmod.errors import MechmodError
from mechmod.following import balance_point, following_rates, region
from mechmod.interventions import heads as H
from mechmod.interventions.cases import DIRECTIONS, Images, baseline, batches, encode, standard_pairs
from mechmod.interventions.core import forward
from mechmod.phrase_answers import answer_set
from mechmod.interventions.patching import (COMPONENTS, STUDY_GROUPS, PatchSpec, logit_diff, patch_groups,
                                            restoration, summarize_curve)
from mechmod._io import jsonable


@dataclass(frozen=True)
class PatchStudyConfig:
    """Which sweeps a patching study runs."""

    directions: tuple[str, ...] = tuple(DIRECTIONS)
    positions: tuple[str, ...] = STUDY_GROUPS
    components: tuple[str, ...] = ("resid",)
    units: bool = True
    knockouts: tuple[str, ...] = H.KNOCKOUT_MODES
    batch_size: int = 8
    max_rows: int = 64
    dh_bins: int = 4
    radius: float = 0.5  # half-width of the ambiguous region around the baseline's balance point
    t_min: float = 2.0
    backend: str = "hooks"  # plain forward hooks: the fastest, equal to nnsight and transformer_lens

    def __post_init__(self):
        bad = ([d for d in self.directions if d not in DIRECTIONS] + [c for c in self.components if c not in COMPONENTS]
               + [k for k in self.knockouts if k not in H.KNOCKOUT_MODES])
        if bad:
            raise MechmodError(f"PatchStudyConfig: unknown {bad}")
        for g in self.positions:
            PatchSpec(positions=g)


@dataclass(frozen=True)
class PatchStudy:
    layers: pd.DataFrame
    units: pd.DataFrame
    summary: dict


def _pair_metric(labels: LabelSet, a_src: Sequence[str], a_tgt: Sequence[str]):
    """Sweep metric: patched logits [B, V] -> [B, 2] (LD src - tgt, flipped
    to the source's answer); the answer is written on with the patch still
    applied where its first token does not decide it (``more``)."""
    def metric(logits, more):
        ld = logit_diff(logits, labels, a_src, a_tgt)
        flipped = torch.tensor([p == a for p, a in zip(labels.predict(logits, more), a_src)], dtype=torch.float32)
        return torch.stack([ld, flipped], 1)
    return metric


@frozen_heap()
def run_patching(mllm, dataset_dir, cases: pd.DataFrame, config: PatchStudyConfig = PatchStudyConfig(),
                 progress: bool = False) -> PatchStudy:
    """Run the study on ``cases`` (conflict cases and their image-irrelevant
    controls; other rows are ignored). ``progress``: a bar of the pairs
    patched on stderr (when it is a terminal)."""
    cfg = config
    cases = cases[cases["control"].isin(["none", "image_irrelevant"])]
    if not (cases["control"] == "none").any():
        raise MechmodError("run_patching: no conflict cases (control == 'none')")
    base = baseline(mllm, dataset_dir, cases, cfg.batch_size, cfg.backend).table
    label_sets = {c: answer_set(mllm.tokenizer, list(c)) for c in base["candidates"].map(tuple).unique()}
    images = Images(dataset_dir)
    layer_rows, curves, unit_rows, pairs_n = [], [], [], {}
    all_pairs = {direction: standard_pairs(base, direction) for direction in cfg.directions}
    bar = tqdm(total=sum(map(len, all_pairs.values())), desc="patch", unit="pair", disable=None if progress else True)
    for direction, pairs in all_pairs.items():
        pairs_n[direction] = len(pairs)
        for cand, sub in pairs.groupby(pairs["candidates"].map(tuple), sort=False):
            labels = label_sets[cand]
            for b in batches(by_length(mllm, sub), cfg.batch_size):
                src = encode(mllm, images, b["src_image_path"], b["src_description"], b["src_question"])
                tgt = encode(mllm, images, b["image_path"], b["description"], b["question"])
                a_src, a_tgt = list(b["a_src"]), list(b["a_tgt"])
                metric = _pair_metric(labels, a_src, a_tgt)
                tgt_ld = None if cfg.components else logit_diff(forward(mllm, tgt.inputs, backend=cfg.backend)[0],
                                                                labels, a_src, a_tgt)
                for comp in cfg.components:  # every position group in one sweep over one source forward
                    specs = [PatchSpec(component=comp, positions=group) for group in cfg.positions]
                    res, src_logits, tgt_logits, aligns = patch_groups(mllm, src, tgt, specs, metric,
                                                                       max_rows=cfg.max_rows, backend=cfg.backend)
                    src_ld = logit_diff(src_logits, labels, a_src, a_tgt)
                    tgt_ld = logit_diff(tgt_logits, labels, a_src, a_tgt)  # the clean target, from the sweep
                    layer_rows.extend(_layer_frame(direction, comp, group, b, r, src_ld, tgt_ld, align.n_pairs)
                                      for group, r, align in zip(cfg.positions, res, aligns))
                if cfg.units:
                    us = H.units(mllm)
                    res, src_logits = H.patch_units(mllm, src, tgt, us, metric, max_rows=cfg.max_rows, backend=cfg.backend)
                    unit_rows.append(_unit_frame(f"patch {direction}", us, b, res,
                                                 logit_diff(src_logits, labels, a_src, a_tgt), tgt_ld))
                bar.update(len(b))
    bar.close()
    layers = pd.concat(layer_rows, ignore_index=True) if layer_rows else pd.DataFrame(columns=_LAYER_COLUMNS)
    bp = _balance(base)
    for (d, c, g), sub in layers.groupby(["direction", "component", "positions"], sort=False):
        wide_f = sub.pivot(index="case_id", columns="layer", values="flipped")
        wide_r = sub.pivot(index="case_id", columns="layer", values="restoration")
        first = sub.drop_duplicates("case_id")  # (a Series: set_index on the wide frame copies every column)
        dh = pd.Series(first["dh_rel"].to_numpy(float), index=first["case_id"]).loc[wide_f.index].to_numpy()
        curves.append(summarize_curve(d, c, g, list(wide_f.columns), wide_f.to_numpy(bool), wide_r.to_numpy(float),
                                      dh, cfg.dh_bins).to_dict())
        curves[-1]["flip_rate_by_region"] = None if bp.estimate is None else flip_rates_by_region(
            wide_f.to_numpy(bool), region(dh, bp.estimate, cfg.radius))
    if cfg.units and cfg.knockouts:
        unit_rows.extend(_knockouts(mllm, base, images, label_sets, cfg))
    units = pd.concat(unit_rows, ignore_index=True) if unit_rows else pd.DataFrame()
    summary = _summary(base, bp, pairs_n, curves, units, cfg)
    return PatchStudy(layers=layers, units=units, summary=summary)


def by_length(mllm, pairs: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` sorted by the length of their target prompts (stable), so
    that a batch carries little padding; where a cut cannot fall inside an
    image (Gemma 3), a batch of one length also has its text after every
    row's image, so a patch of the text computes the text alone
    (:func:`mechmod.interventions.patching.tail_start`)."""
    length = [len(mllm.tail(mllm.case_prompt(d, q, with_image=True))[0])
              for d, q in zip(pairs["description"], pairs["question"])]
    return pairs.iloc[np.argsort(length, kind="stable")]


_LAYER_COLUMNS = ["direction", "component", "positions", "case_id", "group_id", "dv", "dt", "dh_rel", "a_src",
                  "a_tgt", "layer", "n_aligned", "ld_patched", "ld_target", "ld_source", "restoration", "flipped"]


def _layer_frame(direction, comp, group, b, res, src_ld, tgt_ld, n_aligned) -> pd.DataFrame:
    L, B = res.shape[:2]
    ld = res[..., 0].numpy()
    rows = {
        "direction": direction, "component": comp, "positions": group,
        "case_id": np.tile(b["case_id"].to_numpy(), L), "group_id": np.tile(b["group_id"].to_numpy(), L),
        "dv": np.tile(b["dv"].to_numpy(), L), "dt": np.tile(b["dt"].to_numpy(), L),
        "dh_rel": np.tile(b["dh_rel"].to_numpy(float), L),
        "a_src": np.tile(b["a_src"].to_numpy(object), L).astype(str), "a_tgt": np.tile(b["a_tgt"].to_numpy(object), L).astype(str),
        "layer": np.repeat(np.arange(L), B), "n_aligned": np.tile(n_aligned.numpy(), L),
        "ld_patched": ld.reshape(-1), "ld_target": np.tile(tgt_ld.numpy(), L),
        "ld_source": np.tile(src_ld.numpy(), L),
        "flipped": res[..., 1].numpy().reshape(-1) > 0.5,
    }
    rows["restoration"] = restoration(rows["ld_patched"], rows["ld_target"], rows["ld_source"])
    return pd.DataFrame(rows)[_LAYER_COLUMNS]


def _unit_frame(analysis, us, b, res, src_ld, tgt_ld) -> pd.DataFrame:
    U, B = res.shape[:2]
    ld = res[..., 0].numpy().reshape(-1)
    t, s = np.tile(tgt_ld.numpy(), U), np.tile(src_ld.numpy(), U)
    return pd.DataFrame({
        "analysis": analysis, "unit": np.repeat([u.name for u in us], B), "kind": np.repeat([u.kind for u in us], B),
        "layer": np.repeat([u.layer for u in us], B), "head": np.repeat([u.head for u in us], B),
        "case_id": np.tile(b["case_id"].to_numpy(), U), "ld": ld, "ld_clean": t, "ld_source": s,
        "restoration": restoration(ld, t, s), "flipped": res[..., 1].numpy().reshape(-1) > 0.5,
    })


def _knockouts(mllm, base: pd.DataFrame, images, label_sets: dict, cfg: PatchStudyConfig) -> list[pd.DataFrame]:
    """Knock every unit out on the conflict cases; LD = text - vision answer."""
    conf = base[base["control"] == "none"]
    us = H.units(mllm)

    def enc_batches():  # encoded twice rather than held (pixel values are large)
        for _, sub in conf.groupby(conf["candidates"].map(tuple), sort=False):
            for b in batches(sub, cfg.batch_size):
                yield b, encode(mllm, images, b["image_path"], b["description"], b["question"])

    means = H.mean_outputs(mllm, (e for _, e in enc_batches()), us, cfg.backend) if "mean" in cfg.knockouts else None
    out = []
    for b, enc in enc_batches():
        labels = label_sets[tuple(b["candidates"].iloc[0])]
        at, av = list(b["answer_text"]), list(b["answer_vision"])

        def metric(logits, more, labels=labels, at=at, av=av):  # no answer needed: no flip column
            ld = logit_diff(logits, labels, at, av)
            return torch.stack([ld, torch.zeros_like(ld)], 1)
        clean = logit_diff(forward(mllm, enc.inputs, backend=cfg.backend)[0], labels, at, av)
        for mode in cfg.knockouts:
            res = H.knockout_units(mllm, enc, us, mode, means, metric, max_rows=cfg.max_rows, backend=cfg.backend)
            f = _unit_frame(f"knockout {mode}", us, b, res, clean, clean)
            f["contrib"] = f["ld_clean"] - f["ld"]
            out.append(f.drop(columns=["ld_source", "restoration", "flipped"]))
    return out


def _balance(base: pd.DataFrame):
    """The unpatched conflict cases' balance point (it places the ambiguous region)."""
    conf = base[base["control"] == "none"]
    tv = conf["follow"].isin(["text", "vision"]).to_numpy()
    return balance_point(conf["dh_rel"].to_numpy(float)[tv], (conf["follow"] == "text").to_numpy()[tv], n_boot=200)


def flip_rates_by_region(flipped: np.ndarray, regions) -> dict:
    """Per layer, the flip rate of the cases in the ambiguous and in the
    clear region (:func:`mechmod.following.region` of their dHrel around the
    balance point). ``flipped`` [n_cases, n_layers] bool."""
    r = np.asarray(regions, dtype=object)
    f = np.asarray(flipped, dtype=bool)
    return {name: {"n": int((r == name).sum()),
                   "flip_rate": f[r == name].mean(axis=0).tolist() if (r == name).any() else None}
            for name in ("ambiguous", "clear")}


def _summary(base, bp, pairs_n, curves, units, cfg) -> dict:
    conf = base[base["control"] == "none"]
    s = {"config": asdict(cfg), "n_conflict_cases": int(len(conf)), "following": following_rates(conf["follow"]),
         "balance_point": bp.to_dict(), "n_pairs": pairs_n, "directions": DIRECTIONS, "curves": curves,
         "units": {}}
    if len(units):
        for analysis, sub in units.groupby("analysis", sort=False):
            per = []
            for (layer, kind, head, name), u in sub.groupby(["layer", "kind", "head", "unit"], sort=True):
                row = {"unit": name, "layer": int(layer), "kind": kind, "head": int(head), "n": int(len(u))}
                if analysis.startswith("knockout"):
                    row["contrib"] = u["contrib"].to_numpy(float)
                else:
                    row["restoration"] = float(np.nanmean(u["restoration"])) if u["restoration"].notna().any() else None
                    row["flip_rate"] = float(u["flipped"].mean())
                per.append(row)
            if analysis.startswith("knockout"):
                mean, t, label = H.classify_units([r.pop("contrib") for r in per], cfg.t_min)
                for r, m_, t_, l_ in zip(per, mean, t, label):
                    r.update(mean_contrib=float(m_), t=float(t_), promotes=str(l_))
            s["units"][analysis] = per
    return jsonable(s)
