"""Answers are words: a :class:`LabelSet` decides which answer label
("blue") a model gives, as the word it would write.

The rule is :data:`RULE_TEXT`. In short: a token *owns* a label when its
text (space marks and case dropped) is the whole label or a prefix of at
least :data:`MIN_PREFIX` characters that no other label and no word of
:data:`COMMON_ANSWER_WORDS` begins; "B" could begin "Blue" or "Black" and
owns nothing. The prediction is the label of the top-1 token when it owns
one; when the top-1 token may still begin a label (a shared or too short
piece, a space, an opening quote) the next few tokens are written
greedily (:mod:`mechmod.decoding`) and the word is matched. A label's
probability is the sum of the first-token probabilities of the tokens it
owns; per-layer lens votes count owned tokens only.
"""

from __future__ import annotations

import re
import weakref
from typing import Sequence

import numpy as np
import torch

from mechmod.decoding import Continuation, greedy
from mechmod.errors import MechmodError

OTHER = "other"
MIN_PREFIX = 3
MAX_NEW_TOKENS = 4

COMMON_ANSWER_WORDS_VERSION = 1
#: One-word answers a model may give instead of a label (version
#: :data:`COMMON_ANSWER_WORDS_VERSION`): a label's prefix that begins one of
#: them is not the label's ("gre" begins "grey"). Inflections of the
#: study's own labels ("metallic", "cylindrical") are left out on purpose:
#: they would take the labels' own first pieces ("▁cyl") from them.
COMMON_ANSWER_WORDS: frozenset[str] = frozenset("""
red orange yellow green blue purple black white brown gray grey pink gold golden silver beige tan maroon
navy teal turquoise violet magenta cyan lime olive indigo lavender cream bronze copper peach amber
multicolored colorful transparent clear dark light
yes no not none nothing neither both all any either maybe unknown unsure unclear sure true false
correct incorrect right wrong ok okay sorry
the a an it its this that these those there they he she we you i my one some each every
which what who where when why how is are was be in on of and or to with as at by for from if so but
because based according looks appears seems likely probably image picture photo object color colour
shape material answer
circle square triangle rectangle oval star heart diamond cross hexagon pentagon octagon polygon cube
sphere cylinder cone pyramid prism ball box block disk disc ring round flat line arrow crescent ellipse
metal rubber plastic wood wooden glass paper stone rock fabric cloth leather ceramic concrete steel
iron aluminum foam
zero two three four five six seven eight nine ten many several few single double
0 1 2 3 4 5 6 7 8 9 10
small large big tiny medium left top bottom middle center front back up down inside outside above
below same different another empty blank solid shiny matte dull smooth rough soft hard
""".split())

RULE_TEXT = (
    "A prediction is the label of the word the model would write. A token counts for a label only if, "
    "after the tokenizer's space marks are stripped and case is folded, it is the whole label or a prefix "
    f"of at least {MIN_PREFIX} characters that no other label and no word of a fixed list of common "
    f"one-word answers (version {COMMON_ANSWER_WORDS_VERSION}: other colours, yes/no, both, none, "
    "pronouns, shapes, materials, numbers) begins; so \"B\" (Blue or Black?) and \"C\" (Cube or "
    "Cylinder?) count for nothing. When the top-1 token owns a label, that label is the prediction. When "
    "it may still begin a label (a shared or too short piece, a space or an opening quote), up to "
    f"{MAX_NEW_TOKENS} more tokens are decoded greedily and the first word written, punctuation stripped, "
    "is matched by the same rule; anything else is 'other'. A label's probability is the sum of the "
    "next-token probabilities of the tokens it owns (first tokens only), and per-layer lens votes count "
    "owned tokens only; a label that owns no token (cyan in Llama's vocabulary, written '▁cy' 'an') reads "
    "probability 0 and is predicted through decoding alone."
)

_WORD = re.compile(r"[^\W_]+")
_index_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _norm(piece: str) -> str:
    """A token's text without space marks (SentencePiece ▁, byte-level Ġ,
    spaces), case folded."""
    return piece.replace("▁", " ").replace("Ġ", " ").strip().casefold()


def _vocab_index(tokenizer) -> dict[str, list[int]]:
    """Normalised token string -> token ids, over the whole vocabulary
    (cached per tokenizer: the runner builds a LabelSet per chunk)."""
    try:
        return _index_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    index: dict[str, list[int]] = {}
    for piece, tid in tokenizer.get_vocab().items():
        index.setdefault(_norm(piece), []).append(tid)
    try:
        _index_cache[tokenizer] = index
    except TypeError:  # a tokenizer that cannot be weakly referenced is indexed each time
        pass
    return index


