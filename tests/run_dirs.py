"""Shared by the run-directory and user-mistake tests: a finished run built
once per session from simulated results (no model needed; copy it before
changing it), and the check that a command ended in one error line."""

from __future__ import annotations

import atexit
import functools
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

_TMP = Path(tempfile.mkdtemp(prefix="mechmod-rundirs-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

#: stderr lines that may come before the one error line
ASIDES = ("warning: ", "note: ", "left out: ", "generating a colour dataset")
_PROGRESS = re.compile(r"\d+/\d+ \[")  # a tqdm bar (e.g. transformers' "Loading weights")


def simulated_results(n_images: int = 8, seed: int = 0) -> pd.DataFrame:
    """Every documented results column, for conflict cases and both controls
    of ``n_images`` images, following the text by a known curve."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        dv, h_v = i % 14, 0.1 + 0.12 * (i % 14) + rng.uniform(0, 0.1)
        for dt in range(3):
            for control in ("none", "text_irrelevant", "image_irrelevant"):
                h_t = 0.05 + 0.6 * dt + rng.uniform(0, 0.3)
                text = rng.random() < 1 / (1 + np.exp(4 * (2 * (h_t - h_v) / (h_t + h_v) + 0.3)))
                p = [0.8, 0.2] if text else [0.3, 0.7]
                rows.append(dict(
                    case_id=f"c{i:03d}-{dt}-{control}", group_id=f"g{i // 4}", task="color", image_id=f"img{i:03d}",
                    dv=dv, dt=dt, control=control, answer_vision="red", answer_text="blue", candidates=["blue", "red"],
                    y_v="red", y_t="blue", y_m="blue" if text else "red", h_v=h_v, h_t=h_t, h_m=0.4,
                    hl_v=h_v / 2, hl_t=h_t / 2, hl_m=0.2, p_v=[0.1, 0.9], p_t=[0.9, 0.1], p_m=p,
                    dh_rel=2 * (h_t - h_v) / (h_t + h_v), dh_rel_degenerate=False, follow="text" if text else "vision",
                    layer_votes=["vision", "text", "text"], layer_logit_diff=list(rng.normal(0, 1, 3)),
                    oscillations=int(rng.integers(0, 3)), commit_layer=int(rng.integers(0, 3)), last_sign_change=1,
                    attn_image=list(rng.uniform(0, 0.5, 2)), attn_description=list(rng.uniform(0, 0.3, 2)),
                    attn_question=list(rng.uniform(0, 0.2, 2)), status="ok", error="",
                ))
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=None)
def _finished_run() -> Path:
    from mechmod.rundir import RunDir
    from mechmod.runner import finalize

    run = RunDir(_TMP / "finished")
    run.create()
    results = simulated_results()
    run.run_file.write_text(json.dumps({"model": "simulated", "lens": "logit", "radius": 0.5,
                                        "n_cases": len(results)}))
    run.parts_dir.mkdir()
    run.write_part(0, results.iloc[: len(results) // 2])
    run.write_part(1, results.iloc[len(results) // 2:])
    return finalize(run.path)


def finished_run(dst: Path) -> Path:
    """A copy of a finished run directory (run.json, parts, results, summary, report)."""
    return Path(shutil.copytree(_finished_run(), dst, ignore=shutil.ignore_patterns("run.lock")))


def error_line(err: str) -> str:
    """The one error line of a command's stderr (asides such as warnings
    allowed before it; no traceback)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(ASIDES) and not _PROGRESS.search(ln)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
