"""Adapters (llava family), answers and tracing on a tiny random LLaVA and
on the shipped organism."""

import pytest
import torch
from PIL import Image

from mechmod.answers import LabelSet
from mechmod.cli import main
from mechmod.errors import MechmodError
from mechmod.models import adapter_for, builtin_models, load_model
from mechmod.tracing import trace

COLORS = ["red", "yellow", "blue", "green", "purple", "orange"]
Q = "What color is the circle? Please use one word to answer this question."


def images():
    return [Image.new("RGB", (800, 600), (220, 20, 30)), Image.new("RGB", (224, 224), (20, 60, 230))]


def test_load_passes_self_check_and_exposes_slots(mllm):
    assert mllm.family == "llava" and mllm.n_layers == 2 and mllm.d_model == 32
    assert mllm.dtype == torch.float32 and mllm.device.type == "cpu"
    assert mllm.image_token_id == mllm.tokenizer.convert_tokens_to_ids("<image>")


@pytest.mark.parametrize("layout", ["vision", "text", "multi"])
def test_encode_spans_decode_to_their_text(mllm, layout):
    descs = ["The circle is blue.", "A banana is red and the circle is the same color."]
    imgs = images() if layout != "text" else [None, None]
    d = descs if layout != "vision" else [None, None]
    enc = mllm.encode(imgs, d, [Q, Q])
    ids = enc.inputs["input_ids"]
    for i in range(2):
        q_tokens = mllm.tokenizer.decode(ids[i][enc.spans["question"][i]])
        assert q_tokens.split() == \
            mllm.tokenizer.decode(mllm.tokenizer(Q, add_special_tokens=False)["input_ids"]).split()
        if d[i]:
            assert mllm.tokenizer.decode(ids[i][enc.spans["description"][i]]).split() == \
                mllm.tokenizer.decode(mllm.tokenizer(d[i], add_special_tokens=False)["input_ids"]).split()
        else:
            assert not enc.spans["description"][i].any()
        n_img = int(enc.spans["image"][i].sum())
        assert n_img == (4 if layout != "text" else 0)  # 28 px / 14 px patches
        # spans never overlap and never cover padding
        total = sum(enc.spans[k][i].int() for k in ("image", "description", "question", "template"))
        assert int(total.max()) == 1
        assert int(total.sum()) == int(enc.inputs["attention_mask"][i].sum())
    assert enc.spans["last"][:, -1].all() and (enc.answer_index == ids.shape[1] - 1).all()


def test_encode_refuses_mixed_and_ragged_batches(mllm):
    with pytest.raises(MechmodError, match="mixes"):
        mllm.encode([images()[0], None], ["a", "b"], [Q, Q])
    with pytest.raises(MechmodError, match="one of each"):
        mllm.encode([None], ["a", "b"], [Q, Q])


def test_trace_matches_a_plain_forward(mllm):
    enc = mllm.encode(images(), ["The circle is blue.", "The circle is red."], [Q, Q])
    tr = trace(mllm, enc)
    assert tr.resid.shape == (2, mllm.n_layers + 1, mllm.d_model) and tr.resid.dtype == torch.float32
    with torch.no_grad():
        ref = mllm.model(**enc.inputs, output_hidden_states=True)
    for layer in range(mllm.n_layers):  # HF's last hidden state is already normed: compared below
        torch.testing.assert_close(tr.resid[:, layer], ref.hidden_states[layer][:, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.logits, ref.logits[:, -1], atol=1e-4, rtol=0)
    with torch.no_grad():
        again = mllm.lm_head(mllm.final_norm(tr.resid[:, -1]))
    torch.testing.assert_close(again, tr.logits, atol=1e-4, rtol=0)


def test_transformer_lens_backend_gives_the_same_numbers(mllm):
    enc = mllm.encode(images(), ["The circle is blue.", "The circle is red."], [Q, Q])
    a = trace(mllm, enc, backend="nnsight")
    b = trace(mllm, enc, backend="transformer_lens")
    torch.testing.assert_close(a.resid, b.resid, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=0)
    with pytest.raises(MechmodError, match="backend"):
        trace(mllm, enc, backend="baukit")


def test_organism_loads_by_short_name():
    m = load_model("organism")
    assert m.family == "llava" and builtin_models()["organism"].endswith("checkpoints/organism")
    labels = LabelSet(m.tokenizer, COLORS)
    enc = m.encode([None], ["The circle is blue."], [Q])
    with torch.no_grad():  # the word HF's own greedy generation writes
        written = m.model.generate(**enc.inputs, max_new_tokens=4, do_sample=False)[0, enc.inputs["input_ids"].shape[1]:]
    assert labels.predict(trace(m, enc, keep_resid=False).logits)[0] == \
        labels.label_of_text(m.tokenizer.decode(written, skip_special_tokens=True)) == "blue"


def test_load_errors_name_the_way_out(tmp_path, tiny_llava_dir):
    with pytest.raises(MechmodError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(MechmodError, match="no mechmod adapter"):
        adapter_for("bert")
    # a pickle-only checkpoint is refused: weights load from safetensors only
    pkl = tmp_path / "pickled"
    pkl.mkdir()
    for f in tiny_llava_dir.iterdir():
        if f.name != "model.safetensors":
            (pkl / f.name).write_bytes(f.read_bytes())
    torch.save({"x": torch.zeros(1)}, pkl / "pytorch_model.bin")
    with pytest.raises(MechmodError, match="cannot load"):
        load_model(str(pkl))
    with pytest.raises(MechmodError, match="dtype"):
        load_model(str(tiny_llava_dir), dtype="float8")


def test_self_check_names_a_wrong_slot(tiny_llava_dir):
    import dataclasses

    from mechmod.models import base, llava

    wrong = dataclasses.replace(llava.ADAPTER, final_norm_path="model.language_model.no_such_norm")
    model = load_model(str(tiny_llava_dir), check=False)
    with pytest.raises(MechmodError, match="no_such_norm"):
        base.MLLM(model.model, model.processor, wrong, name="tiny")


def test_models_command_lists_families_and_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for fam in ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3", "organism"):
        assert fam in out
