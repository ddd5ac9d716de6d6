"""The attribute set's descriptions per text tier and controls, and its
question.

Text tiers (dt): 0 direct ("The red object is a cube."), 1 indirect simple
(through an object absent from the image: "The red object's shape is the same
as the pink object. The pink object is a cube."), 2 indirect (a real-world
thing: "... the same as a die."), 3 spatial ("There is a cube; on the left of
the cube is a sphere. The red object's shape is the same as the object on
the right of the sphere."). Several templates per tier, picked by the seed.

Controls: ``text_irrelevant`` names, in the description only, an object of a
CLEVR colour absent from all the group's scenes; ``image_irrelevant`` names,
in the description and the question, an object of a colour CLEVR never draws
(pink, orange, black).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mechmod.data.attribute.vocabulary import ABSENT_COLORS, COMMAND, LABELS, SHAPES, AttrGroup, referent
from mechmod.data.knowledge import MATERIAL_KNOWLEDGE, SHAPE_KNOWLEDGE
from mechmod.errors import MechmodError
from mechmod.names import CONTROLS

N_DT = 4
TEXT_TIERS = {0: "direct", 1: "indirect simple", 2: "indirect", 3: "spatial"}

POSITIONS: tuple[tuple[str, str], ...] = (
    ("on the left of", "on the right of"),
    ("on the right of", "on the left of"),
    ("behind", "in front of"),
    ("in front of", "behind"),
)

TEMPLATES: dict[str, dict[int, tuple[str, ...]]] = {
    "shape": {
        0: ("The {A} is a {T}.", "The {A} in the picture is a {T}.", "The {A} has the shape of a {T}.",
            "The {A} is shaped like a {T}."),
        1: ("The {A}'s shape is the same as the {B}. The {B} is a {T}.",
            "The {A} has the same shape as the {B}. The {B} is a {T}.",
            "The {B} is a {T}, and the {A} has the same shape as the {B}."),
        2: ("The {A}'s shape is the same as {D}.", "The {A} has the same shape as {D}.",
            "The {A} is shaped like {D}."),
        3: ("There is a {T}; {P1} the {T} is a {S2}. The {A}'s shape is the same as the object {P2} the {S2}.",
            "There is a {T}, and {P1} the {T} there is a {S2}. The {A} has the same shape as the object {P2} "
            "the {S2}."),
    },
    "material": {
        0: ("The {A} is made of {T}.", "The {A} in the picture is made of {T}.", "The material of the {A} is {T}.",
            "The {A} is a {T} object."),
        1: ("The {A}'s material is the same as the {B}. The {B} is made of {T}.",
            "The {A} is made of the same material as the {B}. The {B} is made of {T}.",
            "The {B} is made of {T}, and the {A} is made of the same material as the {B}."),
        2: ("The {A}'s material is the same as {D}.", "The {A} is made of the same material as {D}.",
            "The material of the {A} matches {D}."),
        3: ("There is a {T} {S1}; {P1} the {S1} is a {S2}. The {A}'s material is the same as the object {P2} "
            "the {S2}.",
            "There is a {T} {S1}, and {P1} the {S1} there is a {S2}. The {A} is made of the same material as the "
            "object {P2} the {S2}."),
    },
}


@dataclass(frozen=True)
class AttrDescription:
    text: str
    dt: int
    control: str
    template: int
    described: str  # referent in the description
    asked: str  # referent in the question
    bridge: str
    thing: str


def question_attr(task: str, ref: str) -> str:
    """'What shape is the red object? Please use one word ...' /
    'What material is the red cube made of? Please use one word ...'"""
    if task == "shape":
        return f"What shape is the {ref}? {COMMAND}"
    return f"What material is the {ref} made of? {COMMAND}"


def attr_text(task: str, make_ref, color: str, answer_text: str, dt: int, rng: np.random.Generator,
              control: str = "none", irrelevant_color: str | None = None,
              answer_vision: str | None = None) -> AttrDescription:
    """Description of the target claiming ``answer_text`` at tier ``dt``.
    ``make_ref(color) -> str`` names an object like the target but of the
    given colour ('red object', 'large red metal object', 'red cube');
    ``color`` is the target's. Draw order from ``rng``: template, tier choices
    (bridge / thing / spatial words), control referent. ``irrelevant_color``:
    the colour of the text_irrelevant referent (absent from the image).
    ``answer_vision``: never named in the description (the spatial tier's
    second shape avoids it when another shape is left)."""
    if control not in CONTROLS:
        raise MechmodError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
    if not isinstance(dt, (int, np.integer)) or not 0 <= dt < N_DT:
        raise MechmodError(f"invalid text tier dt={dt!r}; attribute tiers are 0..{N_DT - 1}")
    if answer_text not in LABELS[task]:
        raise MechmodError(f"unknown {task} {answer_text!r}; choose from {', '.join(LABELS[task])}")
    templates = TEMPLATES[task][int(dt)]
    t = int(rng.integers(len(templates)))
    fields = {"T": answer_text, "B": "", "D": "", "S1": "", "S2": "", "P1": "", "P2": ""}
    bridge_color = ""
    if dt == 1:
        bridge_color = ABSENT_COLORS[int(rng.integers(len(ABSENT_COLORS)))]
        fields["B"] = referent(task, bridge_color, SHAPES[int(rng.integers(len(SHAPES)))])
    elif dt == 2:
        things = (SHAPE_KNOWLEDGE if task == "shape" else MATERIAL_KNOWLEDGE)[answer_text]
        fields["D"] = things[int(rng.integers(len(things)))]
    elif dt == 3:
        p1, p2 = POSITIONS[int(rng.integers(len(POSITIONS)))]
        fields["P1"], fields["P2"] = p1, p2
        if task == "shape":
            others = [s for s in SHAPES if s != answer_text]
            others = [s for s in others if s != answer_vision] or others
            fields["S2"] = others[int(rng.integers(len(others)))]
        else:
            s1 = SHAPES[int(rng.integers(len(SHAPES)))]
            others = [s for s in SHAPES if s != s1]
            fields["S1"], fields["S2"] = s1, others[int(rng.integers(len(others)))]
    A = asked = make_ref(color)
    if control == "text_irrelevant":
        if irrelevant_color is None or irrelevant_color == color:
            raise ValueError("text_irrelevant needs an irrelevant_color different from the target's")
        A = make_ref(irrelevant_color)
    elif control == "image_irrelevant":
        pool = [c for c in ABSENT_COLORS if c != bridge_color]
        A = asked = make_ref(pool[int(rng.integers(len(pool)))])
    text = templates[t].format(A=A, **fields)
    return AttrDescription(text, int(dt), control, t, A, asked, fields["B"], fields["D"])


def describe_attr_ex(group: AttrGroup, dt: int, rng: np.random.Generator, control: str = "none") -> AttrDescription:
    """Like :func:`describe_attr`, returning the choices as well (:func:`attr_text`
    for a group's target)."""
    return attr_text(group.task, lambda c: referent(group.task, c, group.target_shape), group.target_color,
                     group.text_answer, dt, rng, control, irrelevant_color=group.absent_color,
                     answer_vision=group.vision_answer)


def describe_attr(group: AttrGroup, dt: int, rng: np.random.Generator, control: str = "none") -> str:
    """The conflicting description of ``group`` at text tier ``dt`` (0-3)."""
    return describe_attr_ex(group, dt, rng, control).text
