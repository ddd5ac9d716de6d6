"""MC2 phrase answers in scoring (mechmod.phrase_answers): the phrase a
model writes is cut at its end and matched to the two answers; first-word
readings; and an MC2 dataset built from release-shaped records scored end
to end by a tiny model whose continuation writes known phrases."""

from __future__ import annotations

from html import unescape

import numpy as np
import pytest
import torch

import mechmod
from mechmod import report, scoring
from mechmod.answers import RULE_TEXT, LabelSet
from mechmod.data import load_cases, load_mc2
from mechmod.errors import MechmodError
from mechmod.interventions import cases as intervention_cases
from mechmod.interventions.cases import Images, encode
from mechmod.models import load_model
from mechmod.phrase_answers import PHRASE_RULE_TEXT, PHRASE_TOKENS, PhraseSet, answer_set, first_word
from mechmod.summary import summarize
from tests.test_data_mc2 import _fake


@pytest.fixture(scope="module")
def qwen(tiny_dir):
    """A byte-level BPE vocabulary: every phrase is writable."""
    return load_model(str(tiny_dir("qwen2_vl")))


def _scripted(tokenizer, texts):
    """A Continuation writing ``texts[row]`` token by token after whatever was written."""
    scripts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    vocab = len(tokenizer)

    def step(rows, written):
        out = torch.zeros(len(rows), vocab)
        for i, (r, w) in enumerate(zip(rows.tolist(), written.tolist())):
            k = len(w) - 1  # the first token is the prompt's top-1, the script follows it
            out[i, scripts[r][k] if k < len(scripts[r]) else tokenizer.eos_token_id] = 1.0
        return out
    return step


def test_first_word_and_answer_set(qwen):
    assert first_word("A red car") == "red" and first_word("the") == "the" and first_word("It's big") == "its"
    assert isinstance(answer_set(qwen.tokenizer, ["eating", "drinking"]), LabelSet)
    ps = answer_set(qwen.tokenizer, ["eating", "playing in a field"])
    assert isinstance(ps, PhraseSet) and ps.votes_defined
    assert not PhraseSet(qwen.tokenizer, ["playing soccer", "playing tennis"]).votes_defined
    with pytest.raises(MechmodError, match="two different answers"):
        PhraseSet(qwen.tokenizer, ["a b", "c", "d"])


def test_phrase_is_cut_at_its_end_and_matched(qwen):
    tok = qwen.tokenizer
    ps = PhraseSet(tok, ["eating", "playing in a field"])
    assert ps.phrase(tok.encode(" eating grass\nThe sheep", add_special_tokens=False)) == ("eating grass", True)
    assert ps.phrase(tok.encode(" playing in a field. Yes", add_special_tokens=False))[0] == "playing in a field"
    assert ps.phrase(tok.encode(" playing", add_special_tokens=False)) == ("playing", False)
    assert ps.phrase(tok.encode(" eating", add_special_tokens=False) + [tok.eos_token_id]) == ("eating", True)
    assert ps.label_of_text("The sheep are playing in the field") == "playing in a field"
    assert ps.label_of_text("Eating.") == "eating"
    assert ps.label_of_text("sleeping") == "other"
    # predict: the first token from the logits, then the continuation, at most PHRASE_TOKENS tokens in all
    shapes = PhraseSet(tok, ["red", "a blue circle"])
    texts = [" is a blue circle.", " red square\n", " green", " the red circle and the red square and blue circle"]
    first = tok.encode("The", add_special_tokens=False)[0]
    logits = torch.zeros(4, len(tok))
    logits[:, first] = 1.0
    calls = []

    def more(rows, written):
        calls.append(written.shape[1])
        return _scripted(tok, texts)(rows, written)
    # row 3 is cut after 8 tokens ("The the red circle and the red square"): red wins on words, 'blue' never came
    assert shapes.predict(logits, more) == ["a blue circle", "red", "other", "red"]
    assert max(calls) == PHRASE_TOKENS - 1
    assert shapes.predict(logits) == ["other"] * 4  # without a continuation the phrase is the top-1 token alone


def test_first_word_readings(qwen):
    tok = qwen.tokenizer
    ps = PhraseSet(tok, ["eating", "playing in a field"])
    logits = torch.randn(3, len(tok), generator=torch.Generator().manual_seed(0))
    p = ps.label_probs(logits)
    torch.testing.assert_close(p, ps.first.label_probs(logits))  # same order: the first words are distinct
    assert ps.logit_token_ids("playing in a field") == ps.first.logit_token_ids("playing")
    same = PhraseSet(tok, ["playing soccer", "playing tennis"])
    q = same.label_probs(logits)
    torch.testing.assert_close(q[:, 0], q[:, 1])
    assert (same.labels_of(torch.arange(5)) == "other").all()


