"""Every probe in probes/ runs end to end on a tiny configuration (tiny
random LLaVA, one colour group, tiers dv 0 and 5) and writes its HTML and
JSON; the first probe makes the study run, the others reuse it (--run)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from tests.run_helpers import ROOT, color_dataset, tiny_model_dir

PROBES = ROOT / "probes"


def _probe(name: str):
    if str(PROBES) not in sys.path:
        sys.path.insert(0, str(PROBES))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(common args, run dir): the entropy probe runs the study itself."""
    out = tmp_path_factory.mktemp("probes")
    common = ["--model", str(tiny_model_dir()), "--dataset", str(color_dataset(1, (0, 5))), "--batch-size", "4"]
    doc = _probe("entropy_by_tier").main([*common, "--out", str(out / "entropy")])
    assert {r["tier"] for r in doc["entropy_by_tier"]["vision"]} == {0, 5}
    assert (out / "entropy" / "entropy_by_tier.html").is_file()
    run = out / "entropy" / "run"
    assert (run / "results.parquet").is_file()
    return common, run, out


def _check_outputs(out: Path, name: str) -> dict:
    page = (out / f"{name}.html").read_text()
    assert "plotly-graph-div" in page and "<script src=" not in page  # plotly.js embedded
    return json.loads((out / f"{name}.json").read_text())


def test_defaults_are_the_organism():
    cfg = _probe("following_curve").parse(_probe("following_curve").Config, [])
    assert cfg.model == "organism" and cfg.dataset is None and cfg.run is None and cfg.bins == 8
    cfg = _probe("logit_heatmap").parse(_probe("logit_heatmap").Config, ["--edges", "-2", "0", "2", "--groups", "2"])
    assert cfg.edges == (-2.0, 0.0, 2.0) and cfg.groups == 2


def test_following_curve(tiny_run, tmp_path):
    _, run, _ = tiny_run
    doc = _probe("following_curve").main(["--run", str(run), "--out", str(tmp_path), "--bins", "3", "--n-boot", "50"])
    saved = _check_outputs(tmp_path, "following_curve")
    assert saved["config"]["bins"] == 3 and "all" in doc["curves"] and "status" in doc["balance"]["all"]


def test_oscillation(tiny_run, tmp_path):
    from mechmod.errors import MechmodError

    _, run, _ = tiny_run
    probe = _probe("oscillation")
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("balance_point") is None:  # a random model rarely has one: the probe says so
        with pytest.raises(MechmodError, match="--balance"):
            probe.main(["--run", str(run), "--out", str(tmp_path)])
    doc = probe.main(["--run", str(run), "--out", str(tmp_path), "--balance", "0", "--n-boot", "50"])
    _check_outputs(tmp_path, "oscillation")
    assert {"ambiguous", "clear", "control_text_irrelevant"} <= set(doc["oscillations"])
    for k, rates in doc["switch_rates"].items():  # where the switches happen adds up to how many there are
        assert rates["n"] == doc["oscillations"][k]["n"]
        if rates["n"]:
            assert sum(rates["rate"]) == pytest.approx(doc["oscillations"][k]["mean"], abs=1e-12)


def test_logit_heatmap(tiny_run, tmp_path):
    _, run, _ = tiny_run
    doc = _probe("logit_heatmap").main(["--run", str(run), "--out", str(tmp_path), "--edges", "-2", "0", "2"])
    _check_outputs(tmp_path, "logit_heatmap")
    assert len(doc["heatmap"]["n"]) == 2 and sum(doc["heatmap"]["n"]) == 6  # 2 images x 3 descriptions
    assert doc["heatmap"]["layers"] == [0, 1]  # the 2 decoder layers


def test_case_study(tiny_run, tmp_path):
    _, run, _ = tiny_run
    doc = _probe("case_study").main(["--run", str(run), "--out", str(tmp_path)])
    _check_outputs(tmp_path, "case_study")
    assert [c["dt"] for c in doc["case"]["cases"]] == [0, 1, 2]


def test_lens_fidelity(tiny_run, tmp_path):
    common, _, _ = tiny_run
    doc = _probe("lens_fidelity").main([*common, "--out", str(tmp_path), "--steps", "3"])
    _check_outputs(tmp_path, "lens_fidelity")
    assert doc["split"] == "prompt" and len(doc["heldout"]["kl_logit"]) == 3
    assert (tmp_path / "lens" / "lens.safetensors").is_file()


def _label_by_hand(monkeypatch, module, follow: bool):
    """The random tiny model answers 'other': give the clean runs the true
    answers (and, for steering, alternate text / vision following)."""
    import numpy as np

    real = module.baseline

    def labelled(*a, **k):
        b = real(*a, **k)
        t = b.table
        t["y_v"], t["y_t"] = t["answer_vision"], t["answer_text"]
        if follow:
            t["follow"] = np.where(np.arange(len(t)) % 2 == 0, "text", "vision")
        else:
            t["y_m"], t["y_ctrl"] = t["answer_text"], t["answer_vision"]
        return b

    monkeypatch.setattr(module, "baseline", labelled)


