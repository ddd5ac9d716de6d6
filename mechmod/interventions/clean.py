"""The conflict cases a study of where the choice is made runs on, with
their clean answers (y_v, y_t, y_m, follow), dHrel and region: 'ambiguous'
within the radius of the balance point, 'clear' outside it, 'n/a' where
the run has no balance point. Read from a run directory (`mechmod run`:
its results, summary and dataset) or computed here on a dataset
(:func:`mechmod.interventions.cases.baseline`, then the balance point)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mechmod.data import load_cases
from mechmod.errors import MechmodError
from mechmod.following import balance_point, region
from mechmod.answers import LabelSet
from mechmod.interventions.cases import Images, baseline, batches, encode
from mechmod.rundir import RunDir

#: the region of a case when the run has no balance point
NO_REGION = "n/a"
_CLEAN = ["y_v", "y_t", "y_m", "dh_rel", "follow", "region"]


@dataclass(frozen=True)
class CleanCases:
    """Conflict cases (``control == 'none'``): the dataset's columns plus
    y_v, y_t, y_m, dh_rel, follow and region; where they come from."""

    table: pd.DataFrame
    dataset_dir: Path
    balance: float | None
    radius: float
    model: str | None = None
    dtype: str | None = None
    progress: str | None = None  # label of a progress bar over the cases as they are batched (None: no bar)

    def batches(self, mllm, batch_size: int):
        """Per batch of cases sharing a label set: (labels, rows, the rows'
        encoded multimodal prompts)."""
        images = Images(self.dataset_dir)
        bar = tqdm(total=len(self.table), desc=self.progress, unit="case",
                   disable=True if self.progress is None else None)  # None: off unless stderr is a terminal
        for cand, sub in self.table.groupby(self.table["candidates"].map(tuple), sort=False):
            labels = LabelSet(mllm.tokenizer, list(cand))
            for b in batches(sub, batch_size):
                yield labels, b, encode(mllm, images, b["image_path"], b["description"], b["question"])
                bar.update(len(b))
        bar.close()


def from_run(run_dir: str | Path) -> CleanCases:
    """The scored conflict cases of a finished run (failed cases left out)."""
    run = RunDir(run_dir)
    config, summary, results = run.config(), run.read_summary(), run.read_results()
    if not config.get("dataset"):
        raise MechmodError(f"{run.run_file}: names no dataset; give a run directory written by `mechmod run`")
    dataset = Path(config["dataset"])
    if not (dataset / "manifest.json").is_file():
        raise MechmodError(f"{run.path}: its dataset {dataset} is gone (no manifest.json); give --dataset DIR instead")
    missing = [c for c in _CLEAN + ["case_id", "status"] if c not in results.columns]
    if missing:
        raise MechmodError(f"{run.results}: lacks column(s) {missing}; re-run `mechmod summarize {run.path}`")
    ok = results[results["status"] == "ok"][["case_id"] + _CLEAN]
    cases = load_cases(dataset)
    table = cases[cases["control"] == "none"].merge(ok, on="case_id", how="inner")
    if table.empty:
        raise MechmodError(f"{run.path}: no scored conflict case (control == 'none') in its results")
    table["region"] = table["region"].replace("", NO_REGION)
    return CleanCases(table.reset_index(drop=True), dataset, summary.get("balance_point"),
                      float(summary.get("radius", 0.5)), config.get("model"), config.get("dtype"))


def from_baseline(mllm, dataset_dir: str | Path, cases: pd.DataFrame | None = None, batch_size: int = 8,
                  backend: str = "nnsight", radius: float = 0.5, n_boot: int = 200, seed: int = 0) -> CleanCases:
    """Clean runs of a dataset's conflict cases and their balance point."""
    cases = load_cases(dataset_dir) if cases is None else cases
    conf = cases[cases["control"] == "none"]
    if conf.empty:
        raise MechmodError(f"{dataset_dir}: no conflict case (control == 'none')")
    table = baseline(mllm, dataset_dir, conf, batch_size, backend).table
    decided = table["follow"].isin(["text", "vision"]).to_numpy()
    bp = balance_point(table["dh_rel"].to_numpy(float)[decided], (table["follow"] == "text").to_numpy()[decided],
                       n_boot=n_boot, seed=seed)
    table["region"] = (np.full(len(table), NO_REGION, dtype=object) if bp.estimate is None
                       else region(table["dh_rel"].to_numpy(float), bp.estimate, radius))
    return CleanCases(table, Path(dataset_dir), bp.estimate, float(radius), mllm.name)
