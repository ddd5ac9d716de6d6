"""Smoke tests of the benchmarks (`python -m benchmarks.pipeline`,
`python -m benchmarks.patching`): one quick run each, its JSON line's
fields."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.real_model import ENV as REAL_CONFIGS

ROOT = Path(__file__).resolve().parents[1]


def _json_line(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three interpreters, two models built and saved: ~30 s on an idle 2-core machine
def test_pipeline_reports_speedup_bound_and_per_case_overhead():
    r = _json_line("benchmarks.pipeline", "--quick", "--shape", "overhead", "--threads", "1")
    assert r["shape"] == "overhead" and r["cases"] > 0
    for field in ("naive_cases_per_s", "runner_cases_per_s", "speedup"):
        assert r[field] > 0, field
    assert 0 <= r["fraction_of_bound"] < 1  # rounded to 3 places: ~1e-4 on this shape
    assert 0 < r["runner_forward_seconds"] and r["fraction_of_bound"] <= r["fraction_of_bound_forwards"]
    assert r["overhead_shape"] == "overhead" and r["overhead_cases"] == r["cases"]
    assert r["kernel_matmul_seconds"] > 0 and r["executed_matmul_gflop"] > 0  # the kernel accounting pass
    assert r["fraction_of_bound"] <= r["fraction_of_bound_kernels"]
    assert 0 < r["overhead_forward_seconds_per_case"] and 0 < r["overhead_seconds_per_case"] < 10


@pytest.mark.skipif(not os.environ.get(REAL_CONFIGS) or not Path(os.environ[REAL_CONFIGS]).is_dir(), reason=(
    f"{REAL_CONFIGS} is not set to a folder of the real checkpoints' tokenizers and configs "
    "(.ci/run sets it from ../shared/real-configs)"))
def test_pipeline_on_the_real_llava15_config_reports_mfu_memory_and_a_batch_profile():
    # the naive loop is skipped to keep this under ~30 s; the GPU run (benchmarks/gpu_check.sh) keeps it
    r = _json_line("benchmarks.pipeline", "--real-config", "llava-1.5-7b-hf", "--shrink", "--quick", "--skip-naive",
                   "--threads", "1")
    assert r["shape"] == "llava-1.5-7b-hf-shrunk" and r["cases"] > 0 and r["runner_cases_per_s"] > 0
    assert r["prefix_tokens"] > 576  # the real processor's 576 image tokens and the real chat template
    assert 0 < r["mfu"] < 1 and r["paper_scale_projected_minutes"] > 0
    assert r["memory_groups"] == [1, 2] and r["memory_cases"][1] == 2 * r["memory_cases"][0] == r["cases"]
    assert r["memory_flat"] == pytest.approx(r["runner_peak_rss_mb_by_groups"][1] / r["runner_peak_rss_mb_by_groups"][0],
                                             abs=0.01)
    assert r["profile_cases"] == r["batch_size"] and 0 < r["profile_host_op_seconds"] <= r["profile_wall_seconds"]
    ops = r["profile"]
    assert 0 < len(ops) <= 10 and {"op", "calls", "self_cpu_ms"} <= set(ops[0])
    assert [o["self_cpu_ms"] for o in ops] == sorted((o["self_cpu_ms"] for o in ops), reverse=True)


def test_patching_reports_both_throughputs_and_their_agreement():
    r = _json_line("benchmarks.patching", "--quick", "--threads", "1")
    assert r["patches"] > 0 and r["naive_patches_per_s"] > 0 and r["library_patches_per_s"] > 0
    assert abs(r["speedup"] - r["naive_seconds"] / r["library_seconds"]) <= 0.02  # from unrounded seconds
    assert 0 <= r["max_abs_diff"] <= 1e-3
    assert r["baseline_seconds"] > 0 and r["speedup_excluding_baseline"] > 0
    s = r["settings"]
    assert s["model"] == "organism" and s["directions"] == ["V->C", "T->C", "I->C"]
    assert s["position_groups"] == ["image", "description", "question", "last"] and s["layers"] > 0
    assert r["patches"] == s["pairs"] * s["layers"] * len(s["position_groups"])
    assert {"groups", "cases", "threads", "machine"} <= set(s)
