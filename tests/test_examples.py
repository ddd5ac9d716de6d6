"""The API walkthroughs in examples/ run (on the tiny random LLaVA) and stay
short enough to read: at most 60 lines each."""

from __future__ import annotations

import runpy

import pytest

from tests.run_helpers import ROOT, tiny_model_dir

EXAMPLES = ROOT / "examples"


def _main(name: str):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")["main"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_short(path):
    assert len(path.read_text().splitlines()) <= 60


def test_score_one_case():
    out = _main("score_one_case")(["--model", str(tiny_model_dir())])
    assert set(out["answers"]) == {"vision", "text", "multimodal"}
    assert -2 <= out["dh_rel"] <= 2 and out["follow"] in ("text", "vision", "other")


def test_trace_trajectory():
    out = _main("trace_trajectory")(["--model", str(tiny_model_dir())])
    assert len(out["votes"]) == 3 and out["oscillations"] >= 0  # embeddings + 2 layers


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
