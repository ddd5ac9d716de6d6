"""Lenses: decode a layer's residual stream into next-token logits.

``Unembed`` is the model's frozen final norm + ``lm_head`` (float32);
``LogitLens`` and ``TunedLens`` share ``forward(h, layer) -> logits`` and
``forward_all(resid [B, L+1, d]) -> [B, L+1, V]``. Residual index 0 is the
embedding output, ``n_layers`` the last decoder layer's output, all before the
final norm (as in :class:`mechmod.tracing.ResidualTrace`).
"""

from mechmod.lenses.logit_lens import Lens, LogitLens
from mechmod.lenses.training import (
    LensFidelity,
    ResidualSet,
    TrainResult,
    collect_residuals,
    evaluate_lenses,
    heldout_group_ids,
    kl_from_logits,
    lens_kl_by_layer,
    split_heldout,
    train_tuned_lens,
)
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
