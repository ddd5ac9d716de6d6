"""The model organisms: tiny LLaVA-1.5-style multimodal LLMs trained from
scratch on the project's own colour-conflict generators, shipped in
``checkpoints/<name>/`` and loadable by their short names:

* ``organism`` - the default subject (conflict target p_v * p_t^W, W = 1);
* ``organism-text`` - the same base fine-tuned with W = 1.6 (planted text
  preference; W = 2.5 put its balance point beyond the observed dHrel range);
* ``organism-vision`` - the same base fine-tuned with W = 0.4 (planted vision preference).

The three share one base and one fine-tuning data stream and differ only in
W (``organism.json`` records it). :mod:`.model` holds the architecture,
word-level tokenizer and CLIP processor; training and the behaviour card
are :mod:`mechmod.organism`.
"""

from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
#: short name -> planted text weight W of its conflict target
VARIANTS = {"organism": 1.0, "organism-text": 1.6, "organism-vision": 0.4}


def checkpoint_dir(name: str = "organism") -> Path:
    """The shipped checkpoint directory of a short name in :data:`VARIANTS`."""
    if name not in VARIANTS:
        raise KeyError(f"{name!r} is not a shipped organism ({', '.join(VARIANTS)})")
    return CHECKPOINTS / name


CHECKPOINT_DIR = checkpoint_dir("organism")
CARD_JSON = CHECKPOINT_DIR / "card.json"

__all__ = ["CHECKPOINTS", "VARIANTS", "checkpoint_dir", "CHECKPOINT_DIR", "CARD_JSON"]
