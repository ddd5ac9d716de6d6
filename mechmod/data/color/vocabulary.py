"""The colour set's vocabulary and its conflict groups: the answer colours,
the shapes (drawn, never drawn), the question, and the balanced, seeded
sampling of (target shape, visual colour, textual colour) groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from mechmod.data.sampling import balanced_pairs, cycled
from mechmod.errors import MechmodError

#: answer colours -> flat RGB (pairwise distances >= 90, >= 150 from white)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "yellow": (250, 220, 0),
    "blue": (20, 60, 230),
    "green": (20, 160, 40),
    "purple": (140, 30, 190),
    "orange": (255, 130, 0),
}
WHITE = (255, 255, 255)

#: shapes drawn in images (targets and distractors)
TARGET_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "rectangle", "pentagon", "hexagon")
#: shapes never drawn; the image_irrelevant control asks about one of them
CONTROL_SHAPES: tuple[str, ...] = ("star", "cone", "frustum")
#: shapes never drawn; text tier 1 bridges through one of them ("the same as a heart")
INDIRECT_SHAPES: tuple[str, ...] = ("heart", "crescent", "cross", "arrow", "ring")

QUESTION = "What color is the {A}?"
COMMAND = "Please use one word to answer this question."


@dataclass(frozen=True)
class ColorGroup:
    """One conflict group: a target shape, the colour it is drawn in
    (``vision_color``) and the different colour the descriptions claim
    (``text_color``). ``index`` is the position in the sampled list."""

    group_id: str
    index: int
    target_shape: str
    vision_color: str
    text_color: str


def _check_colors(colors: Iterable[str] | None) -> tuple[str, ...]:
    if colors is None:
        return tuple(COLORS)
    colors = tuple(dict.fromkeys(colors))
    bad = [c for c in colors if c not in COLORS]
    if bad:
        raise MechmodError(f"unknown color(s) {', '.join(map(repr, bad))}; choose from {', '.join(COLORS)}")
    if len(colors) < 2:
        raise MechmodError("need at least 2 colors (the image and the text must disagree)")
    return colors


def _check_shapes(shapes: Iterable[str] | None) -> tuple[str, ...]:
    if shapes is None:
        return TARGET_SHAPES
    shapes = tuple(dict.fromkeys(shapes))
    bad = [s for s in shapes if s not in TARGET_SHAPES]
    if bad:
        raise MechmodError(f"unknown shape(s) {', '.join(map(repr, bad))}; choose from {', '.join(TARGET_SHAPES)}")
    if not shapes:
        raise MechmodError("need at least one target shape")
    return shapes


def sample_groups(n: int, seed: int, colors: Iterable[str] | None = None,
                  shapes: Iterable[str] | None = None) -> list[ColorGroup]:
    """``n`` groups, balanced: with K colours, every run of K(K-1) groups uses
    each ordered (vision, text) pair once, and any prefix has the counts of
    each colour as vision answer and as text answer within 1 of each other
    (colours come in rounds of K pairs ``(c_i, c_{i+k})`` that use each colour
    once on each side). Shapes come in shuffled rounds of all shapes.
    Deterministic in ``seed`` and prefix-stable."""
    if int(n) != n or n <= 0:
        raise MechmodError(f"number of groups must be a positive integer, got {n!r}")
    n = int(n)
    colors = _check_colors(colors)
    shapes = _check_shapes(shapes)
    pairs = balanced_pairs(colors, n, int(seed) & 0xFFFFFFFFFFFF, 11)
    shape_seq = cycled(shapes, n, int(seed) & 0xFFFFFFFFFFFF, 13)
    width = max(4, len(str(n - 1)))
    return [ColorGroup(group_id=f"color-s{seed}-g{i:0{width}d}", index=i, target_shape=shape_seq[i],
                       vision_color=pairs[i][0], text_color=pairs[i][1]) for i in range(n)]
