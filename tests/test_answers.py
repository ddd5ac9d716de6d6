"""Answer labels (mechmod.answers) and greedy continuation (mechmod.decoding):
the ownership rule on a hand-made SentencePiece-like vocabulary, predictions
that decode the word a one-letter piece begins, first-token probabilities,
and the KV-cache continuation against a full re-forward on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mechmod.answers import (COMMON_ANSWER_WORDS, COMMON_ANSWER_WORDS_VERSION, MAX_NEW_TOKENS, MIN_PREFIX, OTHER,
                             RULE_TEXT, LabelSet)
from mechmod.decoding import (extend_inputs, greedy, model_next_logits, over_cache, over_prefixes, reencoded,
                              reforward)
from mechmod.errors import MechmodError
from mechmod.prefix import cache_kwarg
from mechmod.models import load_model
from tests.tiny_families import FAMILIES

PIECES = ["<unk>", "</s>", "▁", "▁B", "▁Blue", "Blue", "lue", "lack", "oth", "▁Both", "▁C", "ube", "yl", "inder",
          "▁cyl", "yan", ".", "▁red", "RED", "▁R", "ed", "▁the", "▁gre", "en", "y", "▁pur", "ple", "▁bro", "wn", "\"",
          "▁zz"]


class PieceTokenizer:
    """A SentencePiece-like tokenizer over PIECES: spaces are '▁', longest
    piece first, '<unk>' for what no piece spells."""

    unk_token_id = 0
    all_special_ids = [0, 1]

    def get_vocab(self):
        return {p: i for i, p in enumerate(PIECES)}

    def encode(self, text, add_special_tokens=False):
        s, ids = text.replace(" ", "▁"), []
        while s:
            match = max((p for p in PIECES[2:] if s.startswith(p)), key=len, default=None)
            ids.append(PIECES.index(match) if match else 0)
            s = s[len(match):] if match else s[1:]
        return ids

    def decode(self, ids):
        return "".join(PIECES[i] for i in ids).replace("▁", " ")


TOK = PieceTokenizer()
ID = {p: i for i, p in enumerate(PIECES)}


def _one_hot(rows: list[str]) -> torch.Tensor:
    logits = torch.full((len(rows), len(PIECES)), -1e4)
    for r, piece in enumerate(rows):
        logits[r, ID[piece]] = 5.0
    return logits


def _scripted(scripts: dict[int, list[str]], calls: list | None = None):
    """A continuation writing ``scripts[row]`` (the pieces after the first),
    then '</s>'; ``calls`` records (rows, written) of each call."""
    def step(rows, written):
        if calls is not None:
            calls.append((rows.tolist(), written.tolist()))
        k = written.shape[1]
        nxt = [scripts[r][k - 1] if k - 1 < len(scripts[r]) else "</s>" for r in rows.tolist()]
        return _one_hot(nxt)
    return step


def test_ownership_whole_labels_and_long_unique_prefixes_only():
    ls = LabelSet(TOK, ["red", "blue", "green", "purple", "brown"])
    owned = {lab: sorted(PIECES[t] for t in ls.token_ids(lab)) for lab in ls.labels}
    assert owned["red"] == ["RED", "▁red"]  # not '▁R' (one letter)
    assert owned["blue"] == ["Blue", "▁Blue"]  # not '▁B' (Blue or Black?)
    assert owned["purple"] == ["▁pur"]  # three letters, no other label or common word begins 'pur'
    assert owned["green"] == [] and owned["brown"] == []  # 'gre' begins 'grey', 'bro' begins 'bronze'
    assert ls.unowned == ["green", "brown"]
    assert ls.logit_token_ids("green") == [ID["▁gre"]] and ls.logit_token_ids("red") == ls.token_ids("red")
    assert LabelSet(TOK, ["cube", "cylinder"]).token_ids("cylinder") == [ID["▁cyl"]]
    assert LabelSet(TOK, ["cube", "cyan", "cylinder"]).token_ids("cube") == []  # '▁C' is one letter


def test_labelset_refuses_bad_labels():
    with pytest.raises(MechmodError, match="distinct"):
        LabelSet(TOK, ["red", "Red"])
    with pytest.raises(MechmodError, match="reserved"):
        LabelSet(TOK, ["blue", "other"])
    with pytest.raises(MechmodError, match="zebra"):
        LabelSet(TOK, ["red", "zebra"])  # no piece spells it: the model could never write it


def test_probabilities_are_first_token_sums_over_owned_tokens():
    ls = LabelSet(TOK, ["red", "blue", "green"])
    v = torch.randn(4, len(PIECES)) * 3
    p = torch.softmax(v, -1)
    expected = torch.stack([p[:, [ID["▁red"], ID["RED"]]].sum(-1), p[:, [ID["▁Blue"], ID["Blue"]]].sum(-1),
                            torch.zeros(4)], -1)
    torch.testing.assert_close(ls.label_probs(v), expected)
    np.testing.assert_allclose(ls.label_probs(v.bfloat16()).numpy(), ls.label_probs(v.bfloat16().float()).numpy())


def test_lens_votes_count_owned_tokens_only():
    ls = LabelSet(TOK, ["red", "blue"])
    layered = ls.top1_labels(_one_hot(["▁Blue", "▁B", "RED", "▁the"])[None].expand(2, 4, -1))
    assert layered.shape == (2, 4) and list(layered[1]) == ["blue", OTHER, "red", OTHER]


def test_prediction_decodes_the_word_a_short_or_shared_piece_begins():
    ls = LabelSet(TOK, ["red", "blue", "cube", "cylinder"])
    first = ["▁B", "▁B", "▁C", "▁C", "▁Blue", "▁the", "▁R", "▁", "\"", "▁B"]
    then = {0: ["lue", "."], 1: ["lack"], 2: ["ube", "."], 3: ["yl", "inder", "."], 6: ["ed"], 7: ["▁Blue"],
            8: ["Blue", "\""], 9: ["oth"]}
    calls: list = []
    got = ls.predict(_one_hot(first), _scripted(then, calls))
    assert got == ["blue", OTHER, "cube", "cylinder", "blue", OTHER, "red", "blue", "blue", OTHER]
    assert calls[0][0] == [0, 1, 2, 3, 6, 7, 8, 9]  # decided rows never continue, the others go in one batch
    assert calls[0][1][0] == [ID["▁B"]]
    assert all(len(rows) == len(w) for rows, w in calls)
    assert ls.predict(_one_hot(first)) == [OTHER, OTHER, OTHER, OTHER, "blue", OTHER, OTHER, OTHER, OTHER, OTHER]
    assert json.dumps(got)  # plain strings


def test_decoding_stops_after_the_word_at_a_stop_token_and_after_max_new_tokens():
    ls = LabelSet(TOK, ["red", "blue"])
    calls: list = []
    got = ls.predict(_one_hot(["▁B", "▁", "▁B"]), _scripted({0: ["lue", "▁the", "▁the"], 1: ["▁"] * 9, 2: []},
                                                             calls))
    assert got == ["blue", OTHER, OTHER]  # '▁B' then '</s>': the word is "B"
    assert len(calls) == MAX_NEW_TOKENS and max(len(w[0]) for _, w in calls) == MAX_NEW_TOKENS
    assert [rows for rows, _ in calls] == [[0, 1, 2], [1], [1], [1]]  # 'Blue' is decided at once


def test_label_of_text_matches_the_first_word_punctuation_stripped():
    ls = LabelSet(TOK, ["red", "blue", "cube", "cylinder"])
    assert [ls.label_of_text(t) for t in ("Cube.", " **Blue**", "cyl", "Cubes", "Both", "", "blue-green")] == \
        ["cube", "blue", "cylinder", OTHER, OTHER, OTHER, "blue"]


def test_rule_text_and_common_words_are_versioned_constants():
    assert isinstance(COMMON_ANSWER_WORDS_VERSION, int) and 150 <= len(COMMON_ANSWER_WORDS) <= 300
    assert all(w == w.strip().lower() and " " not in w for w in COMMON_ANSWER_WORDS)
    assert {"black", "white", "brown", "gray", "pink", "yes", "no", "both", "neither", "none", "the", "it"} \
        <= COMMON_ANSWER_WORDS
    for needle in (str(MIN_PREFIX), str(MAX_NEW_TOKENS), f"version {COMMON_ANSWER_WORDS_VERSION}", "first tokens"):
        assert needle in RULE_TEXT
    assert json.dumps(RULE_TEXT)


def test_organism_word_tokens_are_its_labels_unchanged():
    from mechmod.data.color import COLORS
    from mechmod.models.organism import CHECKPOINT_DIR
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(str(CHECKPOINT_DIR)).tokenizer
    ls = LabelSet(tok, list(COLORS))
    vocab = tok.get_vocab()
    assert {c: ls.token_ids(c) for c in COLORS} == {c: [vocab[c]] for c in COLORS}
    logits = torch.full((2, len(tok)), -1e4)
    logits[0, vocab["blue"]] = logits[1, vocab["the"]] = 5.0
    assert ls.predict(logits) == ["blue", OTHER]


def test_greedy_and_extend_inputs():
    out = greedy(lambda rows, w: _one_hot(["ed"] * len(rows)), torch.tensor([ID["▁R"], ID["▁B"]]), [1],
                 done=lambda ids: len(ids) >= 3, max_new_tokens=4)
    assert out == {1: [ID["▁B"], ID["ed"], ID["ed"]]}
    inputs = {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
              "token_type_ids": torch.ones(2, 3, dtype=torch.long), "pixel_values": torch.zeros(2, 3)}
    ext = extend_inputs(inputs, torch.tensor([1]), torch.tensor([[4, 2]]), pad_id=0)
    assert ext["input_ids"].tolist() == [[0, 5, 6, 0, 0], [7, 8, 9, 4, 2]]
    assert ext["attention_mask"][:, 3:].eq(1).all() and ext["token_type_ids"][:, 3:].eq(0).all()
    assert ext["pixel_values"] is inputs["pixel_values"]


@pytest.fixture(scope="module", params=("qwen2_vl", "gemma3"))
def tiny(request, tiny_dir):
    return load_model(str(tiny_dir(request.param)))


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_rows_reencoded_once_then_continued_over_their_cache(family, tiny_dir):
    """Text-only rows (left-padded; M-RoPE on the Qwen families after an
    image forward, token types on Gemma 3) asked for over greedy's steps, fewer each step: each prompt
    runs once, the later steps compute only the written tokens, and the
    logits are those of the whole batch run again with them appended."""
    tiny = load_model(str(tiny_dir(family)))
    descs = ["the circle is red .", "a square", "the big blue circle is on the left ."]
    questions = ["what color is the circle ?"] * 3
    with torch.no_grad():  # an image forward first: Qwen2-VL keeps its position offsets, which text must not take
        tiny.model(**tiny.encode([Image.new("RGB", (64, 32))] * 2, [None, "a"], questions[:2]).inputs)
    enc = tiny.encode([None] * 3, descs, questions)
    full = reforward(enc.inputs, model_next_logits(tiny.model), tiny.tokenizer.pad_token_id)
    cont = reencoded(tiny, [None] * 3, descs, questions, batch_size=2)
    tokens = tiny.tokenizer.encode(" blue square on the left", add_special_tokens=False)[:3]
    for k, rows in enumerate(([0, 1, 2], [0, 2], [2]), start=1):
        rows, w = torch.tensor(rows), torch.tensor([tokens[:k]] * len(rows))
        widths = []  # input widths of the continuation's forwards in this step
        hook = tiny.model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]),
                                                    with_kwargs=True)
        try:
            got = cont(rows, w)
        finally:
            hook.remove()
        torch.testing.assert_close(got, full(rows, w), atol=1e-4, rtol=0)
        prompt = enc.inputs["input_ids"].shape[1]
        assert len(widths) == (4 if k == 1 else 1 if k == 3 else 2)  # step 1: 2 prompt batches + 2 continuations
        assert all(x == k for x in widths[-(1 if k == 3 else 2):]) and (k > 1 or max(widths) <= prompt)


def test_cache_continuation_equals_a_full_reforward(tiny):
    """Left-padded rows, M-RoPE (Qwen2-VL) and token types (Gemma 3): the
    undecided rows continued over the prompt's KV cache give the logits of
    the whole batch run again with the written tokens appended, of their
    prompts encoded anew, and of their text tails over each image's prefix."""
    images = [Image.new("RGB", (64, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    enc = tiny.encode(images, ["the circle is red .", None], ["what color is the circle ?"] * 2)
    with torch.no_grad():
        out = tiny.model(**enc.inputs, use_cache=True, logits_to_keep=1)
    cached = over_cache(tiny, enc.inputs, getattr(out, cache_kwarg(tiny.model)))
    full = reforward(enc.inputs, model_next_logits(tiny.model), tiny.tokenizer.pad_token_id)
    again = reencoded(tiny, images, ["the circle is red .", None], ["what color is the circle ?"] * 2, batch_size=1)
    shared = over_prefixes(tiny, images, ["the circle is red .", None], ["what color is the circle ?"] * 2)
    one_image = over_prefixes(tiny, [images[1]] * 2, ["the circle is red .", None], ["what color is the circle ?"] * 2)
    enc1 = tiny.encode([images[1]] * 2, ["the circle is red .", None], ["what color is the circle ?"] * 2)
    full1 = reforward(enc1.inputs, model_next_logits(tiny.model), tiny.tokenizer.pad_token_id)

    def ids(text, n):
        got = tiny.tokenizer.encode(text, add_special_tokens=False)[:n]
        assert len(got) == n
        return got

    for rows, written in ((torch.tensor([1]), [ids(" red", 1)]),
                          (torch.tensor([0, 1]), [ids(" blue .", 2), ids(" red ?", 2)])):
        w = torch.tensor(written)
        got = cached(rows, w)
        torch.testing.assert_close(got, full(rows, w), atol=1e-4, rtol=0)
        torch.testing.assert_close(again(rows, w), got, atol=1e-4, rtol=0)  # the rows' prompts encoded anew
        torch.testing.assert_close(shared(rows, w), got, atol=1e-4, rtol=0)  # over each image's prefix
        torch.testing.assert_close(one_image(rows, w), full1(rows, w), atol=1e-4, rtol=0)  # one prefix, two rows
        torch.testing.assert_close(cached(rows, w), got, atol=0, rtol=0)  # the prompt's cache was not written


def test_a_kept_prefix_serves_the_continuation_without_its_forward(tiny, monkeypatch):
    """trace_shared keeps the prefix forwards its ``keep`` asks for (each
    image's own copy, up to KEEP_BYTES); over_prefixes continues over them
    with the logits of a fresh prefix forward and runs none, the tails of
    same-shaped images in one batch (M-RoPE deltas kept with Qwen2-VL,
    sliding windows with Gemma 3)."""
    import mechmod.prefix as prefix

    images = [Image.new("RGB", (64, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    descs, questions = ["the circle is red .", None], ["what color is the circle ?"] * 2
    prompts = [[(d, q)] for d, q in zip(descs, questions)]
    kept = {}
    prefix.trace_shared(tiny, images, prompts, keep=lambda logits: True, kept=kept)
    assert sorted(kept) == [0, 1] and all(k.cache.layers[0].keys.shape[0] == 1 for k in kept.values())
    fresh = over_prefixes(tiny, images, descs, questions)
    reused = over_prefixes(tiny, images, descs, questions, kept=[kept[0], kept[1]])
    rows = torch.tensor([0, 1])
    w = torch.tensor([tiny.tokenizer.encode(" blue .", add_special_tokens=False)[:2]] * 2)
    want = fresh(rows, w)

    def no_forward(*args):
        raise AssertionError("a kept prefix ran its forward again")

    calls = []
    tails = prefix._tails
    with monkeypatch.context() as m:
        m.setattr(prefix, "_prefix_forward", no_forward)
        m.setattr(prefix, "_tails", lambda *args: calls.append(1) or tails(*args))
        torch.testing.assert_close(reused(rows, w), want, atol=1e-5, rtol=0)
    assert len(calls) == len({k.key for k in kept.values()})  # same-shaped kept prefixes stacked: one batch
    monkeypatch.setattr(prefix, "KEEP_BYTES", max(k.nbytes for k in kept.values()))  # room for one only
    one = {}
    prefix.trace_shared(tiny, images, prompts, keep=lambda logits: True, kept=one)
    assert len(one) == 1
    none = {}
    prefix.trace_shared(tiny, images, prompts, keep=lambda logits: False, kept=none)
    assert none == {}


def test_undecided_rows_are_those_the_prediction_writes_on():
    labels = LabelSet(PieceTokenizer(), ["blue", "black", "red"])
    logits = torch.full((3, len(PIECES)), -9.0)
    for r, piece in enumerate(["▁B", "▁Blue", "▁zz"]):
        logits[r, PIECES.index(piece)] = 9.0
    assert labels.undecided(logits) == [True, False, False]  # '▁B' may begin blue or black
