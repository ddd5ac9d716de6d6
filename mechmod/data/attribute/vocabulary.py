"""The attribute set's vocabulary and its conflict groups.

A group is one target object (colour, shape, material; its colour is unique
in every scene of the group, so "the red object" refers to it), a visual
answer and a different textual answer; one scene per tier. In the shape
task no other object has the textual answer's shape (the conflicting shape
never appears in the image); in the material task (2 labels) the other
objects' materials are random. Colours are CLEVR's 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from mechmod.data.sampling import balanced_pairs, cycled
from mechmod.errors import MechmodError
from mechmod.names import ATTRIBUTE_TASKS as TASKS

CLEVR_COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
#: colours never drawn: referents of tier-1 bridges and of the image_irrelevant control
ABSENT_COLORS: tuple[str, ...] = ("pink", "orange", "black")
SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder")
MATERIALS: tuple[str, ...] = ("metal", "rubber")
SIZES: tuple[str, ...] = ("large", "small")
LABELS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "material": MATERIALS}
COMMAND = "Please use one word to answer this question."


@dataclass(frozen=True)
class AttrGroup:
    """One target object and its conflicting pair of answers. ``absent_color``
    is a CLEVR colour kept out of every scene of the group (the
    text_irrelevant referent)."""

    group_id: str
    index: int
    task: str
    target_shape: str
    target_material: str
    target_color: str
    absent_color: str
    vision_answer: str
    text_answer: str

    @property
    def referent(self) -> str:
        return referent(self.task, self.target_color, self.target_shape)


def referent(task: str, color: str, shape: str) -> str:
    """How the question names the object: 'red object' (shape task) or
    'red cube' (material task): never the asked attribute."""
    return f"{color} object" if task == "shape" else f"{color} {shape}"


def sample_attr_groups(n: int, seed: int, task: str, shapes: Iterable[str] | None = None) -> list[AttrGroup]:
    """``n`` groups of ``task`` ('shape' | 'material'), with the (visual,
    textual) answer pairs balanced as in :func:`mechmod.data.color.sample_groups`,
    target colours and the other attribute cycled. Prefix-stable."""
    if task not in TASKS:
        raise MechmodError(f"unknown attribute task {task!r}; choose from {', '.join(TASKS)}")
    if isinstance(n, bool) or int(n) != n or n <= 0:
        raise MechmodError(f"number of groups must be a positive integer, got {n!r}")
    n, seed = int(n), int(seed)
    if shapes is None:
        shapes = SHAPES
    shapes = tuple(dict.fromkeys(shapes))
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise MechmodError(f"unknown shape(s) {', '.join(map(repr, bad))}; choose from {', '.join(SHAPES)}")
    if task == "shape" and len(shapes) < 2:
        raise MechmodError("the shape task needs at least 2 shapes (image and text must disagree)")
    salt = 21 if task == "shape" else 31
    labels = shapes if task == "shape" else MATERIALS
    pairs = balanced_pairs(labels, n, seed, salt)
    colors = cycled(tuple(CLEVR_COLORS), n, seed, salt + 1)
    other = cycled(MATERIALS if task == "shape" else shapes, n, seed, salt + 2)
    width = max(4, len(str(n - 1)))
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, salt + 3, i])
        absent = [c for c in CLEVR_COLORS if c != colors[i]]
        v, t = pairs[i]
        shape, material = (v, other[i]) if task == "shape" else (other[i], v)
        out.append(AttrGroup(group_id=f"{task}-s{seed}-g{i:0{width}d}", index=i, task=task, target_shape=shape,
                             target_material=material, target_color=colors[i],
                             absent_color=absent[int(rng.integers(len(absent)))], vision_answer=v, text_answer=t))
    return out
