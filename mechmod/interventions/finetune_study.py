"""The boundary-vs-easy fine-tuning study (``mechmod finetune``).

Cases are selected on one dataset (a run's conflict cases, or a clean
baseline: :mod:`mechmod.interventions.clean`); each selection is fine-tuned
with several seeds at one budget (:class:`~mechmod.interventions.finetune.FinetuneConfig`)
and the model is scored before and after on the conflict cases of
*held-out* groups (another dataset) with the run's scoring
(:func:`mechmod.scoring.score_cases`, logit lens). The held-out cases'
regions stay those of the model before fine-tuning (the same cases are
compared). Per model: target-following rate overall and in the ambiguous
region, the balance point (of the model's own dHrel), mean oscillations in
the ambiguous region, unimodal accuracies (a drop of more than
``ACCURACY_DROP`` is flagged). Boundary minus easy: after-rates with
percentile bootstrap intervals that resample seeds and held-out cases
together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mechmod import _io
from mechmod._gc import frozen_heap
from mechmod.data import load_cases
from mechmod.errors import MechmodError
from mechmod.following import balance_point, region
from mechmod.interventions.clean import CleanCases
from mechmod.interventions.finetune import FinetuneConfig, save_tuned, select_cases, train_on_cases, tuned
from mechmod.lenses import LogitLens, Unembed
from mechmod.scoring import ScoreOptions, score_cases
from mechmod.stats import bootstrap_mean_ci

#: a unimodal accuracy falling by more than this (2 points) after fine-tuning is flagged
ACCURACY_DROP = 0.02
#: the per-model numbers the before/after tables hold
METRICS = ("target_following", "target_following_ambiguous", "balance_point", "oscillations_ambiguous",
           "accuracy_vision", "accuracy_text")
#: per-case values the intervals resample (finetune_cases.parquet)
_CASE_VALUES = {"target_following": "follows_target", "target_following_ambiguous": "follows_target",
                "oscillations_ambiguous": "oscillations", "accuracy_vision": "correct_vision",
                "accuracy_text": "correct_text"}


@dataclass(frozen=True)
class FinetuneStudy:
    """``summary`` (finetune.json) and ``cases``: one row per model and
    held-out conflict case (model 'before' or SELECTION-seedK)."""

    summary: dict
    cases: pd.DataFrame


@frozen_heap()
def run_finetune(mllm, selection: CleanCases, heldout_dir: str | Path, cfg: FinetuneConfig, selections,
                 seeds, radius: float, out: str | Path, batch_size: int = 8, backend: str = "nnsight",
                 n_boot: int = 1000, progress: bool = True) -> FinetuneStudy:
    """Fine-tune one copy of ``mllm`` per selection and seed on the cases
    :func:`select_cases` draws from ``selection`` and score each on the
    held-out dataset; the trained parameters go to OUT/models/*.safetensors."""
    out = Path(out)
    heldout = load_cases(heldout_dir)
    heldout = heldout[heldout["control"] == "none"].reset_index(drop=True)
    if Path(heldout_dir).resolve() == Path(selection.dataset_dir).resolve():
        raise MechmodError(f"{heldout_dir}: the held-out dataset is the one the cases are selected from; "
                           "give another dataset (held-out groups)")
    options = ScoreOptions(batch_size=batch_size, backend=backend, attention=False)
    bar = tqdm(total=1 + len(selections) * len(seeds), desc="models", unit="model", disable=None if progress else True)
    before = _score(mllm, heldout, heldout_dir, options)
    bp0 = _balance(before)
    regions = (np.full(len(before), "n/a", dtype=object) if bp0 is None
               else np.asarray(region(before["dh_rel"].to_numpy(float), bp0, radius), dtype=object))
    bar.update(1)
    frames = [_case_frame(before, regions, cfg.target, "before", None, None)]
    models: dict[str, dict] = {"before": _metrics(frames[0], before)}
    runs = []
    for k, seed in enumerate(seeds):
        chosen = select_cases(selection.table, selection.balance, radius, selections, seed)
        for sel in selections:
            name = f"{sel}-seed{seed}"
            with tuned(mllm, cfg):
                losses = train_on_cases(mllm, chosen[sel], selection.dataset_dir, cfg, seed, progress,
                                        desc=f"train {name}")
                saved = save_tuned(mllm, cfg, out / "models" / f"{name}.safetensors")
                mllm.model.eval()
                rows = _score(mllm, heldout, heldout_dir, options)
            frame = _case_frame(rows, regions, cfg.target, name, sel, seed)
            frames.append(frame)
            after = _metrics(frame, rows)
            runs.append({"selection": sel, "seed": int(seed), "n_train": int(len(chosen[sel])),
                         "train_cases": chosen[sel]["case_id"].tolist(), "loss": losses,
                         "weights": str(saved.relative_to(out)), "before": models["before"], "after": after,
                         "flags": _flags(models["before"], after)})
            bar.update(1)
    bar.close()
    cases = pd.concat(frames, ignore_index=True)
    summary = {
        "target": cfg.target, "config": asdict(cfg), "radius": radius, "selections": list(selections),
        "seeds": [int(s) for s in seeds], "n_train": runs[0]["n_train"] if runs else 0,
        "selection_data": {"dataset": str(selection.dataset_dir), "n_conflict": int(len(selection.table)),
                           "balance_point": selection.balance},
        "heldout": {"dataset": str(heldout_dir), "n_conflict": int(len(heldout)),
                    "n_groups": int(heldout["group_id"].nunique()),
                    "n_ambiguous": int((regions == "ambiguous").sum()), "balance_point": bp0},
        "before": models["before"], "runs": runs,
        "by_selection": {s: _aggregate(cases, s, n_boot) for s in selections},
        "accuracy_drop": ACCURACY_DROP,
        "flags": [f"{r['selection']}-seed{r['seed']}: {f}" for r in runs for f in r["flags"]],
    }
    if set(selections) == {"boundary", "easy"}:
        summary["boundary_minus_easy"] = _difference(cases, n_boot)
    return FinetuneStudy(_io.jsonable(summary), cases)


def _score(mllm, cases: pd.DataFrame, dataset_dir, options: ScoreOptions) -> pd.DataFrame:
    ordered = cases.sort_values(["image_id", "case_id"], kind="stable")
    rows = score_cases(mllm, LogitLens(Unembed.from_model(mllm)), ordered, Path(dataset_dir), options)
    return rows.set_index("case_id").loc[list(cases["case_id"])].reset_index()


def _balance(rows: pd.DataFrame) -> float | None:
    ok = rows[rows["follow"].isin(["text", "vision"])]
    return balance_point(ok["dh_rel"].to_numpy(float), (ok["follow"] == "text").to_numpy(), n_boot=0).estimate


def _case_frame(rows: pd.DataFrame, regions, target: str, model: str, selection, seed) -> pd.DataFrame:
    """Per held-out case: region (the model before), follows_target (NaN
    where the answer is neither modality's), oscillations (NaN without
    votes), unimodal correctness."""
    follow = rows["follow"].to_numpy(object)
    decided = np.isin(follow, ["text", "vision"])
    osc = rows["oscillations"].to_numpy(float)
    return pd.DataFrame({
        "model": model, "selection": selection, "seed": seed, "case_id": rows["case_id"].to_numpy(), "region": regions,
        "follows_target": np.where(decided, (follow == target).astype(float), np.nan),
        "oscillations": np.where(osc >= 0, osc, np.nan),
        "correct_vision": (rows["y_v"] == rows["answer_vision"]).to_numpy(float),
        "correct_text": (rows["y_t"] == rows["answer_text"]).to_numpy(float),
        "dh_rel": rows["dh_rel"].to_numpy(float), "follow": follow})


def _column(frame: pd.DataFrame, metric: str) -> pd.Series:
    col = frame[_CASE_VALUES[metric]]
    return col[frame["region"] == "ambiguous"] if metric.endswith("_ambiguous") else col


def _metrics(frame: pd.DataFrame, rows: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {m: _mean(_column(frame, m)) for m in _CASE_VALUES}
    ok = rows[rows["follow"].isin(["text", "vision"])]
    bp = balance_point(ok["dh_rel"].to_numpy(float), (ok["follow"] == "text").to_numpy(), n_boot=200)
    out.update(balance_point=bp.estimate, balance_ci=bp.ci, n=int(len(frame)),
               n_ambiguous=int((frame["region"] == "ambiguous").sum()))
    return out


def _mean(x: pd.Series) -> float | None:
    x = x.dropna()
    return float(x.mean()) if len(x) else None


def _flags(before: dict, after: dict) -> list[str]:
    """A unimodal accuracy more than ACCURACY_DROP below its value before."""
    return [f"{m.replace('_', ' ')} fell {before[m]:.3f} -> {after[m]:.3f}" for m in ("accuracy_vision", "accuracy_text")
            if before[m] is not None and after[m] is not None and before[m] - after[m] > ACCURACY_DROP]


def _draw_means(cases: pd.DataFrame, selection: str, metric: str, n_boot: int, rng) -> np.ndarray:
    """[n_boot] bootstrap means of ``metric`` after fine-tuning with
    ``selection``: seeds and held-out cases resampled (one case draw shared
    by the seeds of a draw), NaN cases dropped."""
    sub = cases[cases["selection"] == selection]
    table = sub.pivot(index="case_id", columns="seed", values=_CASE_VALUES[metric])
    if metric.endswith("_ambiguous"):
        amb = cases[(cases["model"] == "before") & (cases["region"] == "ambiguous")]["case_id"]
        table = table.loc[table.index.isin(amb)]
    v = table.to_numpy(float)  # [cases, seeds]
    if v.size == 0:
        return np.full(n_boot, np.nan)
    return _boot(v, n_boot, rng)


def _boot(v: np.ndarray, n_boot: int, rng) -> np.ndarray:
    out = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, v.shape[0], v.shape[0])
        cols = rng.integers(0, v.shape[1], v.shape[1])
        out[b] = np.nanmean(v[np.ix_(rows, cols)]) if np.isfinite(v[np.ix_(rows, cols)]).any() else np.nan
    return out


def _interval(estimate: float | None, draws: np.ndarray) -> dict[str, Any]:
    d = draws[np.isfinite(draws)]
    ci = [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))] if len(d) else None
    return {"estimate": estimate, "ci": ci}


def _aggregate(cases: pd.DataFrame, selection: str, n_boot: int) -> dict[str, Any]:
    """Per metric: the mean over seeds before and after, the change, and the
    after mean's interval over seeds and cases."""
    before = cases[cases["model"] == "before"]
    sub = cases[cases["selection"] == selection]
    out = {}
    for m in _CASE_VALUES:
        b = _mean(_column(before, m))
        a = _mean(_column(sub, m))
        rng = np.random.default_rng(0)
        out[m] = {"before": b, "after": _interval(a, _draw_means(cases, selection, m, n_boot, rng)),
                  "change": None if a is None or b is None else a - b}
    return out


def _difference(cases: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    """Boundary minus easy after fine-tuning, per metric, with the interval
    of the difference (paired: a draw resamples the held-out cases and the
    seed indices once, for both selections)."""
    out = {}
    for m in _CASE_VALUES:
        est = [_mean(_column(cases[cases["selection"] == s], m)) for s in ("boundary", "easy")]
        d = [_draw_means(cases, s, m, n_boot, np.random.default_rng(1)) for s in ("boundary", "easy")]
        out[m] = _interval(None if None in est else est[0] - est[1], d[0] - d[1])
    return out
