"""The preference an organism was trained to have, read off a run.

An organism's conflicts were trained towards p_v * p_t^W (normalised) of
its own unimodal beliefs (``--text-weight W``). Given a run's per-case
unimodal label probabilities (results.parquet: ``p_v``, ``p_t`` in the order
of ``candidates``; the unimodal answers ``y_v``, ``y_t``; ``dh_rel``),
:func:`oracle_outcomes` says what that rule alone would answer on each
conflict and :func:`oracle_balance_point` where its following curve crosses
0.5, with the estimator of :func:`mechmod.following.balance_point`: the
balance point the planted W predicts, to set beside the measured one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mechmod.following import BalancePoint, balance_point

OUTCOMES = ("text", "vision", "other")


def oracle_outcomes(rows: pd.DataFrame, text_weight: float) -> np.ndarray:
    """Per row: ``"text"`` when the argmax of p_v * p_t^W is the text-only
    answer ``y_t``, ``"vision"`` when it is the vision-only answer ``y_v``,
    else ``"other"`` (also where the unimodal answers agree or are not
    labels: such a row decides nothing)."""
    out = []
    for p_v, p_t, cands, y_v, y_t in zip(rows["p_v"], rows["p_t"], rows["candidates"], rows["y_v"], rows["y_t"]):
        cands = list(cands)
        if y_v == y_t or y_v not in cands or y_t not in cands or len(p_v) != len(cands) or len(p_t) != len(cands):
            out.append("other")
            continue
        logq = np.log(np.clip(np.asarray(p_v, float), 1e-30, None)) \
            + text_weight * np.log(np.clip(np.asarray(p_t, float), 1e-30, None))
        best = cands[int(np.argmax(logq))]
        out.append("text" if best == y_t else "vision" if best == y_v else "other")
    return np.asarray(out, dtype=object)


def oracle_balance_point(rows: pd.DataFrame, text_weight: float, n_boot: int = 1000, seed: int = 0) -> BalancePoint:
    """Balance point over ``dh_rel`` of the outcomes of p_v * p_t^W
    (:func:`oracle_outcomes`), on the rows it decides (text or vision)."""
    outcome = oracle_outcomes(rows, text_weight)
    decided = outcome != "other"
    dh = np.asarray(rows["dh_rel"], float)[decided]
    return balance_point(dh, outcome[decided] == "text", n_boot=n_boot, seed=seed)
