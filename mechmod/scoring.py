"""`mechmod.score`: the three answers of conflict cases as a table, without
a run directory (the runner streams the same rows to disk)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def score(mllm, cases: pd.DataFrame, dataset_dir: str | Path, batch_size: int = 8, backend: str = "nnsight",
          uncertainty: str = "entropy", lens=None, share_prefix: bool = True) -> pd.DataFrame:
    """One row per case: y_v, y_t, y_m (answer labels or 'other'), h_v, h_t,
    h_m (full-vocabulary entropy, nats, float32), hl_* (label-set entropy),
    p_v, p_t, p_m (per-label probabilities in ``candidates`` order),
    dh_rel, follow, per-layer votes and logit differences under ``lens``
    (default: the logit lens), status and error. A case that cannot be
    scored (e.g. its image does not decode) gets status 'failed' and its
    reason; the others are scored. Padding and batch size do not change
    the numbers beyond float32 rounding."""
    from mechmod.lenses import LogitLens, Unembed
    from mechmod.runner import RunConfig, score_cases

    lens = lens or LogitLens(Unembed.from_model(mllm))
    config = RunConfig(model=mllm.name, dataset=str(dataset_dir), dataset_sha256="", lens="custom", backend=backend,
                       uncertainty=uncertainty, batch_size=batch_size, share_prefix=share_prefix)
    ordered = cases.sort_values(["image_id", "case_id"], kind="stable")
    rows = score_cases(mllm, lens, ordered, Path(dataset_dir), config)
    return rows.set_index("case_id").loc[list(cases["case_id"])].reset_index()
