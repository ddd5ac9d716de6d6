"""Training the model organism and its behaviour card. The model itself (a
tiny LLaVA: architecture, tokenizer, processor) and its shipped checkpoint
live in :mod:`mechmod.models.organism`, loadable by the short names
``organism``, ``organism-text`` and ``organism-vision``; this package is
what made them:

* :mod:`.data`       - the seeded training stream (and the multimodal choice)
* :mod:`.train`      - training loop (``mechmod organism train`` / ``finetune``)
* :mod:`.evaluate`   - behaviour card (``mechmod organism eval``)
* :mod:`.shortcuts`  - shape-blind shortcut rates of the training images
  (``mechmod organism shortcuts``)
* :mod:`.preference` - the balance point a planted text weight predicts

``scripts/train_organisms.sh`` trains the family (base, then fine-tunes
with text weights 1, 1.6 and 0.4), resumably.
"""
