"""Matching a decoded short phrase to one of two multi-word answers."""

from __future__ import annotations

import pytest

from mechmod.phrases import match_phrase, overlap_f1, stem, words


@pytest.mark.parametrize("word, expected", [
    ("playing", "play"), ("running", "run"), ("sitting", "sit"), ("rolling", "roll"), ("skiing", "ski"),
    ("grazing", "graz"), ("graze", "graz"), ("horses", "hors"), ("horse", "hors"), ("puppies", "puppy"),
    ("benches", "bench"), ("glasses", "glass"), ("grass", "grass"), ("tennis", "tennis"), ("bus", "bus"),
    ("sing", "sing"), ("lying", "lying"), ("seeing", "see"), ("tree", "tree"), ("flies", "fly"), ("flying", "fly"),
])
def test_stem(word, expected):
    assert stem(word) == expected


def test_words_normalise_case_punctuation_articles():
    assert words(" Standing still.") == words("standing  STILL") == {"stand", "still"}
    assert words("Playing in a field!") == {"play", "in", "field"}
    assert words("The dog's ball, an owl") == {"dog", "ball", "owl"}  # "dog's" -> "dogs" -> "dog"
    assert words("it\u2019s") == words("it's") == {"its"}
    assert words("") == words("a the an ...") == frozenset()


def test_overlap_f1():
    assert overlap_f1(frozenset({"a", "b"}), frozenset({"a", "b"})) == 1.0
    assert overlap_f1(frozenset({"a"}), frozenset({"a", "b"})) == pytest.approx(2 / 3)
    assert overlap_f1(frozenset(), frozenset()) == 0.0


@pytest.mark.parametrize("decoded, vision, text, expected", [
    # exact
    ("eating", "eating", "playing in a field", "vision"),
    ("playing in a field", "eating", "playing in a field", "text"),
    # case, punctuation, articles, leading spaces of the release
    ("Eating.", "eating", "playing in a field", "vision"),
    ("Playing in the field!", "eating", "playing in a field", "text"),
    ("STANDING STILL", "running", " standing still", "text"),
    # partial: the nearer answer by F1
    ("playing", "eating", "playing in a field", "text"),
    ("The sheep are eating grass", "eating", "playing in a field", "vision"),
    ("standing", "standing", "standing still", "vision"),
    ("standing still", "standing", "standing still", "text"),
    ("frisbee", "playing frisbee", "playing tennis", "vision"),
    ("they play tennis", "playing frisbee", "playing tennis", "text"),
    # stemming: plural and -ing forms meet
    ("grazes", "running", "grazing", "text"),
    ("two horses", "horse", "cow", "vision"),
    # tie: only the shared word
    ("playing", "playing frisbee", "playing tennis", "other"),
    ("playing golf", "playing frisbee", "playing tennis", "other"),
    # neither: no shared word
    ("sleeping", "eating", "drinking", "other"),
    ("", "eating", "drinking", "other"),
    ("...", "eating", "drinking", "other"),
])
def test_match_phrase(decoded, vision, text, expected):
    assert match_phrase(decoded, vision, text) == expected


def test_match_phrase_is_symmetric_in_the_answers():
    for decoded in ("playing", "eating grass", "standing", "sleeping"):
        a = match_phrase(decoded, "eating", "playing in a field")
        b = match_phrase(decoded, "playing in a field", "eating")
        assert {a, b} == {"other"} or {a, b} == {"vision", "text"}
