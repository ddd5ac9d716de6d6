"""Training the model organism and its behaviour card. The model itself (a
tiny LLaVA: architecture, tokenizer, processor) and its shipped checkpoint
live in :mod:`mechmod.models.organism`, loadable by the short name
``organism``; this package is what made it:

* :mod:`.data`     - the seeded training stream (and the multimodal choice)
* :mod:`.train`    - training loop (``mechmod organism train``)
* :mod:`.evaluate` - behaviour card (``mechmod organism eval``)
"""
