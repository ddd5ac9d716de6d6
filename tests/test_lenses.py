"""Lenses: Unembed, LogitLens, TunedLens, training and fidelity.

Unit tier: a tiny random Llama (2 layers, d=32) built from a config, plain
tensors with a known answer, and hand-computed distributions.
"""

from __future__ import annotations

import copy
import math
import pickle
import types

import numpy as np
import pytest
import torch
from torch import nn

from mechmod.errors import MechmodError
from mechmod.lenses import (
    LensFidelity,
    LogitLens,
    ResidualSet,
    TunedLens,
    Unembed,
    evaluate_lenses,
    kl_from_logits,
    lens_kl_by_layer,
    split_heldout,
    train_tuned_lens,
)


# --------------------------------------------------------------------- fixtures
def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper distributions than the 0.02-std init
        model.lm_head.weight.normal_(0, 0.5)
        model.model.norm.weight.uniform_(0.5, 1.5)
    return model


def _run_llama(model, ids):
    """(resid [B, T, L+1, d] before the final norm, logits [B, T, V], HF hidden_states)."""
    captured = {}

    def hook(_mod, _inp, out):
        captured["last"] = out[0] if isinstance(out, tuple) else out

    handle = model.model.layers[-1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
    finally:
        handle.remove()
    hs = out.hidden_states
    # HF's last hidden_states entry is already normed: replace it by the hooked,
    # pre-norm output of the last decoder layer.
    resid = torch.stack(list(hs[:-1]) + [captured["last"]], dim=2)
    return resid, out.logits, hs


@pytest.fixture(scope="module")
def llama():
    model = _tiny_llama()
    ids = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(1))
    resid, logits, hs = _run_llama(model, ids)
    unembed = Unembed(model.model.norm, model.lm_head)
    return model, resid, logits, hs, unembed


def _randomise(lens: TunedLens, seed: int = 0, scale: float = 0.1) -> TunedLens:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * scale)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=g) * scale)
    return lens


# ------------------------------------------------------------------ unembed
def test_hf_last_hidden_state_is_normed_trap(llama):
    model, resid, logits, hs, unembed = llama
    # decoding HF's last hidden_states entry again would apply the norm twice
    assert not torch.allclose(hs[-1], resid[:, :, -1], atol=1e-3)
    assert torch.allclose(model.model.norm(resid[:, :, -1]), hs[-1], atol=1e-6)


def test_logit_lens_last_layer_equals_model_logits(llama):
    model, resid, logits, _, unembed = llama
    lens = LogitLens(unembed, n_layers=2)
    out = lens(resid[:, :, 2], 2)
    assert out.dtype == torch.float32
    assert (out - logits).abs().max().item() < 1e-5
    assert (lens(resid[:, :, 2], -1) - logits).abs().max().item() < 1e-5


def test_unembed_is_frozen_and_does_not_touch_the_model(llama):
    model, resid, logits, _, unembed = llama
    assert all(not p.requires_grad for p in unembed.parameters())
    assert unembed.final_norm is not model.model.norm
    assert unembed.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()
    before = model.lm_head.weight.detach().clone()
    lens = TunedLens(unembed, 2)
    r = resid.reshape(-1, 3, 32)
    train_tuned_lens(lens, r, logits.reshape(-1, 50), steps=3, batch_size=8)
    assert torch.equal(model.lm_head.weight, before)
    assert all(not p.requires_grad for p in lens.unembed.parameters())
    unembed.train()
    assert not unembed.training


def test_unembed_bf16_model_gives_fp32_logits(llama):
    model, resid, logits, _, _ = llama
    norm16 = copy.deepcopy(model.model.norm).to(torch.bfloat16)
    head16 = copy.deepcopy(model.lm_head).to(torch.bfloat16)
    u = Unembed(norm16, head16)
    out = u(resid[:, :, 2].to(torch.bfloat16))
    assert out.dtype == torch.float32
    # bf16 weights, fp32 math: close to the fp32 model's logits
    assert (out - logits).abs().max().item() < 0.1


def test_fingerprint_identifies_the_unembedding(llama):
    model, *_ , unembed = llama
    again = Unembed(model.model.norm, model.lm_head)
    assert unembed.fingerprint() == again.fingerprint()
    assert len(unembed.fingerprint()) == 64
    other = _tiny_llama(seed=1)
    assert Unembed(other.model.norm, other.lm_head).fingerprint() != unembed.fingerprint()
    eps = copy.deepcopy(model.model.norm)
    eps.variance_epsilon = 1e-2
    assert Unembed(eps, model.lm_head).fingerprint() != unembed.fingerprint()


