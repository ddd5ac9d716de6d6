"""Fault handling around a run: scored rows whose numbers are not finite
become failed cases, and the leftovers of a killed run are cleared.

* Non-finite outputs: NaN or inf logits (fp16 overflow, a broken model)
  give NaN entropies and probabilities without raising. :func:`flag_nonfinite`
  turns every such row into a failed case of kind ``nonfinite`` naming the
  fields concerned, so the summary never averages a NaN and counts them in
  ``failures_by_kind``.
* Leftovers: every file is written to a hidden temporary file and renamed
  into place (:mod:`mechmod._io`), so a kill (even SIGKILL) leaves at most a
  ``.NAME.XXXX.tmp`` file that no reader ever globs; :func:`clean_stale_temps`
  removes them on resume.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

#: kind of a case whose model outputs are not finite (the 'error' prefix)
NONFINITE = "nonfinite"
_SCALARS = ("h_v", "h_t", "h_m", "hl_v", "hl_t", "hl_m", "dh_rel")
_VECTORS = ("p_v", "p_t", "p_m", "layer_logit_diff")


def _finite(value) -> bool:
    if value is None:
        return True
    try:
        if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
            return all(math.isfinite(float(x)) for x in value)
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def nonfinite_fields(row) -> list[str]:
    """The fields of a scored row (a mapping) holding NaN or inf."""
    return [c for c in (*_SCALARS, *_VECTORS) if c in row and not _finite(row[c])]


def flag_nonfinite(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with every 'ok' row holding a non-finite value replaced by a
    failed row ``nonfinite: ...`` (the other rows unchanged)."""
    from mechmod.runner import _failed

    if rows.empty or "status" not in rows:
        return rows
    out = []
    changed = False
    for row in rows.to_dict("records"):
        bad = nonfinite_fields(row) if row.get("status") == "ok" else []
        if bad:
            changed = True
            row = _failed(SimpleNamespace(**row), NONFINITE,
                          f"non-finite values in {', '.join(bad)} (NaN/inf logits, e.g. a float16 overflow); "
                          "re-run with --dtype float32 or bfloat16")
        out.append(row)
    return pd.DataFrame(out, columns=rows.columns) if changed else rows


def clean_stale_temps(directory: str | Path, prefix: str = "") -> list[Path]:
    """Remove the temporary files ``.{prefix}*.tmp`` a killed writer left in
    ``directory``; returns those removed. Only call it where no other process
    is writing files with that prefix."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.glob(f".{prefix}*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed
