"""Attribute-recognition conflict set (arXiv 2511.02243, section 5, second
set): the shape (sphere / cube / cylinder) or the material (metal / rubber)
of one object in a CLEVR-like 3-D scene, rendered offline. One module per
job:

* :mod:`.vocabulary` - CLEVR's colours, shapes, materials and sizes, and the
  balanced seeded groups (:func:`sample_attr_groups`);
* :mod:`.render`     - the visual tier table and :func:`render_scene`;
* :mod:`.text`       - descriptions per text tier and controls
  (:func:`attr_text`, shared with the CLEVR loader), the question;
* :mod:`.write`      - the dataset directory (:func:`generate_attribute`,
  ``mechmod dataset attribute``).

The package imports only the in-memory primitives; the writer loads with
:func:`mechmod.data.generate_attribute`.
"""

from mechmod.data.attribute.render import ATTR_TIERS, N_DV, AttrTier, SceneInfo, SceneObject, cube_faces, render_scene
from mechmod.data.attribute.text import (N_DT, POSITIONS, TEMPLATES, TEXT_TIERS, AttrDescription, attr_text,
                                         describe_attr, describe_attr_ex, question_attr)
from mechmod.data.attribute.vocabulary import (ABSENT_COLORS, CLEVR_COLORS, COMMAND, LABELS, MATERIALS, SHAPES, SIZES,
                                               AttrGroup, referent, sample_attr_groups)
from mechmod.names import ATTRIBUTE_TASKS as TASKS

__all__ = ["ABSENT_COLORS", "ATTR_TIERS", "AttrDescription", "AttrGroup", "AttrTier", "CLEVR_COLORS", "COMMAND",
           "LABELS", "MATERIALS", "N_DT", "N_DV", "POSITIONS", "SHAPES", "SIZES", "SceneInfo", "SceneObject", "TASKS",
           "TEMPLATES", "TEXT_TIERS", "attr_text", "cube_faces", "describe_attr", "describe_attr_ex", "question_attr",
           "referent", "render_scene", "sample_attr_groups"]
