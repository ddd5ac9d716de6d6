"""The lens interface and the logit lens.

A lens decodes the residual stream of one layer into next-token logits:
``lens(h, layer) -> logits``. ``layer`` here is the residual index of
``ResidualTrace.resid``: 0 is the embedding output (layer -1 in every table),
``i`` (1..n_layers) the output of decoder layer ``i - 1``; all states are
taken *before* the final norm, which the shared
:class:`~mechmod.lenses.Unembed` applies.
"""

from __future__ import annotations

import torch
from torch import nn

from mechmod.errors import MechmodError
from mechmod.lenses.unembed import Unembed


class Lens(nn.Module):
    """Base class: subclasses define :meth:`transform` (one layer) and
    :meth:`transform_all` (every layer at once); decoding goes through the
    frozen ``unembed``."""

    def __init__(self, unembed: Unembed):
        super().__init__()
        if not isinstance(unembed, Unembed):
            raise MechmodError(
                f"a lens needs a mechmod.lenses.Unembed, got {type(unembed).__name__}; "
                "build one with Unembed.from_model(mllm)"
            )
        self.unembed = unembed

    # subclasses -----------------------------------------------------------
    def transform(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Map layer ``layer``'s hidden state ``[..., d]`` to the space the
        unembedding expects (``[..., d]``, float32)."""
        raise NotImplementedError

    def transform_all(self, resid: torch.Tensor) -> torch.Tensor:
        """Map every layer at once: ``resid [B, L+1, d] -> [B, L+1, d]``."""
        raise NotImplementedError

    # shared ---------------------------------------------------------------
    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Logits ``[..., V]`` (float32) of hidden states ``h [..., d]`` taken at
        residual index ``layer``."""
        return self.unembed(self.transform(h, layer))

    def forward_all(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits of every layer: ``resid [B, L+1, d] -> [B, L+1, V]``, with one
        unembedding matmul for the whole batch."""
        if resid.ndim != 3:
            raise MechmodError(
                f"forward_all expects residuals [batch, layers+1, d_model], got shape {tuple(resid.shape)}"
            )
        return self.unembed(self.transform_all(resid))


class LogitLens(Lens):
    """Decode every layer directly with the final norm and ``lm_head``
    (nostalgebraist's logit lens): ``forward(h, layer) = unembed(h)``.

    Args:
        unembed: the model's frozen unembedding.
        n_layers: optional number of decoder layers; when given, ``layer`` is
            range-checked (0..n_layers, negatives count from the end).
    """

    def __init__(self, unembed: Unembed, n_layers: int | None = None):
        super().__init__(unembed)
        self.n_layers = n_layers

    def transform(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        if self.n_layers is not None:
            _check_layer(layer, self.n_layers)
        return h.to(torch.float32)

    def transform_all(self, resid: torch.Tensor) -> torch.Tensor:
        if self.n_layers is not None and resid.shape[1] != self.n_layers + 1:
            raise MechmodError(
                f"residuals have {resid.shape[1]} layer entries, expected n_layers+1 = {self.n_layers + 1}"
            )
        return resid.to(torch.float32)


def _check_layer(layer: int, n_layers: int) -> int:
    """Normalise a residual index (negatives count from the end) to 0..n_layers."""
    if isinstance(layer, torch.Tensor):
        layer = int(layer)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise MechmodError(f"layer must be an int, got {type(layer).__name__}")
    if not -(n_layers + 1) <= layer <= n_layers:
        raise MechmodError(
            f"layer {layer} out of range: residual indices run 0..{n_layers} "
            f"(0 = embeddings, {n_layers} = last decoder layer)"
        )
    return layer % (n_layers + 1)
