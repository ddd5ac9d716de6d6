"""Conflict datasets: colour recognition (generated), attribute recognition
(CLEVR-like renderer or a local CLEVR copy), the MC2 loader, and the one
record schema they all write (docs/architecture.md section 1).

Public API::

    generate_color(out, groups, seed, controls=True, progress=True) -> Path
    generate_attribute(out, groups, seed, subset="both", progress=True) -> Path
    load_clevr(clevr_dir, split, out, groups=..., seed=...) -> Path
    load_mc2(files, out, coco_dirs) -> Path
    load_cases(dir) -> pandas.DataFrame      (validated)
    open_image(dir, image_path) -> PIL.Image (safe)

Each generated set is a package split by job (vocabulary, render, text,
write): :mod:`mechmod.data.color`, :mod:`mechmod.data.attribute`; world
knowledge for the indirect text tiers is :mod:`mechmod.data.knowledge`.
Everything is imported lazily: importing this package is cheap and has no
side effects.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "generate_color": "mechmod.data.color.write",
    "generate_attribute": "mechmod.data.attribute.write",
    "load_clevr": "mechmod.data.clevr",
    "load_mc2": "mechmod.data.mc2",
    "load_cases": "mechmod.data.schema",
    "open_image": "mechmod.data.schema",
    "validate_dir": "mechmod.data.schema",
    "COLUMNS": "mechmod.data.schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mechmod.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
