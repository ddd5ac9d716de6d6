"""Crash-safe resume: `mechmod run` killed with SIGKILL at seeded random
points (while starting, while scoring, while writing) and resumed each
time ends with the rows of an uninterrupted run: no duplicate, no lost
row, no unreadable file; temporary files a kill leaves are ignored, then
cleaned."""

import json
import os
import random
import signal
import time

import pyarrow.parquet as pq
import pytest

from mechmod.rundir import RunDir
from tests.run_helpers import assert_same_rows, cli_args, color_dataset, reference_results, run_in_process, start_cli

SEED = 9
CHUNK = 2  # 18 cases (2 images of 9) -> 10 parts


def _parts(out):
    return RunDir(out).part_files()


def _wait_for_parts(proc, out, n, timeout=180.0) -> float:
    """Until ``out`` holds ``n`` parts (or the process ended); returns the
    seconds the last part took (the time one chunk takes)."""
    deadline = time.monotonic() + timeout
    seen, stamps = len(_parts(out)), []
    while seen < n and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no part {n} after {timeout} s")
        time.sleep(0.005)
        now = len(_parts(out))
        if now > seen:
            seen = now
            stamps.append(time.monotonic())
    return stamps[-1] - stamps[-2] if len(stamps) >= 2 else 0.3


def _kill(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _check_consistent(out):
    """Whatever a kill left: every visible file readable, no case twice."""
    if RunDir(out).run_file.is_file():
        json.loads(RunDir(out).run_file.read_text())
    ids = []
    for part in _parts(out):
        ids += pq.read_table(part).column("case_id").to_pylist()
    assert len(ids) == len(set(ids)), "a case was written twice"
    return set(ids)


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    rng = random.Random(SEED)
    ds = color_dataset(groups=1)
    whole = reference_results(groups=1)
    out, log = tmp_path / "run", tmp_path / "log.txt"
    args = cli_args(ds, out, "--batch-size", "4", "--chunk-size", str(CHUNK))

    # 1. while starting (importing, loading the model, opening the run)
    proc = start_cli(args, log)
    time.sleep(rng.uniform(0.5, 3.0))
    _kill(proc)
    done = _check_consistent(out)
    # 2. and 3. resumed, killed after 1-2 more parts, at a random moment of the next chunk
    for _ in range(2):
        before = len(_parts(out))
        proc = start_cli(args, log)
        chunk_s = _wait_for_parts(proc, out, before + 2)
        time.sleep(rng.uniform(0.0, 0.9) * chunk_s)  # somewhere in the next chunk: scoring or writing
        _kill(proc)
        now = _check_consistent(out)
        assert done <= now and not RunDir(out).results.exists()
        done = now
    assert 0 < len(done) < len(whole), "the kills should land mid-run"

    # what a kill inside a write leaves: half-written temporary files
    half = _parts(out)[0].read_bytes()[:100]
    stale = [out / "parts" / ".part-00099.parquet.k1ll3d.tmp", out / ".results.parquet.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(half)
    assert RunDir(out).done_case_ids() == done  # ignored by readers

    resumed = run_in_process(ds, out, batch_size=4, chunk_size=CHUNK)
    assert_same_rows(resumed, whole)
    assert len(_check_consistent(out)) == len(whole)  # every case in exactly one part
    assert not any(p.exists() for p in stale), "stale temporary files were not cleaned"
    assert "Traceback" not in log.read_text(errors="replace")


def test_an_unreadable_part_is_set_aside_and_its_cases_scored_again(tmp_path):
    ds = color_dataset(groups=1)
    whole = reference_results(groups=1)
    out = tmp_path / "run"
    run_in_process(ds, out, batch_size=4, chunk_size=9)
    first = RunDir(out).part_files()[0]
    first.write_bytes(first.read_bytes()[:50])  # damaged after the fact (disk, copy)
    RunDir(out).results.unlink()
    with pytest.warns(UserWarning, match="unreadable"):
        resumed = run_in_process(ds, out, batch_size=4, chunk_size=9)
    assert_same_rows(resumed, whole)
    assert first.with_name(first.name + ".unreadable").is_file()
