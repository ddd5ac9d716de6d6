"""Conflict cases as intervention inputs: the clean (unpatched) answers of
each case, and the standard source -> target prompt pairs.

Answers follow the behavioural run (mechmod.scoring): the label of the
word the model writes (mechmod.answers) or, for MC2's phrases, the answer
the written phrase matches (mechmod.phrase_answers), else 'other'; dHrel
from the full-vocabulary entropies of the vision-only and text-only runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from mechmod.backends.tl_backend import bridged
from mechmod.errors import MechmodError
from mechmod.following import follow_outcome
from mechmod.names import PATCH_DIRECTIONS
from mechmod.phrase_answers import answer_set
from mechmod.scoring import clean_runs, continuations
from mechmod.uncertainty import entropy, relative_uncertainty

# direction -> what the source prompt is
DIRECTIONS = dict(zip(PATCH_DIRECTIONS, ("conflict <- vision-only (image + question)",
                                         "conflict <- text-only (description + question)",
                                         "conflict <- image-irrelevant control (same image, text about an absent shape)"),
                      strict=True))
_SOURCE_ANSWER = {"V->C": "y_v", "T->C": "y_t", "I->C": "y_ctrl"}


class Images:
    """Images of a dataset directory, opened once."""

    def __init__(self, dataset_dir: str | Path):
        self.dir = Path(dataset_dir)
        self._cache: dict[str, Any] = {}

    def __getitem__(self, rel: str | None):
        if rel is None:
            return None
        if rel not in self._cache:
            from mechmod.data import open_image

            self._cache[rel] = open_image(self.dir, rel)
        return self._cache[rel]


def encode(mllm, images: Images, image_paths, descriptions, questions):
    """Encoded prompts: image_paths / descriptions entries may be None."""
    return mllm.encode([images[p] for p in image_paths], list(descriptions), list(questions))


def batches(df: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for s in range(0, len(df), size):
        yield df.iloc[s : s + size]


@dataclass(frozen=True)
class Baseline:
    """Clean answers, one row per case (the input table's columns plus
    y_v, y_t, y_m, h_v, h_t, dh_rel, follow and, for conflict cases with an
    image-irrelevant control, y_ctrl). ``resid`` [N, L+1, D] float32: the
    multimodal answer-position residuals (when asked for)."""

    table: pd.DataFrame
    resid: torch.Tensor | None = None


def baseline(mllm, dataset_dir, cases: pd.DataFrame, batch_size: int = 8, backend: str = "nnsight",
             keep_resid: bool = False) -> Baseline:
    """Clean vision-only, text-only and multimodal runs of ``cases``
    (:func:`mechmod.scoring.clean_runs`: the image prompts over one cached
    prefix per image, as the behavioural run does, except with the
    TransformerLens backend or on a model its bridge has booted on, which
    run whole prompts)."""
    images = Images(dataset_dir)
    cases = cases.reset_index(drop=True)
    share = backend != "transformer_lens" and not bridged(mllm)
    parts, resid = [], None
    for cand, sub in cases.groupby(cases["candidates"].map(tuple), sort=False):
        labels = answer_set(mllm.tokenizer, list(cand))  # MC2's phrases: mechmod.phrase_answers
        runs = clean_runs(mllm, sub, images, batch_size, backend, share, labels=labels)
        vi, ti = runs.rows(sub)
        h_v, h_t = entropy(runs.v_logits).numpy()[vi], entropy(runs.t_logits).numpy()[ti]
        dh, _ = relative_uncertainty(h_t, h_v)
        part = sub.copy()
        # a top-1 piece that does not decide the answer is written on (mechmod.answers)
        v_more, t_more, m_more = continuations(mllm, sub, images, runs, batch_size, share)
        part["y_v"] = np.asarray(labels.predict(runs.v_logits, v_more), dtype=object)[vi]
        part["y_t"] = np.asarray(labels.predict(runs.t_logits, t_more), dtype=object)[ti]
        part["y_m"] = labels.predict(runs.m_logits, m_more)
        part["h_v"], part["h_t"], part["dh_rel"] = h_v, h_t, dh
        part["follow"] = follow_outcome(part["y_m"], part["y_v"], part["y_t"])
        parts.append(part)
        if keep_resid:
            resid = torch.zeros(len(cases), *runs.m_resid.shape[1:]) if resid is None else resid
            resid[torch.tensor(sub.index.to_numpy())] = runs.m_resid.float().cpu()
    table = pd.concat(parts).sort_index()
    ctrl = table[table["control"] == "image_irrelevant"].set_index(["image_id", "dt"])["y_m"]
    key = list(zip(table["image_id"], table["dt"]))
    table["y_ctrl"] = [ctrl.get(k) if c == "none" else None for k, c in zip(key, table["control"])]
    return Baseline(table=table.reset_index(drop=True), resid=resid)


def standard_pairs(table: pd.DataFrame, direction: str) -> pd.DataFrame:
    """Source -> target pairs of one direction (DIRECTIONS) from a baseline
    table: one row per conflict case whose source and target answers are
    both labels and differ. Columns: the case's, ``src_image_path``,
    ``src_description``, ``src_question``, ``a_src``, ``a_tgt``."""
    if direction not in DIRECTIONS:
        raise MechmodError(f"unknown patch direction {direction!r}; one of {list(DIRECTIONS)}")
    conf = table[table["control"] == "none"].copy()
    if direction == "I->C":
        ctrl = table[table["control"] == "image_irrelevant"].set_index(["image_id", "dt"])
        keys = list(zip(conf["image_id"], conf["dt"]))
        has = [k in ctrl.index for k in keys]
        conf, keys = conf[has], [k for k, h in zip(keys, has) if h]
        conf["src_image_path"] = [ctrl.loc[k, "image_path"] for k in keys]
        conf["src_description"] = [ctrl.loc[k, "description"] for k in keys]
        conf["src_question"] = [ctrl.loc[k, "question"] for k in keys]
    else:
        vision = direction == "V->C"
        conf["src_image_path"] = list(conf["image_path"]) if vision else [None] * len(conf)
        conf["src_description"] = [None] * len(conf) if vision else list(conf["description"])
        conf["src_question"] = list(conf["question"])
    conf["a_src"], conf["a_tgt"] = conf[_SOURCE_ANSWER[direction]], conf["y_m"]
    labels = conf["candidates"].map(set)
    ok = [(s in lab) and (t in lab) and s != t for s, t, lab in zip(conf["a_src"], conf["a_tgt"], labels)]
    return conf[ok].reset_index(drop=True)
