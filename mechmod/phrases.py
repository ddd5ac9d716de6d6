"""Which of two multi-word answers a decoded short phrase gives.

MC2 answers are often phrases ("playing in a field", " standing still"),
so a one-token label cannot tell them apart; the decoded answer is matched
to the two answers by the words they share.

The rule
--------
1. **Words.** A text is lower-cased, apostrophes are dropped ("it's" ->
   "its"), every other character that is not a letter or digit separates
   words, and the articles ``a``, ``an``, ``the`` are removed.
2. **Stems.** Each word is reduced by a few suffix rules, applied in this
   order (short words are left alone):

   - plurals: ``-ies`` -> ``-y`` (``puppies``), ``-sses``/``-ches``/
     ``-shes``/``-xes``/``-zes`` lose ``-es`` (``glasses``, ``benches``,
     ``boxes``), otherwise a final ``-s`` goes unless the word ends in
     ``-ss``, ``-us`` or ``-is`` (``dogs``; not ``grass``, ``bus``,
     ``tennis``);
   - ``-ing`` goes from words of six letters or more, and a doubled final
     consonant other than l, s, z is undoubled (``running`` -> ``run``,
     ``rolling`` -> ``roll``; ``sing`` and ``lying`` stay);
   - a final ``-e`` goes unless it is ``-ee`` (``graze`` and ``grazing``
     both give ``graz``).
3. **Overlap.** The decoded phrase and each answer become sets of stems;
   each answer scores the F1 of its set against the phrase's set
   (2 * shared / (|phrase| + |answer|)).
4. **Decision.** The answer with the strictly higher F1 wins
   (``'vision'`` or ``'text'``); equal scores (a tie, or no shared word at
   all) give ``'other'``.

Known limit: a third answer that shares a word with only one of the two
counts as that one ("playing golf" against "playing frisbee" / "eating"
is ``'vision'``); word overlap cannot tell a wrong sport from a right one.
"""

from __future__ import annotations

import re

ARTICLES = frozenset({"a", "an", "the"})
VISION, TEXT, OTHER = "vision", "text", "other"

_NON_WORD = re.compile(r"[^0-9a-z]+")


def stem(word: str) -> str:
    """The stem of one lower-case word under the plural, -ing and -e rules
    of the module docstring."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 4 and word.endswith(("sses", "ches", "shes", "xes", "zes")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) >= 6 and word.endswith("ing"):
        word = word[:-3]
        if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "aeioulsz":
            word = word[:-1]
    if len(word) > 3 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]
    return word


def words(text: str) -> frozenset[str]:
    """The normalised word stems of ``text`` (rules 1 and 2)."""
    tokens = _NON_WORD.split(text.lower().replace("'", "").replace("\u2019", ""))
    return frozenset(stem(t) for t in tokens if t and t not in ARTICLES)


def overlap_f1(phrase: frozenset[str], answer: frozenset[str]) -> float:
    """F1 of two word sets: 2 * |shared| / (|phrase| + |answer|); 0 if both are empty."""
    total = len(phrase) + len(answer)
    return 2 * len(phrase & answer) / total if total else 0.0


def match_phrase(decoded: str, answer_vision: str, answer_text: str) -> str:
    """``'vision'``, ``'text'`` or ``'other'``: the answer whose words the
    decoded phrase shares best (rules 3 and 4 of the module docstring)."""
    phrase = words(decoded)
    f_v = overlap_f1(phrase, words(answer_vision))
    f_t = overlap_f1(phrase, words(answer_text))
    if f_v > f_t:
        return VISION
    if f_t > f_v:
        return TEXT
    return OTHER