def test_unembed_from_model_takes_its_final_norm_and_lm_head(llama):
    model, *_, unembed = llama
    mllm = types.SimpleNamespace(final_norm=model.model.norm, lm_head=model.lm_head)
    assert Unembed.from_model(mllm).fingerprint() == unembed.fingerprint()


# ---------------------------------------------------------------- tuned lens
def test_fresh_tuned_lens_equals_logit_lens_at_every_layer(llama):
    _, resid, _, _, unembed = llama
    tuned, logit = TunedLens(unembed, 2), LogitLens(unembed, 2)
    for layer in range(3):
        h = resid[:, :, layer]
        assert torch.allclose(tuned(h, layer), logit(h, layer), atol=1e-6)


def test_tuned_lens_last_layer_equals_model_logits(llama):
    _, resid, logits, _, unembed = llama
    lens = _randomise(TunedLens(unembed, 2))
    assert (lens(resid[:, :, 2], 2) - logits).abs().max().item() < 1e-5
    # translators do act on the other layers
    assert not torch.allclose(lens(resid[:, :, 1], 1), LogitLens(unembed)(resid[:, :, 1], 1))


def test_forward_all_equals_per_layer_forward(llama):
    _, resid, logits, _, unembed = llama
    r = resid.reshape(-1, 3, 32)  # [B*T, L+1, d]
    for lens in (LogitLens(unembed, 2), _randomise(TunedLens(unembed, 2), seed=3)):
        all_layers = lens.forward_all(r)
        assert all_layers.shape == (r.shape[0], 3, 50)
        for layer in range(3):
            assert torch.allclose(all_layers[:, layer], lens(r[:, layer], layer), atol=1e-5)
        assert torch.allclose(all_layers[:, 2], logits.reshape(-1, 50), atol=1e-5)


def test_layer_out_of_range_raises(llama):
    _, resid, _, _, unembed = llama
    lens = TunedLens(unembed, 2)
    with pytest.raises(MechmodError, match="out of range"):
        lens(resid[:, :, 0], 3)
    with pytest.raises(MechmodError, match="layer entries"):
        lens.forward_all(resid.reshape(-1, 3, 32)[:, :2])


def test_save_load_round_trip(llama, tmp_path):
    model, resid, _, _, unembed = llama
    lens = _randomise(TunedLens(unembed, 2, model_name="tiny-llama"), seed=5)
    lens.train_info = {"steps": 7, "data": {"dataset": "x"}}
    lens.save(tmp_path / "lens")
    assert (tmp_path / "lens" / "lens.safetensors").is_file()
    cfg = __import__("json").loads((tmp_path / "lens" / "config.json").read_text())
    assert cfg["unembed_fingerprint"] == unembed.fingerprint()
    assert cfg["n_layers"] == 2 and cfg["d_model"] == 32 and cfg["model"] == "tiny-llama"
    assert cfg["training"]["steps"] == 7 and cfg["format"] == "mechmod-tuned-lens/1"
    loaded = TunedLens.load(tmp_path / "lens", Unembed(model.model.norm, model.lm_head))
    r = resid.reshape(-1, 3, 32)
    assert torch.equal(loaded.forward_all(r), lens.forward_all(r))
    assert loaded.model_name == "tiny-llama" and loaded.train_info["steps"] == 7


def test_load_with_other_unembedding_raises(llama, tmp_path):
    _, _, _, _, unembed = llama
    TunedLens(unembed, 2).save(tmp_path)
    other = _tiny_llama(seed=2)
    u2 = Unembed(other.model.norm, other.lm_head)
    with pytest.raises(MechmodError) as err:
        TunedLens.load(tmp_path, u2)
    msg = str(err.value)
    assert unembed.fingerprint() in msg and u2.fingerprint() in msg and "mechmod lens train" in msg


_UNPICKLED = []