#: release-shaped records (tests/test_data_mc2.py) in words the tiny vocabulary writes in few tokens
WORD_RECORDS = [
    {"image_id": "000000046962", "task": "object_recognition", "question": "What is in this picture?",
     "answer_vision": "red", "answer_text": "a blue circle", "context": "There is a blue circle in this picture."},
    {"image_id": "000000468632", "task": "object_recognition", "question": "What shape is there?",
     "answer_vision": "green square", "answer_text": "yellow", "context": "The shape is yellow."},
    {"image_id": "000000277961", "task": "object_recognition", "question": "What is this?",  # the same first word
     "answer_vision": "red circle", "answer_text": "red square", "context": "This is a red square."},
    {"image_id": "000000065860", "task": "color", "question": "What color is the circle?",
     "answer_vision": "red", "answer_text": "blue", "context": "The circle is blue."},
]
#: what the continuation writes per prompt (question -> text): vision-only, text-only, multimodal
WRITES = {
    "vision": {"in this picture": " red.", "shape is there": " a green square.", "is this?": " red circle."},
    "text": {"in this picture": " a blue circle.", "shape is there": " yellow.", "is this?": " red square."},
    "multimodal": {"in this picture": " blue circle\n", "shape is there": " green square.", "is this?": " red square."},
}


def _fake_reencoded(mllm, images, descriptions, questions, batch_size=8, *_):
    """decoding.reencoded's (and over_prefixes') stand-in: each prompt's row writes WRITES[its kind][its question]."""
    texts = []
    for image, d, q in zip(images, descriptions, questions):
        kind = "text" if image is None else "vision" if d is None else "multimodal"
        texts.append(next((v for k, v in WRITES[kind].items() if k in q), " nothing."))
    return _scripted(mllm.tokenizer, texts)


def _first_tokens(mllm, out, cases) -> str:
    """The top-1 tokens of every prompt of ``cases`` (the phrases' first tokens), decoded."""
    images, ids = Images(out), []
    for paths, descs in ((cases["image_path"], cases["description"]), (cases["image_path"], [None] * len(cases)),
                         ([None] * len(cases), cases["description"])):
        enc = encode(mllm, images, paths, descs, cases["question"])
        with torch.no_grad():
            ids += mllm.model(**enc.inputs).logits[:, -1].argmax(-1).tolist()
    return "|".join(mllm.tokenizer.decode([t]) for t in ids)


def test_mc2_dataset_scored_end_to_end(qwen, tmp_path, monkeypatch):
    src, coco = _fake(tmp_path, WORD_RECORDS)
    out = load_mc2(src, tmp_path / "mc2", coco, progress=False, report=lambda line: None)
    cases = load_cases(out)
    first = _first_tokens(qwen, out, cases)
    assert not any(c in first for c in "\n.!?"), f"the tiny model's first tokens {first!r} would end the phrases"
    monkeypatch.setattr(scoring, "reencoded", _fake_reencoded)
    monkeypatch.setattr(scoring, "over_prefixes", _fake_reencoded)
    rows = mechmod.score(qwen, cases, out, batch_size=2).set_index("case_id")
    assert (rows["status"] == "ok").all(), rows["error"].tolist()
    r0, r1, same = (rows.loc[f"mc2-evaluate_final_text_error1-{i:05d}"] for i in range(3))
    assert (r0.y_v, r0.y_t, r0.y_m, r0.follow) == ("red", "a blue circle", "a blue circle", "text")
    assert (r1.y_v, r1.y_t, r1.y_m, r1.follow) == ("green square", "yellow", "green square", "vision")
    assert len(r0.layer_votes) == len(r0.layer_logit_diff) >= qwen.n_layers  # one per layer (and the embedding)
    assert np.isfinite(r0.h_m) and np.isfinite(r0.dh_rel) and len(r0.p_m) == 2
    # the same first word: answered and followed, but no layer votes (empty vote lists, no oscillation count)
    assert (same.y_v, same.y_t, same.y_m, same.follow) == ("red circle", "red square", "red square", "text")
    assert list(same.layer_votes) == [] and list(same.layer_logit_diff) == [] and same.oscillations == -1
    summary, _ = summarize(rows.reset_index())
    assert summary["n_cases"] == len(rows) == 4


def test_the_run_report_states_both_answer_rules():
    page = unescape(report.page("run", {"model": "m", "n_cases": 0}).render())
    assert RULE_TEXT in page and PHRASE_RULE_TEXT in page


def test_intervention_baseline_reads_phrases_the_same_way(qwen, tmp_path, monkeypatch):
    src, coco = _fake(tmp_path, WORD_RECORDS)
    out = load_mc2(src, tmp_path / "mc2", coco, progress=False, report=lambda line: None)
    monkeypatch.setattr(scoring, "reencoded", _fake_reencoded)  # the baseline continues as the run does
    monkeypatch.setattr(scoring, "over_prefixes", _fake_reencoded)
    table = intervention_cases.baseline(qwen, out, load_cases(out), batch_size=2).table.set_index("case_id")
    r0, r1 = (table.loc[f"mc2-evaluate_final_text_error1-{i:05d}"] for i in range(2))
    assert (r0.y_v, r0.y_t, r0.y_m, r0.follow) == ("red", "a blue circle", "a blue circle", "text")
    assert (r1.y_v, r1.y_t, r1.y_m, r1.follow) == ("green square", "yellow", "green square", "vision")
