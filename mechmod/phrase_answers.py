"""Answers that are phrases: MC2's two answers of a case ("eating" against
"playing in a field") read the way :class:`~mechmod.answers.LabelSet`
reads one-word labels, so that scoring treats both alike.

The rule is :data:`PHRASE_RULE_TEXT`. The answer is the phrase the model
writes greedily (at most :data:`PHRASE_TOKENS` tokens, up to a new line,
the end of a sentence or an end-of-turn token), matched to the two answers
by :func:`mechmod.phrases.match_phrase`. A phrase's probability, lens votes
and logit differences go through its first word (articles dropped), the
word the first token begins: a :class:`LabelSet` of the two first words.
When both answers begin with the same word ("playing soccer", "playing
tennis") the first token cannot tell them apart: ``votes_defined`` is
False and scoring records no layer votes for the case.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from mechmod.answers import OTHER, LabelSet
from mechmod.decoding import Continuation, greedy
from mechmod.errors import MechmodError
from mechmod.phrases import ARTICLES, TEXT, VISION, match_phrase

#: the most tokens a phrase answer is written to
PHRASE_TOKENS = 8

PHRASE_RULE_TEXT = (
    "Cases whose answers are phrases (MC2) are answered by the phrase the model writes greedily, at most "
    f"{PHRASE_TOKENS} tokens, up to a new line, the end of a sentence or an end-of-turn token. The phrase is "
    "matched to the two answers by the words it shares with each (lower case, punctuation and articles "
    "dropped, plurals and -ing stemmed; word-set F1): the answer sharing strictly more is the prediction, a "
    "tie or no shared word is 'other'. An answer's probability, the per-layer lens votes and logit "
    "differences use its first word (articles dropped) under the one-word rule; where both answers begin "
    "with the same word, the case has no layer votes or logit differences (empty lists)."
)

_END = re.compile(r"\n|[.!?](?=\s|$)")
_WORD = re.compile(r"[0-9a-z]+")


def is_phrase_labels(labels: Sequence[str]) -> bool:
    """Whether some answer of ``labels`` is more than one word."""
    return any(len(str(x).split()) > 1 for x in labels)


def answer_set(tokenizer, labels: Sequence[str]) -> "LabelSet | PhraseSet":
    """The reader of a case's candidates: a :class:`PhraseSet` when one of
    them is a phrase, else a :class:`LabelSet`."""
    return PhraseSet(tokenizer, labels) if is_phrase_labels(labels) else LabelSet(tokenizer, labels)


def first_word(answer: str) -> str:
    """The first word of ``answer``, lower case, articles and punctuation
    dropped ("A red car" -> "red"); the answer itself if it has none."""
    words = [w for w in _WORD.findall(answer.lower().replace("'", "")) if w not in ARTICLES]
    return words[0] if words else answer.strip().lower()


class PhraseSet:
    """The two answers of a case, one of them a phrase, read by the rule of
    :data:`PHRASE_RULE_TEXT`; the same methods as :class:`LabelSet`
    (``labels`` are the answers, in the order given: vision, text)."""

    def __init__(self, tokenizer, labels: Sequence[str]):
        labels = [str(x) for x in labels]
        if len(labels) != 2 or labels[0].casefold() == labels[1].casefold():
            raise MechmodError(f"phrase answers are matched between two different answers (a case's vision and "
                               f"text answers), got {labels}")
        self.labels = labels
        self.tokenizer = tokenizer
        self._firsts = [first_word(x) for x in labels]
        self.votes_defined = self._firsts[0] != self._firsts[1]
        self.first = LabelSet(tokenizer, list(dict.fromkeys(self._firsts)))
        self._special = {int(t) for t in getattr(tokenizer, "all_special_ids", []) or []}

    def __repr__(self) -> str:
        return f"PhraseSet({self.labels}, first words {self._firsts})"

    # --------------------------------------------------------- the phrase
    def phrase(self, ids: Sequence[int]) -> tuple[str, bool]:
        """The text that written token ``ids`` give, cut at the phrase's end,
        and whether it has ended (an end-of-turn token, a new line or the end
        of a sentence)."""
        ids = [int(t) for t in ids]
        cut = next((i for i, t in enumerate(ids) if t in self._special), None)
        text = self.tokenizer.decode(ids if cut is None else ids[:cut]).lstrip()
        end = _END.search(text)
        return (text if end is None else text[: end.start()]).strip(), cut is not None or end is not None

    def label_of_text(self, text: str) -> str:
        """The answer a written phrase gives (:func:`mechmod.phrases.match_phrase`), or 'other'."""
        match = match_phrase(text, self.labels[0], self.labels[1])
        return {VISION: self.labels[0], TEXT: self.labels[1]}.get(match, OTHER)

    def label_of_tokens(self, ids: Sequence[int], final: bool) -> str | None:
        """The answer (or 'other') that written token ``ids`` give; None
        while the phrase goes on and not ``final``."""
        text, ended = self.phrase(ids)
        return self.label_of_text(text) if ended or final or len(ids) >= PHRASE_TOKENS else None

    def undecided(self, logits: torch.Tensor) -> list[bool]:
        """[B, V] -> per row whether its top-1 token leaves the phrase open
        (:meth:`predict` writes on there)."""
        return [not self.phrase([int(t)])[1] for t in logits.argmax(dim=-1).cpu()]

    def predict(self, logits: torch.Tensor, continuation: Continuation | None = None,
                max_new_tokens: int = PHRASE_TOKENS - 1) -> list[str]:
        """[B, V] next-token logits -> the answer (or 'other') of the phrase
        each row writes greedily, ``continuation`` giving the logits after
        the tokens written (without one, the phrase is the top-1 token)."""
        top = logits.argmax(dim=-1).cpu()
        rows = list(range(top.shape[0]))
        if continuation is None:
            written = {r: [int(top[r])] for r in rows}
        else:
            written = greedy(continuation, top, rows, lambda ids: self.phrase(ids)[1], max_new_tokens,
                             stop_ids=self._special)
        return [self.label_of_text(self.phrase(written[r])[0]) for r in rows]

    # ------------------------------------------------- first-word readings
    def token_ids(self, label: str) -> list[int]:
        """The tokens that count for ``label``'s first word."""
        return self.first.token_ids(self._first_of(label))

    def logit_token_ids(self, label: str) -> list[int]:
        """The tokens whose logit stands for ``label`` in a logit difference
        (its first word's, :meth:`LabelSet.logit_token_ids`)."""
        return self.first.logit_token_ids(self._first_of(label))

    def label_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., V] -> [..., 2]: each answer's first-word probability (equal
        where both answers begin with the same word)."""
        p = self.first.label_probs(logits)
        return torch.stack([p[..., self.first.labels.index(w)] for w in self._firsts], dim=-1)

    def labels_of(self, token_ids: torch.Tensor) -> np.ndarray:
        """Token ids [...] -> object array [...] of the answer whose first
        word they own, or 'other' (all 'other' when the first words are the
        same: no vote)."""
        if not self.votes_defined:
            return np.full(tuple(token_ids.shape), OTHER, dtype=object)
        names = dict(zip(self._firsts, self.labels))
        return np.vectorize(lambda w: names.get(w, OTHER), otypes=[object])(self.first.labels_of(token_ids))

    def top1_labels(self, logits: torch.Tensor) -> np.ndarray:
        """[..., V] -> the answer the top-1 token's first word gives, or 'other'."""
        return self.labels_of(logits.argmax(dim=-1))

    def _first_of(self, label: str) -> str:
        if label not in self.labels:
            raise MechmodError(f"{label!r} is not one of the answers {self.labels}")
        return self._firsts[self.labels.index(label)]
