"""Real-world things with one unambiguous colour, for the indirect text tier
(dt 2: "The circle's color is the same as a sapphire.").

Stable API (imported by the model organism):

``KNOWLEDGE: dict[str, tuple[str, ...]]``
    colour name (one of :data:`mechmod.data.color.COLORS`) -> noun phrases,
    each usable verbatim in "The circle's color is the same as {thing}.".

Vocabulary rules, checked by the tests: ASCII lower case words separated by
single spaces, no hyphens, no apostrophes, no digits; no thing contains a
colour label (so the answer never leaks as a word), a shape word of the
colour set (drawn, control or indirect shapes), or another thing as a
substring (so a longest-substring lookup finds exactly one thing). Every
colour has at least 8 things.
"""

from __future__ import annotations

KNOWLEDGE: dict[str, tuple[str, ...]] = {
    "red": (
        "a ruby",
        "a ripe tomato",
        "a strawberry",
        "a fire truck",
        "a ladybug",
        "a ripe cherry",
        "a stop sign",
        "a drop of blood",
        "a cardinal bird",
    ),
    "yellow": (
        "a banana",
        "a lemon",
        "a school bus",
        "a sunflower",
        "a canary",
        "an egg yolk",
        "a dandelion",
        "a baby duckling",
        "a corn kernel",
    ),
    "blue": (
        "a sapphire",
        "a clear sky",
        "a morpho butterfly",
        "a smurf",
        "a cornflower",
        "a usps mailbox",
        "the neck of a peacock",
        "a piece of lapis lazuli",
        "a denim jacket",
    ),
    "green": (
        "an emerald",
        "a lime",
        "a cucumber",
        "fresh grass",
        "a pea pod",
        "a broccoli floret",
        "a four leaf clover",
        "a tree frog",
        "a shamrock",
    ),
    "purple": (
        "an amethyst",
        "an eggplant",
        "a lavender flower",
        "a plum",
        "a concord grape",
        "a violet flower",
        "a passion fruit",
        "barney the dinosaur",
    ),
    "orange": (
        "a tangerine",
        "a pumpkin",
        "a carrot",
        "a basketball",
        "a goldfish",
        "a monarch butterfly",
        "a clownfish",
        "an apricot",
    ),
}


def things_for(color: str) -> tuple[str, ...]:
    """The knowledge things of ``color`` (raises KeyError for an unknown colour)."""
    return KNOWLEDGE[color]


def color_of(thing: str) -> str:
    """The colour a knowledge thing stands for."""
    for col, things in KNOWLEDGE.items():
        if thing in things:
            return col
    raise KeyError(thing)


#: attribute set, text tier 2: things with an unambiguous shape / material,
#: usable in "The red object's shape is the same as {thing}." (same rules as
#: KNOWLEDGE; no thing contains a label word)
SHAPE_KNOWLEDGE: dict[str, tuple[str, ...]] = {
    "sphere": ("a basketball", "a marble", "a globe", "a pearl", "a soap bubble", "a tennis ball",
               "a ball bearing", "a gumball"),
    "cube": ("a die", "a sugar lump", "a toy block", "a rubiks puzzle", "a square gift box",
             "a square ice block", "a bouillon block", "a square crate"),
    "cylinder": ("a soda can", "a candle", "a water pipe", "a drum", "a battery", "a hockey puck",
                 "a tin can", "a paper towel roll"),
}
MATERIAL_KNOWLEDGE: dict[str, tuple[str, ...]] = {
    "metal": ("a coin", "a steel spoon", "a key", "a nail", "a paper clip", "a car door", "a frying pan",
              "a wrench"),
    "rubber": ("a tire", "an eraser", "a balloon", "a garden hose", "a rain boot", "a bouncy ball",
               "a swim cap", "a bike inner tube"),
}
