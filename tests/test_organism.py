"""The shipped model organisms: offline loading by short name, one base
behind the three, correct easy answers, a smoke training run, the behaviour
card reproduced on a small fresh sample and (slow) its targets and the
planted order on fresh data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mechmod.data.color")

from mechmod.models.organism import CARD_JSON, CHECKPOINT_DIR, CHECKPOINTS, VARIANTS, checkpoint_dir  # noqa: E402
from mechmod.models.organism.model import IMAGE_TOKEN, prompt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def organism():
    from mechmod.organism.evaluate import Organism

    return Organism(CHECKPOINT_DIR)


@pytest.fixture(scope="module")
def card():
    return json.loads(CARD_JSON.read_text())


def test_checkpoint_files_and_size():
    from safetensors import safe_open

    for name in VARIANTS:
        files = {p.name for p in checkpoint_dir(name).iterdir()}
        for f in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
                  "organism.json", "training_log.json", "card.json", "card.txt"):
            assert f in files, (name, f)
        with safe_open(checkpoint_dir(name) / "model.safetensors", "pt") as st:
            assert {str(st.get_slice(k).get_dtype()) for k in st.keys()} == {"BF16"}, name
    total = sum(p.stat().st_size for p in CHECKPOINTS.rglob("*") if p.is_file())
    assert total <= 60e6, total


def test_short_names_load_one_base_three_weights():
    """Each short name loads; the three share one base and one fine-tuning
    recipe and differ by the planted text weight W only."""
    from mechmod.models import builtin_models, load_model

    infos = {}
    for name, w in VARIANTS.items():
        assert builtin_models()[name] == str(checkpoint_dir(name))
        m = load_model(name)
        assert m.name == name and m.n_layers >= 8
        infos[name] = json.loads((checkpoint_dir(name) / "organism.json").read_text())
        assert infos[name]["text_weight"] == w
    same = ("base", "seed", "steps", "lr", "warmup", "stream", "config")
    ref = infos["organism"]
    for info in infos.values():
        assert {k: info[k] for k in same} == {k: ref[k] for k in same}


def test_loads_offline_with_auto_classes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(CHECKPOINT_DIR, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(CHECKPOINT_DIR, local_files_only=True)
    tok = proc.tokenizer
    assert IMAGE_TOKEN in tok.all_special_tokens
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
    assert tok.padding_side == "left"
    for w in ("USER", "ASSISTANT", "red", "blue"):
        assert tok.convert_tokens_to_ids(w) != tok.unk_token_id
    from PIL import Image

    enc = proc(images=[Image.new("RGB", (800, 600), "white")], text=[prompt("What color is the circle?", True)],
               return_tensors="pt")
    n_img = int((enc["input_ids"] == model.config.image_token_id).sum())
    cfg = model.config
    assert cfg.vision_feature_layer == -1
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    assert n_img == side * side  # strategy "default" drops CLS
    out = model(**enc)
    assert out.logits.shape[-1] == len(tok)


def test_answers_easy_cases_on_fresh_samples(organism):
    from mechmod.data import color as C

    rng = np.random.default_rng(424242)
    groups = list(C.sample_groups(30, seed=424242))
    qs = [C.question_for(g.target_shape) for g in groups]
    imgs = [C.render_image(g, 0, rng)[0] for g in groups]
    yv, hv = organism.answer(qs, imgs)
    acc_v = np.mean([y == g.vision_color for y, g in zip(yv, groups)])
    descs = [C.describe(g, 0, rng) for g in groups]
    yt, ht = organism.answer([f"{d} {q}" for d, q in zip(descs, qs)])
    acc_t = np.mean([y == g.text_color for y, g in zip(yt, groups)])
    assert acc_v >= 0.9, acc_v
    assert acc_t >= 0.9, acc_t
    assert hv.dtype == np.float32
    # the entropies by hand, from the same text prompts through mechmod's loader and tracer
    from mechmod.models import load_model
    from mechmod.tracing import trace

    m = load_model(str(CHECKPOINT_DIR))
    logp = torch.log_softmax(trace(m, m.encode([None] * 4, descs[:4], qs[:4]), keep_resid=False).logits.double(), -1)
    np.testing.assert_allclose(ht[:4], -(logp.exp() * logp).sum(-1).numpy(), atol=1e-4)


def _close(p_small, n_small, p_ref, n_ref):
    """Within sampling error: 3.5 binomial standard errors of the difference."""
    p = (p_small * n_small + p_ref * n_ref) / (n_small + n_ref)
    se = math.sqrt(max(p * (1 - p), 0.02) * (1 / n_small + 1 / n_ref))
    return abs(p_small - p_ref) <= 3.5 * se


def test_card_reproduced_on_small_sample(card):
    from mechmod.organism.evaluate import evaluate

    small = evaluate(CHECKPOINT_DIR, seed=card["seed"] + 1, n=24, n_conflicts=150)
    n, N = small["n_per_tier"], card["n_per_tier"]
    # vision accuracy, pooled over tier blocks
    for lo, hi in ((0, 5), (5, 9), (9, 14)):
        a = np.mean([r["accuracy"] for r in small["vision"][lo:hi]])
        b = np.mean([r["accuracy"] for r in card["vision"][lo:hi]])
        assert _close(a, n * (hi - lo), b, N * (hi - lo)), (lo, hi, a, b)
    for dt in range(3):
        assert _close(small["text"][dt]["accuracy"], n, card["text"][dt]["accuracy"], N), dt
    cs, cc = small["conflicts"], card["conflicts"]
    for key in ("text_following", "vision_following"):
        assert _close(cs[key], cs["n"], cc[key], cc["n"]), key
    # entropy trend is a robust property of the organism
    assert small["vision"][0]["mean_entropy"] < small["vision"][13]["mean_entropy"]
    assert small["text"][0]["mean_entropy"] < small["text"][2]["mean_entropy"]


def test_readme_card_is_the_command_output(card):
    from mechmod.organism.evaluate import format_card

    readme = REPO / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if "organism behaviour card" not in text:
        pytest.skip("README does not embed the organism card yet")
    assert format_card(card) in text
    assert (CHECKPOINT_DIR / "card.txt").read_text().strip() == format_card(card).strip()


def test_smoke_training_runs_and_reloads(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mechmod.models.organism.model import OrganismConfig
    from mechmod.organism.train import train

    cfg = OrganismConfig(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
                         vision_mlp=64, text_hidden=32, text_layers=1, text_heads=2, text_mlp=64)
    out = tmp_path / "org"
    r = train(out, seed=3, steps=3, cfg=cfg, threads=1, workers=1, log_every=1, progress=False,
              vocab_groups=50, pool_per_tier=(2,) * 14,
              stream_kw={"groups_per_step": 4, "knowledge_per_step": 2, "vision_per_step": 2})
    assert len(r["log"]) == 3 and all(math.isfinite(row["loss_vision"]) for row in r["log"])
    proc = AutoProcessor.from_pretrained(out, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(out, local_files_only=True)
    enc = proc.tokenizer([prompt("What color is the circle?", False)], return_tensors="pt")
    assert model(**enc).logits.shape[-1] == len(proc.tokenizer)


def test_training_stream_is_seeded():
    from mechmod.organism.data import ImagePool, TrainingStream

    pool = ImagePool(5, (2,) * 14, 32, processes=1)
    pool2 = ImagePool(5, (2,) * 14, 32, processes=1)
    assert np.array_equal(pool.pixels[13], pool2.pixels[13])
    kw = {"groups_per_step": 3, "knowledge_per_step": 2, "vision_per_step": 2}
    a = TrainingStream(5, pool, **kw).step(0.9)
    b = TrainingStream(5, pool2, **kw).step(0.9)
    for key in ("vision", "text", "multi"):
        assert [(e.text, e.label, e.kind, e.dv, e.dt) for e in a[key]] == \
               [(e.text, e.label, e.kind, e.dv, e.dt) for e in b[key]]
    assert np.array_equal(a["vision"][0].image, b["vision"][0].image)
    kinds = {e.kind for e in a["multi"]} | {e.kind for e in a["text"]}
    assert kinds <= {"conflict", "consistent", "text_irrelevant", "image_irrelevant", "text", "knowledge"}


def test_cli_registered():
    from click.testing import CliRunner

    from mechmod.cli import _register, cli

    _register()
    res = CliRunner().invoke(cli, ["organism", "--help"])
    assert res.exit_code == 0 and all(c in res.output for c in ("train", "finetune", "eval", "shortcuts"))


@pytest.mark.slow
def test_card_targets_met_on_a_fresh_seed(card):
    """The card's targets, re-measured at full size (200 per tier) on an
    evaluation seed the card did not use: every target the card meets is
    met again (the card names its misses)."""
    from mechmod.organism.evaluate import evaluate

    fresh = evaluate(CHECKPOINT_DIR, seed=card["seed"] + 17, n=card["n_per_tier"])
    met = [k for k, v in card["targets"].items() if v]
    assert met, "the card meets no target"
    assert {k: fresh["targets"][k] for k in met} == {k: True for k in met}


@pytest.mark.slow
def test_planted_order_recovered_on_fresh_data(tmp_path):
    """The three shipped organisms on a small dataset none was evaluated on:
    mechmod's balance points keep the planted order (W = 0.4 < 1 < 1.6)."""
    import importlib
    import sys

    if str(REPO / "probes") not in sys.path:
        sys.path.insert(0, str(REPO / "probes"))
    doc = importlib.import_module("planted_preference").main(["--groups", "8", "--seed", "23",
                                                              "--out", str(tmp_path / "planted")])
    assert [r["text_weight"] for r in doc["rows"]] == [0.4, 1.0, 1.6]
    assert doc["ordered"], [r["balance_point"] for r in doc["rows"]]


def test_eval_cli_takes_a_short_name(tmp_path):
    from click.testing import CliRunner

    from mechmod.cli import _register, cli

    _register()
    res = CliRunner().invoke(cli, ["organism", "eval", "--model", "organism-vision", "--n", "3",
                                   "--json", str(tmp_path / "card.json"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["model"] == "organism-vision" and card["training"]["text_weight"] == 0.4
    assert "organism behaviour card  (model organism-vision" in res.output