def _variants(label: str) -> list[str]:
    """How a label may be written: lower, capitalised, upper case, each with
    and without a leading space."""
    return [space + form for form in dict.fromkeys([label, label.capitalize(), label.upper()]) for space in ("", " ")]


def _special_ids(tokenizer) -> set[int]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if tokenizer.unk_token_id is not None:
        special.add(tokenizer.unk_token_id)
    return special


class LabelSet:
    """The candidate labels of a task, resolved against one tokenizer by
    the rule of :data:`RULE_TEXT`. ``unowned``: labels that own no token
    (probability 0; predicted through decoding only)."""

    def __init__(self, tokenizer, labels: Sequence[str]):
        labels = [str(x) for x in labels]
        folded = [x.casefold() for x in labels]
        if not labels or len(set(folded)) != len(folded):
            raise MechmodError(f"LabelSet needs distinct labels, got {labels}")
        if OTHER in folded:
            raise MechmodError(f"{OTHER!r} is reserved for answers outside the label set")
        self.labels = labels
        self.tokenizer = tokenizer
        self._folded = folded
        self._special = _special_ids(tokenizer)
        unwritable = [lab for lab in labels if not self._writable(lab)]
        if unwritable:
            raise MechmodError(f"the tokenizer cannot write the answer label(s) {unwritable} (they encode to "
                               "unknown or special tokens); use other labels or another tokenizer")
        self._first = {lab: self._first_pieces(f) for lab, f in zip(labels, folded)}
        owned: dict[int, list[int]] = {i: [] for i in range(len(labels))}
        for tid in sorted(self._spellings() | set().union(*self._first.values())):
            owner = self._owner(_norm(tokenizer.decode([tid])))
            if owner is not None:
                owned[owner].append(tid)
        self._ids = {lab: owned[i] for i, lab in enumerate(labels)}
        self.unowned = [lab for lab in labels if not self._ids[lab]]

    def __repr__(self) -> str:
        return f"LabelSet({', '.join(f'{k}:{len(v)}' for k, v in self._ids.items())})"

    # ------------------------------------------------------------ the rule
    def _owner(self, word: str) -> int | None:
        """Index of the label that the normalised ``word`` counts for, or None."""
        if word in self._folded:
            return self._folded.index(word)
        if len(word) < MIN_PREFIX:
            return None
        begun = [i for i, lab in enumerate(self._folded) if lab.startswith(word)]
        if len(begun) != 1:
            return None
        own = self._folded[begun[0]]
        if any(w.startswith(word) for w in COMMON_ANSWER_WORDS if w != own):
            return None
        return begun[0]

    def _writable(self, label: str) -> bool:
        """Some case or space variant of ``label`` encodes without unknown or
        special tokens."""
        return any(ids and not set(ids) & self._special
                   for ids in (self.tokenizer.encode(text, add_special_tokens=False) for text in _variants(label)))

    def _spellings(self) -> set[int]:
        """Every vocabulary entry that spells a label or a long enough prefix
        of one (with the first pieces, the tokens that may own a label; the
        first pieces also find the tokens of labels a byte-level vocabulary
        spells in other bytes)."""
        index = _vocab_index(self.tokenizer)
        out: set[int] = set()
        for lab in self._folded:
            for k in range(min(MIN_PREFIX, len(lab)), len(lab) + 1):
                out.update(index.get(lab[:k], ()))
        return out - self._special

    def _first_pieces(self, label: str) -> list[int]:
        """The first token of each case and space variant of ``label`` as the
        tokenizer writes it (spaces alone skipped)."""
        out = []
        for text in _variants(label):
            first = next((t for t in self.tokenizer.encode(text, add_special_tokens=False)
                          if _norm(self.tokenizer.decode([t]))), None)
            if first is not None and first not in self._special:
                out.append(first)
        return sorted(set(out))

    def _state(self, text: str, final: bool) -> int | None:
        """What a written ``text`` gives: a label index, -1 for other, or None
        while its first word may still become a label (not ``final``)."""
        match = _WORD.search(text)
        if match is None:
            return -1 if final else None
        word = match.group().casefold()
        owner = self._owner(word)
        if owner is not None:
            return owner
        complete = final or bool(text[match.end():].replace("\ufffd", ""))  # U+FFFD: a character cut mid-bytes
        if complete or not any(lab.startswith(word) for lab in self._folded):
            return -1
        return None

    def label_of_text(self, text: str) -> str:
        """The label of the first word of a finished answer ``text`` (e.g.
        "Cube." -> "cube"), or 'other'."""
        i = self._state(text, final=True)
        return self.labels[i] if i >= 0 else OTHER

    def label_of_tokens(self, ids: Sequence[int], final: bool) -> str | None:
        """The label (or 'other') that written token ``ids`` give; None while
        not ``final`` and their first word may still become a label. A
        special token (end of turn) ends the answer."""
        ids = [int(t) for t in ids]
        cut = next((i for i, t in enumerate(ids) if t in self._special), None)
        if cut is not None:
            ids, final = ids[:cut], True
        i = self._state(self.tokenizer.decode(ids), final)
        return None if i is None else self.labels[i] if i >= 0 else OTHER

    # ------------------------------------------------------ tokens and logits
    def token_ids(self, label: str) -> list[int]:
        """Every token id that counts as ``label`` (may be empty: ``unowned``)."""
        if label not in self._ids:
            raise MechmodError(f"{label!r} is not one of the labels {self.labels}")
        return list(self._ids[label])

    def logit_token_ids(self, label: str) -> list[int]:
        """The tokens whose logit stands for ``label`` in a logit difference:
        the tokens it owns or, for an ``unowned`` label, the first pieces of
        its spellings (cyan: Llama's '▁cy', '▁C'), which count for nothing in
        votes, probabilities or predictions."""
        return self.token_ids(label) or list(self._first[label])

    def _index(self, vocab: int) -> torch.Tensor:
        """[vocab] long: label index of each token, -1 for none."""
        owner = torch.full((vocab,), -1, dtype=torch.long)
        for i, lab in enumerate(self.labels):
            ids = torch.tensor([t for t in self._ids[lab] if t < vocab], dtype=torch.long)
            owner[ids] = i
        return owner

    def label_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., V] logits -> [..., n_labels] float32 probabilities: softmax
        over the full vocabulary, summed over the tokens each label owns
        (first tokens only; an ``unowned`` label reads 0)."""
        p = torch.softmax(logits.float(), dim=-1)
        return torch.stack([p[..., self._ids[lab]].sum(-1) for lab in self.labels], dim=-1)

    def top1_labels(self, logits: torch.Tensor) -> np.ndarray:
        """[..., V] logits -> object array [...] of the label the top-1 token
        owns, or 'other' (no decoding: the per-layer lens votes)."""
        return self.labels_of(logits.argmax(dim=-1))

    def labels_of(self, token_ids: torch.Tensor) -> np.ndarray:
        """Token ids [...] -> object array [...] of the labels they own or 'other'."""
        ids = token_ids.cpu()
        owner = self._index(max(int(ids.max()) + 1, 1) if ids.numel() else 1)[ids]
        names = np.array(self.labels + [OTHER], dtype=object)
        return names[owner.numpy()]  # -1 indexes OTHER

    def _first_states(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[int | None]]:
        """Per row its top-1 token and what it gives (:meth:`_state`: a label
        index, -1 for other, None while it may still begin a label)."""
        top = logits.argmax(dim=-1).cpu()
        state: list[int | None] = [int(i) for i in self._index(logits.shape[-1])[top]]
        for r, tid in enumerate(top.tolist()):
            if state[r] < 0 and tid not in self._special:
                state[r] = self._state(self.tokenizer.decode([tid]), final=False)
        return top, state

    def undecided(self, logits: torch.Tensor) -> list[bool]:
        """[B, V] -> per row whether its top-1 token leaves the answer open
        (:meth:`predict` writes on there)."""
        return [s is None for s in self._first_states(logits)[1]]

    def predict(self, logits: torch.Tensor, continuation: Continuation | None = None,
                max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        """[B, V] next-token logits -> one label (or 'other') per row: the
        label the top-1 token owns, else the label of the word it begins.
        Rows whose top-1 token may still begin a label are written on by
        ``continuation`` (:mod:`mechmod.decoding`), up to ``max_new_tokens``
        more tokens; without one they are 'other'."""
        top, state = self._first_states(logits)
        pending = [r for r, s in enumerate(state) if s is None]
        if pending and continuation is not None:
            written = greedy(continuation, top, pending, lambda ids: self._state(self.tokenizer.decode(ids), False)
                             is not None, max_new_tokens, stop_ids=self._special)
            for r in pending:
                state[r] = self._state(self.tokenizer.decode(written[r]), final=True)
        return [self.labels[s] if s is not None and s >= 0 else OTHER for s in state]
