"""Boundary-case fine-tuning (mechmod.interventions.finetune, finetune_study,
`mechmod finetune`): the selection by hand, the study's before/after tables
on the organism, LoRA adapters on the tiny LLaVA, and the patch report's
region-split figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mechmod import report
from mechmod.answers import LabelSet
from mechmod.data import load_cases
from mechmod.errors import MechmodError
from mechmod.interventions.clean import CleanCases
from mechmod.interventions.finetune import (FinetuneConfig, label_loss, load_adapter, save_tuned, select_cases,
                                            train_on_cases, tuned)
from mechmod.interventions.finetune_study import METRICS, run_finetune
from mechmod.interventions.cases import Images, encode
from tests.run_helpers import color_dataset


def _frame(dh):
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(len(dh))], "dh_rel": dh})


def test_boundary_and_easy_selection_by_hand():
    dh = [-1.2, -0.6, -0.5, -0.1, 0.0, 0.4, 0.5, 0.9, 1.5, 2.0, np.nan]
    # balance 0, radius 0.5: boundary = -0.5, -0.1, 0.0, 0.4, 0.5 (5); easy = -1.2, -0.6, 0.9, 1.5, 2.0 (5)
    got = select_cases(_frame(dh), 0.0, 0.5, ("boundary", "easy"), seed=0)
    assert sorted(got["boundary"]["case_id"]) == ["c2", "c3", "c4", "c5", "c6"]
    assert sorted(got["easy"]["case_id"]) == ["c0", "c1", "c7", "c8", "c9"]
    # a narrower band: 3 boundary cases, the 7 easy ones drawn down to 3, by the seed
    a = select_cases(_frame(dh), 0.0, 0.45, ("boundary", "easy"), seed=1)
    b = select_cases(_frame(dh), 0.0, 0.45, ("boundary", "easy"), seed=1)
    assert sorted(a["boundary"]["case_id"]) == ["c3", "c4", "c5"]
    assert len(a["easy"]) == 3 and set(a["easy"]["case_id"]) <= {"c0", "c1", "c2", "c6", "c7", "c8", "c9"}
    assert a["easy"]["case_id"].tolist() == b["easy"]["case_id"].tolist()
    draws = {tuple(select_cases(_frame(dh), 0.0, 0.45, ("easy",), seed=s)["easy"]["case_id"]) for s in range(8)}
    assert len(draws) > 1
    with pytest.raises(MechmodError, match="no balance point"):
        select_cases(_frame(dh), None, 0.5, ("boundary",), seed=0)
    with pytest.raises(MechmodError, match="no boundary case"):
        select_cases(_frame(dh), 10.0, 0.5, ("boundary", "easy"), seed=0)


def test_label_loss_is_the_label_mass(mllm):
    labels = LabelSet(mllm.tokenizer, ["red", "blue"])
    logits = torch.randn(2, mllm.model.config.text_config.vocab_size)
    p = torch.softmax(logits, -1)
    want = -(torch.log(p[0, labels.logit_token_ids("red")].sum()) + torch.log(p[1, labels.logit_token_ids("blue")].sum())) / 2
    assert torch.allclose(label_loss(logits, labels, ["red", "blue"]), want, atol=1e-5)


@pytest.fixture(scope="module")
def organism():
    from mechmod.models import load_model

    return load_model("organism")


def test_finetune_on_the_organism_gives_before_and_after_tables(organism, tmp_path):
    ds, heldout = color_dataset(1), color_dataset(1, seed=1)
    conf = load_cases(ds).query("control == 'none'").reset_index(drop=True)
    table = conf.assign(dh_rel=np.linspace(-2, 2, len(conf)))  # a constructed run: balance 0
    clean = CleanCases(table, ds, 0.0, 0.5, "organism")
    before = {k: v.clone() for k, v in organism.model.state_dict().items()}
    cfg = FinetuneConfig(target="vision", steps=2, batch_size=2, lr=1e-3)
    study = run_finetune(organism, clean, heldout, cfg, ("boundary", "easy"), [0], 0.5, tmp_path, n_boot=20,
                         batch_size=16, progress=False)
    s = study.summary
    assert set(METRICS) <= set(s["before"])
    assert [(r["selection"], r["seed"]) for r in s["runs"]] == [("boundary", 0), ("easy", 0)]
    for r in s["runs"]:
        assert set(METRICS) <= set(r["after"]) and r["before"] == s["before"] and len(r["loss"]) == 2
        assert r["n_train"] == s["n_train"] > 0 and isinstance(r["flags"], list)
        assert set(load_file(str(tmp_path / r["weights"]))) == set(before)  # full fine-tuning: every weight
    trained = load_file(str(tmp_path / s["runs"][0]["weights"]))
    assert any(not torch.equal(trained[k], before[k]) for k in before), "the fine-tuning changed nothing"
    assert all(torch.equal(v, before[k]) for k, v in organism.model.state_dict().items()), "the model was not restored"
    for sel in ("boundary", "easy"):
        part = s["by_selection"][sel]["target_following"]
        assert {"before", "after", "change"} <= set(part) and len(part["after"]["ci"]) == 2
    assert set(s["boundary_minus_easy"]) == {"target_following", "target_following_ambiguous",
                                             "oscillations_ambiguous", "accuracy_vision", "accuracy_text"}
    assert len(study.cases) == (1 + len(s["runs"])) * s["heldout"]["n_conflict"]  # before + each model
    with pytest.raises(MechmodError, match="held-out"):
        run_finetune(organism, clean, ds, cfg, ("boundary",), [0], 0.5, tmp_path, progress=False)
    drawn = {p.figure.name: p for p in report.panels("finetune", s)}
    assert all(p.left_out == "" for name, p in drawn.items() if name != "balance_points")  # 6 held-out cases: no curve


def test_lora_adapters_are_saved_as_safetensors_and_reload(mllm, tmp_path):
    ds = color_dataset(1)
    cases = load_cases(ds).query("control == 'none'").reset_index(drop=True)
    enc = encode(mllm, Images(ds), cases["image_path"], cases["description"], cases["question"])

    def logits():
        with torch.no_grad():
            return mllm.model(**enc.inputs).logits[:, -1].clone()

    clean = logits()
    cfg = FinetuneConfig(target="text", steps=3, batch_size=2, lr=5e-2, method="lora", lora_rank=2)
    n_weights = len(mllm.model.state_dict())
    with tuned(mllm, cfg):
        losses = train_on_cases(mllm, cases, ds, cfg, seed=0, progress=False)
        path = save_tuned(mllm, cfg, tmp_path / "adapter.safetensors")
        mllm.model.eval()
        adapted = logits()
    assert len(losses) == 3 and not torch.allclose(adapted, clean)
    saved = load_file(str(path))
    assert saved and all("lora_" in k for k in saved)
    assert len(mllm.model.state_dict()) == n_weights and torch.equal(logits(), clean), "the adapter was not removed"
    handle = load_adapter(mllm, cfg, path)
    try:
        assert torch.allclose(logits(), adapted, atol=1e-5)
    finally:
        handle.unload()
    assert torch.equal(logits(), clean)


def test_patch_flip_rate_by_region_figure_renders():
    curve = {"direction": "V->C", "positions": "last", "component": "resid", "layers": [0, 1, 2],
             "flip_rate_by_region": {"ambiguous": {"n": 4, "flip_rate": [0.0, 0.5, 1.0]},
                                     "clear": {"n": 9, "flip_rate": [0.0, 0.1, 0.2]}}}
    (panel,) = report.panels("patch", {"curves": [curve]}, names=["flip_rate_by_region"])
    assert panel.left_out == "" and [list(t.y) for t in panel.plot.data] == [[0.0, 0.5, 1.0], [0.0, 0.1, 0.2]]
    (panel,) = report.panels("patch", {"curves": [dict(curve, flip_rate_by_region=None)]}, names=["flip_rate_by_region"])
    assert "no balance point" in panel.left_out


def test_cli_refuses_held_out_groups_that_are_the_selected_ones(tmp_path, capsys):
    from mechmod.cli import main

    assert main(["finetune", "--help"]) == 0
    assert "--heldout" in capsys.readouterr().out
    ds = color_dataset(1)
    assert main(["finetune", "--dataset", str(ds), "--heldout-seed", "0", "--target", "text", "--out", str(tmp_path)]) == 2
    assert "--heldout-seed 0 is the selection dataset's seed" in capsys.readouterr().err
    assert main(["finetune", "--run", str(tmp_path), "--groups", "2", "--target", "text", "--out", str(tmp_path)]) == 2