def test_intervention_probes_default_to_the_studies():
    from dataclasses import fields

    from mechmod.interventions.patch_study import PatchStudyConfig
    from mechmod.interventions.steering import SteerStudyConfig

    for probe, study in (("patching", PatchStudyConfig), ("steering", SteerStudyConfig)):
        cfg = _probe(probe).parse(_probe(probe).Config, [])
        assert cfg.model == "organism" and study(**{f.name: getattr(cfg, f.name) for f in fields(study)}) == study()
    cfg = _probe("steering").parse(_probe("steering").Config, ["--layers", "0", "2", "--alphas", "-1", "1", "--no-within-group"])
    assert cfg.layers == (0, 2) and cfg.alphas == (-1.0, 1.0) and cfg.within_group is False


def test_patching(tmp_path, monkeypatch):
    from mechmod.interventions import patch_study

    _label_by_hand(monkeypatch, patch_study, follow=False)
    args = ["--model", str(tiny_model_dir()), "--dataset", str(color_dataset(1, (0,))), "--out", str(tmp_path)]
    doc = _probe("patching").main([*args, "--directions", "V->C", "I->C", "--positions", "question", "last",
                                   "--knockouts", "zero"])
    saved = _check_outputs(tmp_path, "patching")
    assert saved["config"]["knockouts"] == ["zero"] and saved["study_config"]["directions"] == ["V->C", "I->C"]
    assert doc["n_pairs"] == {"V->C": 3, "I->C": 3} and len(doc["curves"]) == 4
    last = [c for c in doc["curves"] if c["positions"] == "last"]
    assert all(abs(c["restoration"][-1] - 1) < 1e-3 for c in last)  # last layer, last token: the source's logits
    assert set(doc["units"]) == {"patch V->C", "patch I->C", "knockout zero"}


def test_steering(tmp_path, monkeypatch):
    from mechmod.errors import MechmodError
    from mechmod.interventions import steering

    args = ["--model", str(tiny_model_dir()), "--dataset", str(color_dataset(2, (0,))), "--out", str(tmp_path),
            "--n-boot", "0"]
    probe = _probe("steering")
    with pytest.raises(MechmodError, match="layers"):
        probe.main([*args, "--layers", "9"])
    _label_by_hand(monkeypatch, steering, follow=True)
    doc = probe.main([*args, "--layers", "1", "--alphas", "2"])
    _check_outputs(tmp_path, "steering")
    assert doc["alphas"] == [0.0, 2.0] and set(doc["layers"]) == {"1"} and doc["n_heldout"] == 3
    assert [p["alpha"] for p in doc["layers"]["1"]["per_alpha"]] == [0.0, 2.0]


def test_choice_probes(tmp_path):
    from mechmod.data import generate_color

    ds = generate_color(tmp_path / "ds", groups=2, dv=[0], controls=False, consistent=True, progress=False)
    out = tmp_path / "out"
    doc = _probe("choice_probes").main(["--model", str(tiny_model_dir()), "--dataset", str(ds), "--out", str(out),
                                        "--n-boot", "20", "--batch-size", "12"])
    saved = _check_outputs(out, "choice_probes")
    assert saved["config"]["l2"] == 1.0 and doc["n_consistent"] == 6 and doc["n_cases"] == 6
    assert doc["targets"]["conflict"]["layer"] == [-1, 0, 1] and doc["text_dominance"]["per_token"] is True


def test_planted_preference(tmp_path):
    """Two models on one dataset: measured and oracle balance points side by
    side, the order verdict, W read from each organism.json, and refusals
    when weights do not match models or a model records none."""
    import json
    import shutil

    from mechmod.errors import MechmodError

    models = []
    for name, w in (("a", 0.5), ("b", 2.0)):
        models.append(shutil.copytree(tiny_model_dir(), tmp_path / name))
        (models[-1] / "organism.json").write_text(json.dumps({"text_weight": w}))
    probe = _probe("planted_preference")
    args = ["--models", *map(str, models), "--dataset", str(color_dataset(1, (0, 5))), "--batch-size", "4"]
    doc = probe.main([*args, "--out", str(tmp_path / "out")])
    saved = _check_outputs(tmp_path / "out", "planted_preference")
    assert [r["text_weight"] for r in saved["rows"]] == [0.5, 2.0]
    assert {"balance_point", "balance_ci", "oracle_balance_point", "oracle_ci"} <= set(doc["rows"][0])
    assert isinstance(doc["ordered"], bool) and len(doc["comparison"]["runs"]) == 2
    with pytest.raises(MechmodError, match="no organism.json records"):
        probe.main(["--models", str(tiny_model_dir()), str(models[1]), "--out", str(tmp_path / "none")])
    with pytest.raises(MechmodError, match="one planted weight per model"):
        probe.main([*args, "--weights", "1", "--out", str(tmp_path / "bad")])
