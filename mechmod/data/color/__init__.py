"""Colour-recognition conflict set (arXiv 2511.02243, section 5), one module
per job:

* :mod:`.vocabulary` - answer colours, shapes, the question words, and the
  balanced seeded groups (:func:`sample_groups`);
* :mod:`.shapes`     - rasterised shapes and their masks;
* :mod:`.render`     - the visual tier table and :func:`render_image`;
* :mod:`.text`       - descriptions per text tier and controls, the question;
* :mod:`.write`      - the dataset directory (:func:`generate_color`,
  ``mechmod dataset color``).

Stable API (the model organism imports these; keep them):

``COLORS: dict[str, tuple[int, int, int]]``
    The 6 answer colours and the flat RGB used to draw them.
``TARGET_SHAPES``
    Shapes drawn in images (as targets and as distractors).
``CONTROL_SHAPES``
    Shapes never drawn (``star``, ``cone``, ``frustum``): the
    ``image_irrelevant`` control asks about one of them.
``INDIRECT_SHAPES``
    Shapes never drawn, used as the bridge shape B of text tier 1.
``TIERS``
    The visual tier table (``Tier`` records, ``TIERS[dv]``).
``ColorGroup``
    frozen dataclass: ``group_id``, ``index``, ``target_shape``,
    ``vision_color``, ``text_color``.
``sample_groups(n, seed, colors=None, shapes=None) -> list[ColorGroup]``
    balanced groups; prefix-stable (the first k of n groups do not depend on n).
``render_image(group, dv, rng, return_masks=False) -> (PIL.Image, RenderInfo)``
``describe(group, dt, rng, control="none") -> str``
``question_for(shape) -> str``

The package imports only the in-memory primitives; the writer loads with
:func:`mechmod.data.generate_color`.
"""

from mechmod.data.color.render import N_DV, TIERS, RenderInfo, Tier, render_image
from mechmod.data.color.shapes import shape_mask
from mechmod.data.color.text import N_DT, TEMPLATES, TEXT_TIERS, Description, describe, describe_ex, question_for
from mechmod.data.color.vocabulary import (COLORS, COMMAND, CONTROL_SHAPES, INDIRECT_SHAPES, QUESTION, TARGET_SHAPES,
                                           ColorGroup, sample_groups)

__all__ = ["COLORS", "COMMAND", "CONTROL_SHAPES", "INDIRECT_SHAPES", "N_DT", "N_DV", "QUESTION", "TARGET_SHAPES",
           "TEMPLATES", "TEXT_TIERS", "TIERS", "ColorGroup", "Description", "RenderInfo", "Tier", "describe",
           "describe_ex", "question_for", "render_image", "sample_groups", "shape_mask"]
