"""The colour set's descriptions per text tier (direct, indirect simple,
indirect through world knowledge), the controls' shape swaps, and the
question."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mechmod.data.color.vocabulary import (COLORS, COMMAND, CONTROL_SHAPES, INDIRECT_SHAPES, QUESTION, TARGET_SHAPES,
                                           ColorGroup)
from mechmod.data.knowledge import KNOWLEDGE
from mechmod.errors import MechmodError
from mechmod.names import CONTROLS, OPT_IN_CONTROLS

N_DT = 3

#: hand-written paraphrases per text tier ({A} target, {T} colour, {B} bridge
#: shape, {D} knowledge thing); the seed picks one per description
TEMPLATES: dict[int, tuple[str, ...]] = {
    0: (
        "The {A} is {T}.",
        "The {A} in the picture is {T}.",
        "The color of the {A} is {T}.",
        "The {A} has a {T} color.",
        "The {A} is colored {T}.",
        "The {A} is painted {T}.",
    ),
    1: (
        "The {A}'s color is the same as {aB}. The {B} is {T}.",
        "The {A} has the same color as the {B}. The {B} is {T}.",
        "The {B} is {T}, and the {A} is the same color as the {B}.",
        "The {A} and the {B} share one color. The {B} is {T}.",
        "The color of the {A} matches the {B}. The {B} is {T}.",
    ),
    2: (
        "The {A}'s color is the same as {D}.",
        "The {A} has the same color as {D}.",
        "The {A} is the color of {D}.",
        "The color of the {A} matches {D}.",
        "The {A} looks just like {D} in color.",
    ),
}
TEXT_TIERS = {-1: "original (no description)", 0: "direct", 1: "indirect simple", 2: "indirect"}


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass(frozen=True)
class Description:
    """A description with the choices behind it."""

    text: str
    dt: int
    control: str
    template: int  # index into TEMPLATES[dt] (-1 for the original tier)
    described_shape: str  # the shape the description talks about
    asked_shape: str  # the shape the question asks about
    bridge_shape: str  # B (dt 1) or ""
    thing: str  # D (dt 2) or ""


def describe_ex(group: ColorGroup, dt: int, rng: np.random.Generator, control: str = "none") -> Description:
    """Like :func:`describe`, returning the choices as well. Draw order from
    ``rng`` (fixed, part of the determinism contract): template, bridge
    shape / thing, control shape."""
    if control not in CONTROLS + OPT_IN_CONTROLS:
        raise MechmodError(f"unknown control {control!r}; choose from {', '.join(CONTROLS + OPT_IN_CONTROLS)}")
    if dt is None or dt == -1:
        A = group.target_shape
        if control == "image_irrelevant":
            A = CONTROL_SHAPES[int(rng.integers(len(CONTROL_SHAPES)))]
        return Description("", -1, control, -1, "", A, "", "")
    if not isinstance(dt, (int, np.integer)) or dt not in TEMPLATES:
        raise MechmodError(f"invalid text tier dt={dt!r}; tiers are 0, 1, 2 (or -1 for no description)")
    color = group.vision_color if control == "consistent" else group.text_color
    if color not in KNOWLEDGE:
        raise MechmodError(f"unknown color {color!r}; choose from {', '.join(COLORS)}")
    templates = TEMPLATES[int(dt)]
    t = int(rng.integers(len(templates)))
    B = D = ""
    if dt == 1:
        B = INDIRECT_SHAPES[int(rng.integers(len(INDIRECT_SHAPES)))]
    elif dt == 2:
        things = KNOWLEDGE[color]
        D = things[int(rng.integers(len(things)))]
    A = asked = group.target_shape
    if control == "text_irrelevant":
        others = [s for s in TARGET_SHAPES if s != group.target_shape]
        A = others[int(rng.integers(len(others)))]
    elif control == "image_irrelevant":
        A = asked = CONTROL_SHAPES[int(rng.integers(len(CONTROL_SHAPES)))]
    text = templates[t].format(A=A, T=color, B=B, aB=_article(B) if B else "", D=D)
    return Description(text, int(dt), control, t, A, asked, B, D)


def describe(group: ColorGroup, dt: int, rng: np.random.Generator, control: str = "none") -> str:
    """The conflicting description of ``group`` at text tier ``dt``:

    * 0 direct: "The A is T."
    * 1 indirect simple: "The A's color is the same as a B. The B is T." (B a
      shape never drawn, from :data:`INDIRECT_SHAPES`)
    * 2 indirect: "The A's color is the same as D." (D from
      :data:`mechmod.data.knowledge.KNOWLEDGE`)
    * -1 (or None): the original, no description: ``""``.

    Each tier has several paraphrase templates; ``rng`` picks one.
    ``control="text_irrelevant"`` replaces A in the description by another
    drawn shape (the question still asks about A); ``"image_irrelevant"``
    replaces A by a never-drawn shape (:data:`CONTROL_SHAPES`); ask
    :func:`question_for` that shape (see :func:`describe_ex`,
    ``asked_shape``). ``"consistent"`` states the image's colour in the
    same template (same bridge shape; a thing of the image's colour at the
    same draw), so only the colour word (or thing) tells it from the
    conflict case."""
    return describe_ex(group, dt, rng, control).text


def question_for(shape: str) -> str:
    """ "What color is the {shape}? Please use one word to answer this question." """
    return f"{QUESTION.format(A=shape)} {COMMAND}"
