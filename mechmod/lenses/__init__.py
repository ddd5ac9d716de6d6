"""Lenses: decode a layer's residual stream into next-token logits.

``Unembed`` is the model's frozen final norm + ``lm_head`` (float32);
``LogitLens`` and ``TunedLens`` share ``forward(h, layer) -> logits`` and
``forward_all(resid [B, L+1, d]) -> [B, L+1, V]``. Both take residual
indices, the tensor layout of :class:`mechmod.tracing.ResidualTrace`: index 0
is the embedding output, ``n_layers`` the last decoder layer's output, all
before the final norm. Residual index ``i`` is layer ``i - 1`` of the layer
index every table and figure uses (-1 the embedding output, 0..L-1 the
decoder layers); the fidelity tables (:class:`LensFidelity`) use the layer.

Modules: :mod:`.unembed`, :mod:`.logit_lens`, :mod:`.tuned_lens` (the lenses),
:mod:`.residuals` (a model's residuals on a dataset, held-out splits),
:mod:`.training` (fitting a tuned lens), :mod:`.fidelity` (per-layer KL).
"""

from mechmod.lenses.fidelity import LensFidelity, evaluate_lenses, kl_from_logits, lens_kl_by_layer
from mechmod.lenses.logit_lens import Lens, LogitLens
from mechmod.lenses.residuals import ResidualSet, collect_residuals, heldout_group_ids, split_heldout
from mechmod.lenses.training import TrainResult, train_tuned_lens
from mechmod.lenses.tuned_lens import TunedLens
from mechmod.lenses.unembed import Unembed

__all__ = [
    "Lens",
    "LensFidelity",
    "LogitLens",
    "ResidualSet",
    "TrainResult",
    "TunedLens",
    "Unembed",
    "collect_residuals",
    "evaluate_lenses",
    "heldout_group_ids",
    "kl_from_logits",
    "lens_kl_by_layer",
    "split_heldout",
    "train_tuned_lens",
]
