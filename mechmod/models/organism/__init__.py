"""The model organism: a tiny LLaVA-1.5-style multimodal LLM trained from
scratch on the project's own colour-conflict generators, shipped in
``checkpoint/`` and loadable by the short name ``organism``.

* :mod:`.model` - architecture, word-level tokenizer, CLIP processor

Its training and behaviour card are :mod:`mechmod.organism`.
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
CARD_JSON = CHECKPOINT_DIR / "card.json"

__all__ = ["CHECKPOINT_DIR", "CARD_JSON"]
