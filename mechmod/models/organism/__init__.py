"""The model organism: a tiny LLaVA-1.5-style multimodal LLM trained from
scratch on the project's own colour-conflict generators, shipped in
``checkpoint/`` and loadable by the short name ``organism``.

* :mod:`.model`    - architecture, word-level tokenizer, CLIP processor
* :mod:`.data`     - the seeded training stream (and the multimodal choice)
* :mod:`.train`    - training loop (``mechmod organism train``)
* :mod:`.evaluate` - behaviour card (``mechmod organism eval``)
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
CARD_JSON = CHECKPOINT_DIR / "card.json"

__all__ = ["CHECKPOINT_DIR", "CARD_JSON"]
