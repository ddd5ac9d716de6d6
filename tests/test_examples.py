"""The API walkthroughs in examples/ run (on the tiny random LLaVA) and stay
short enough to read: at most 60 lines each."""

from __future__ import annotations

import runpy
from itertools import groupby

import pytest

from mechmod.data import generate_color, load_cases
from mechmod.scoring import score
from tests.run_helpers import ROOT, tiny_model_dir

EXAMPLES = ROOT / "examples"


def _main(name: str):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")["main"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_short(path):
    assert len(path.read_text().splitlines()) <= 60


def test_score_one_case(mllm, tmp_path):
    out = _main("score_one_case")(["--model", str(tiny_model_dir())])
    y, h = out["answers"], out["entropy"]
    assert set(y) == {"vision", "text", "multimodal"}
    assert out["dh_rel"] == pytest.approx(2 * (h["text"] - h["vision"]) / (h["text"] + h["vision"]), abs=1e-6)
    by_answer = {y["text"]: "text", y["vision"]: "vision"} if y["text"] != y["vision"] else {}
    assert out["follow"] == by_answer.get(y["multimodal"], "other")
    # the same case through mechmod.score (batched, prefix-cached) gives the same entropies
    ds = generate_color(tmp_path / "ds", groups=1, dv=[6], dt=[0], controls=False, progress=False)
    row = score(mllm, load_cases(ds).iloc[:1], ds).iloc[0]
    assert [row.h_v, row.h_t, row.h_m] == pytest.approx([h["vision"], h["text"], h["multimodal"]], abs=1e-4)


def test_trace_trajectory():
    out = _main("trace_trajectory")(["--model", str(tiny_model_dir())])
    assert len(out["votes"]) == 2 and set(out["votes"]) <= {"vision", "text", "other"}  # the 2 decoder layers
    runs = [vote for vote, _ in groupby(v for v in out["votes"] if v != "other")]
    assert out["oscillations"] == max(len(runs) - 1, 0)


def test_train_tuned_lens(tmp_path):
    out = _main("train_tuned_lens")(["--model", str(tiny_model_dir()), "--steps", "3", "--out", str(tmp_path / "lens")])
    assert len(out["kl_tuned"]) == 3 and (tmp_path / "lens" / "lens.safetensors").is_file()


def test_compare_two_models(tmp_path):
    tiny = str(tiny_model_dir())
    out = tmp_path / "cmp.html"
    comparison = _main("compare_two_models")(["--models", tiny, tiny, "--dtypes", "float32", "float32",
                                              "--groups", "1", "--out", str(out)])
    assert len(comparison["runs"]) == 2 and len(comparison["pairs"]) == 1
    assert out.is_file() and "plotly-graph-div" in out.read_text()


def test_patch_one_layer():
    out = _main("patch_one_layer")(["--model", str(tiny_model_dir()), "--layer", "1"])  # the tiny model's last layer
    assert set(out["answers"]) == {"conflict", "vision-only", "patched"} and isinstance(out["flipped"], bool)
    # patching the last token after the last layer reproduces the source's logits
    assert out["ld"]["patched"] == pytest.approx(out["ld"]["vision-only"], abs=1e-4)
    assert out["answers"]["patched"] == out["answers"]["vision-only"]


def test_probe_choice():
    out = _main("probe_choice")(["--model", str(tiny_model_dir()), "--groups", "2"])
    assert out["layers"] == [-1, 0, 1] and out["n_cases"] == 24  # 2 groups x 2 image x 3 text tiers x (conflict, consistent)
    assert all(0 <= a <= 1 for a in out["accuracy"])