def _sentinel(path):  # called only if someone unpickles the payload
    _UNPICKLED.append(path)
    return {"weight": torch.zeros(2, 32, 32), "bias": torch.zeros(2, 32)}


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_sentinel, (self.path,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_loader_refuses_pickle_and_never_unpickles(llama, tmp_path, writer):
    _, _, _, _, unembed = llama
    TunedLens(unembed, 2).save(tmp_path)
    weights = tmp_path / "lens.safetensors"
    weights.unlink()
    if writer == "torch.save":
        torch.save(_Payload(str(weights)), weights)
    else:
        weights.write_bytes(pickle.dumps(_Payload(str(weights)), protocol=4))
    _UNPICKLED.clear()
    with pytest.raises(MechmodError, match="never unpickles"):
        TunedLens.load(tmp_path, unembed)
    assert _UNPICKLED == []


def test_load_missing_or_tampered_files(llama, tmp_path):
    _, _, _, _, unembed = llama
    with pytest.raises(MechmodError, match="not found"):
        TunedLens.load(tmp_path, unembed)
    lens = _randomise(TunedLens(unembed, 2))
    lens.save(tmp_path)
    data = bytearray((tmp_path / "lens.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "lens.safetensors").write_bytes(bytes(data))
    with pytest.raises(MechmodError, match="sha256"):
        TunedLens.load(tmp_path, unembed)


# ------------------------------------------------------------------------ KL
def test_kl_by_layer_hand_computed_three_tokens():
    # identity unembedding over 3 tokens (no norm), so lens logits = the residual
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    lens = LogitLens(Unembed(nn.Identity(), head))
    p = np.array([0.5, 0.25, 0.25])
    q1 = np.array([1 / 3, 1 / 3, 1 / 3])
    q0 = np.array([0.7, 0.2, 0.1])
    resid = torch.tensor(np.log(np.stack([q0, q1, p]))[None], dtype=torch.float32)  # [1, 3, 3]
    final = torch.tensor(np.log(p)[None], dtype=torch.float32)
    kl = lens_kl_by_layer(lens, resid, final)
    by_hand = [
        0.5 * math.log(0.5 / 0.7) + 0.25 * math.log(0.25 / 0.2) + 0.25 * math.log(0.25 / 0.1),
        0.5 * math.log(1.5) + 0.25 * math.log(0.75) + 0.25 * math.log(0.75),
        0.0,
    ]
    assert kl.shape == (3,)
    np.testing.assert_allclose(kl, by_hand, atol=1e-6)
    # a mean over examples: a second example with KL 0 everywhere halves it
    resid2 = torch.cat([resid, torch.tensor(np.log(np.stack([p, p, p]))[None], dtype=torch.float32)])
    final2 = torch.cat([final, final])
    np.testing.assert_allclose(lens_kl_by_layer(lens, resid2, final2, batch_size=1), np.array(by_hand) / 2, atol=1e-6)
    # shift invariance of logits, and KL(p || p) = 0
    assert abs(kl_from_logits(final, final + 5.0).item()) < 1e-6


# ------------------------------------------------------------------ training
def _rotation_problem(seed=0, n=512, d=16, vocab=24, n_layers=3):
    """Residual l = R_l h* (a random rotation per layer) of a target state h*
    whose unembedding gives the final logits; the last layer is h* itself.
    The exact tuned lens is W_l = R_l^T - I."""
    g = torch.Generator().manual_seed(seed)
    norm = nn.LayerNorm(d)
    head = nn.Linear(d, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, d, generator=g))
    unembed = Unembed(norm, head)
    h = torch.randn(n, d, generator=g)
    rots = [torch.linalg.qr(torch.randn(d, d, generator=g))[0] for _ in range(n_layers)]
    resid = torch.stack([h @ r.T for r in rots] + [h], dim=1)
    return unembed, resid, unembed(h).detach()


def test_training_learns_known_per_layer_rotation():
    unembed, resid, final = _rotation_problem()
    train, held = split_heldout(len(resid), 0.25, seed=0)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(resid)
    lens = TunedLens(unembed, 3)
    res = train_tuned_lens(lens, resid[train], final[train], steps=150, batch_size=64, seed=0)
    assert res.lens is lens and res.loss.shape == (150,) and res.loss[-1] < res.loss[0]
    fid = evaluate_lenses(lens, resid[held], final[held])
    assert fid.kl_logit[:3].min() > 1.0  # the rotations make the logit lens useless
    assert np.all(fid.kl_tuned[:3] < 0.1 * fid.kl_logit[:3])  # held-out, every layer but the last
    assert fid.kl_tuned[3] == pytest.approx(0.0, abs=1e-6) and fid.kl_logit[3] == pytest.approx(0.0, abs=1e-6)
    assert lens.train_info["steps"] == 150 and lens.train_info["optimizer"] == "sgd"


def test_training_is_deterministic_and_streams():
    unembed, resid, final = _rotation_problem(n=128)
    a = train_tuned_lens(TunedLens(unembed, 3), resid, final, steps=20, batch_size=32, seed=4)
    b = train_tuned_lens(TunedLens(unembed, 3), resid, final, steps=20, batch_size=32, seed=4)
    assert torch.equal(a.lens.weight, b.lens.weight)
    # streaming from a list of batches (cycled) and from a one-shot generator (stops)
    batches = [(resid[i : i + 32], final[i : i + 32]) for i in range(0, 128, 32)]
    c = train_tuned_lens(TunedLens(unembed, 3), batches, steps=12, optimizer="adam", lr=1e-2)
    assert c.loss.shape == (12,) and c.loss[-1] < c.loss[0]
    d = train_tuned_lens(TunedLens(unembed, 3), iter(batches), steps=12)
    assert d.loss.shape == (4,) and d.settings["steps"] == 4


def test_training_on_tiny_llama_reduces_heldout_kl():
    model = _tiny_llama(seed=3)
    ids = torch.randint(0, 50, (64, 16), generator=torch.Generator().manual_seed(2))
    resid, logits, _ = _run_llama(model, ids)
    r, f = resid.reshape(-1, 3, 32), logits.reshape(-1, 50)
    train, held = split_heldout(len(r), 0.25, seed=0)
    lens = TunedLens(Unembed(model.model.norm, model.lm_head), 2)
    train_tuned_lens(lens, r[train], f[train], steps=200, batch_size=64)
    fid = evaluate_lenses(lens, r[held], f[held])
    assert np.all(fid.kl_tuned[:2] < 0.85 * fid.kl_logit[:2])
    assert fid.kl_tuned[2] < 1e-5 and fid.kl_logit[2] < 1e-5


def test_training_rejects_bad_input():
    unembed, resid, final = _rotation_problem(n=16)
    with pytest.raises(MechmodError, match="rows"):
        train_tuned_lens(TunedLens(unembed, 3), resid, final[:5], steps=1)
    with pytest.raises(MechmodError, match="optimizer"):
        train_tuned_lens(TunedLens(unembed, 3), resid, final, steps=1, optimizer="lbfgs")
    with pytest.raises(MechmodError, match="diverged"):
        train_tuned_lens(TunedLens(unembed, 3), resid * 1e30, final, steps=3, lr=1e30, grad_clip=0)


# --------------------------------------------------------- datasets, figures
def test_residual_set_split_by_group_keeps_groups_apart():
    n = 40
    groups = np.array([f"g{i % 8}" for i in range(n)])
    rs = ResidualSet(
        resid=torch.zeros(n, 3, 4),
        logits=torch.zeros(n, 5),
        group_id=groups,
        kind=np.array(["vision", "text", "multimodal", "text"] * 10),
        key=np.array([str(i) for i in range(n)]),
    )
    train, held = rs.split_by_group(0.25, seed=1)
    assert set(train.group_id).isdisjoint(held.group_id)
    assert len(set(held.group_id)) == 2 and len(train) + len(held) == n
    train2, held2 = rs.split_by_group(0.25, seed=1)
    assert np.array_equal(held.key, held2.key)
    # a held-out prompt identical to a training prompt (same text in two groups) is dropped
    dup = ResidualSet(
        resid=torch.zeros(4, 3, 4), logits=torch.zeros(4, 5),
        group_id=np.array(["a", "b", "a", "b"]), kind=np.array(["text"] * 4),
        key=np.array(["same", "same", "x", "y"]),
    )
    tr, ho = dup.split_by_group(0.5, seed=0)
    assert set(ho.key) | set(tr.key) == {"same", "x", "y"} and "same" not in set(ho.key)
    with pytest.raises(ValueError):
        ResidualSet(torch.zeros(3, 3, 4), torch.zeros(3, 5), groups[:2], groups[:3], groups[:3])
    with pytest.raises(MechmodError, match="2 groups"):
        rs.subset(groups == "g0").split_by_group()


def test_fidelity_result():
    fid = LensFidelity(np.array([3.0, 2.0, 0.0]), np.array([1.0, 0.5, 0.0]), n_examples=10)
    d = fid.to_dict()
    assert d["kl_logit"] == [3.0, 2.0, 0.0] and d["layers"] == [-1, 0, 1]
    assert "tuned lens KL" in fid.table()
    with pytest.raises(ValueError):
        LensFidelity(np.zeros(3), np.zeros(4), n_examples=1)


def test_prompt_table_runs_each_distinct_prompt_once():
    import pandas as pd

    from mechmod.lenses.residuals import _prompt_table

    rows = []
    for g in ("g0", "g1"):
        for dv in range(2):
            for dt in range(3):
                rows.append(dict(case_id=f"{g}-{dv}-{dt}", group_id=g, image_id=f"{g}-{dv}",
                                 image_path=f"images/{g}-{dv}.png", description=f"{g} text {dt}",
                                 question="What color is the square?"))
    cases = pd.DataFrame(rows)
    table = _prompt_table(cases, ("vision", "text", "multimodal"))
    counts = table["kind"].value_counts().to_dict()
    assert counts == {"vision": 4, "text": 6, "multimodal": 12}
    assert table.loc[table.kind == "vision", "description"].isna().all()
    assert table.loc[table.kind == "text", "image_path"].isna().all()
    assert list(_prompt_table(cases, ("text",))["kind"].unique()) == ["text"]
    with pytest.raises(MechmodError, match="kinds"):
        _prompt_table(cases, ("audio",))
