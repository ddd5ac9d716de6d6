"""The session's builds (each built once, on first use): the tiny model of
every family and small colour datasets, saved under one temporary directory
(tests/conftest.py's fixtures read them); a `mechmod run` in process or as a
subprocess, and the comparison of two results tables as sets of rows."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mechmod.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="mechmod-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

EXACT = ["case_id", "status", "y_v", "y_t", "y_m", "follow", "oscillations", "commit_layer", "layer_votes"]
CLOSE = ["h_v", "h_t", "h_m", "dh_rel", "layer_logit_diff", "p_m"]


@functools.lru_cache(maxsize=None)
def tiny_model_dir() -> Path:
    """The tiny LLaVA (tests/tiny_llava.py), saved once (read-only: copy it before damaging it)."""
    from tests.tiny_llava import build_tiny_llava

    return build_tiny_llava(_TMP / "tiny_llava")


@functools.lru_cache(maxsize=None)
def tiny_family_dir(family: str) -> Path:
    """The tiny model of ``family`` (tests/tiny_families.py), saved once (read-only)."""
    from tests.tiny_families import build_tiny

    return tiny_model_dir() if family == "llava" else build_tiny(family, _TMP / f"tiny_{family}")


def color_dataset(groups: int = 1, dv: tuple[int, ...] = (0, 5), seed: int = 0) -> Path:
    """A generated colour dataset (read-only: copy it before damaging it)."""
    return _color_dataset(int(groups), tuple(dv), int(seed))  # one cache key however it is called


@functools.lru_cache(maxsize=None)
def _color_dataset(groups: int, dv: tuple[int, ...], seed: int) -> Path:
    from mechmod.data import generate_color

    return generate_color(_TMP / f"color-g{groups}-dv{'-'.join(map(str, dv))}-s{seed}", groups=groups, seed=seed,
                          dv=list(dv), progress=False)


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@functools.lru_cache(maxsize=None)
def tiny_mllm():
    """One tiny LLaVA instance for the run tests' in-process runs; never boot
    the TransformerLens bridge on it (tests/conftest.py checks)."""
    from mechmod.models import load_model

    return load_model(str(tiny_model_dir()))


def run_in_process(ds: Path, out: Path, batch_size: int = 4, chunk_size: int | None = None, mllm=None) -> pd.DataFrame:
    """A single-process run (the reference) -> results.parquet as a DataFrame."""
    from mechmod import runner
    from mechmod.lenses import LogitLens, Unembed

    mllm = mllm or tiny_mllm()
    cfg = run_config(ds, batch_size=batch_size)
    runner.run_study(mllm, LogitLens(Unembed.from_model(mllm)), ds, out, cfg,
                     chunk_size=chunk_size, progress=False)
    return pd.read_parquet(RunDir(out).results)


@functools.lru_cache(maxsize=None)
def reference_results(groups: int = 1) -> pd.DataFrame:
    """An uninterrupted single-process run of ``color_dataset(groups)`` (batch size 4)."""
    return run_in_process(color_dataset(groups=groups), _TMP / f"reference-g{groups}", batch_size=4)


def run_config(ds: Path, **kw):
    """The RunConfig `mechmod run --model TINY --dataset DS` builds."""
    from mechmod.rundir import RunConfig
    from mechmod.runner import dataset_fingerprint

    return RunConfig(model=str(tiny_model_dir()), dataset=str(Path(ds).resolve()),
                     dataset_sha256=dataset_fingerprint(ds), **kw)


def cli_args(ds: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(tiny_model_dir()), "--dataset", str(ds), "--out", str(out), "--quiet", *extra]


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m mechmod ARGS` in the background, output to ``log``."""
    fh = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "mechmod", *args], cwd=ROOT, env=child_env(),
                                stdout=fh, stderr=subprocess.STDOUT)
    finally:
        fh.close()


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-5) -> None:
    """Equal as sets of rows: same case ids, no duplicate, the same answers
    and labels, numbers within ``atol``."""
    assert a["case_id"].is_unique and b["case_id"].is_unique
    assert set(a["case_id"]) == set(b["case_id"])
    a = a.sort_values("case_id").reset_index(drop=True)
    b = b.sort_values("case_id").reset_index(drop=True)
    for c in EXACT:
        if c in a and c in b:
            assert a[c].map(_hashable).tolist() == b[c].map(_hashable).tolist(), c
    for c in CLOSE:
        if c in a and c in b:
            x = np.concatenate([np.asarray(v, float).ravel() for v in a[c]]) if len(a) else np.zeros(0)
            y = np.concatenate([np.asarray(v, float).ravel() for v in b[c]]) if len(b) else np.zeros(0)
            assert x.shape == y.shape, c
            np.testing.assert_allclose(x, y, atol=atol, rtol=0, equal_nan=True, err_msg=c)


def _hashable(v):
    if isinstance(v, (list, tuple, np.ndarray)):
        return tuple(_hashable(x) for x in v)
    return v
