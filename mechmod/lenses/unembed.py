"""The frozen unembedding every lens decodes through: the model's final norm
followed by its ``lm_head``.

The unembedding holds float32 copies of the two modules, so a bf16/fp16 model
still gets float32 logits, and training a lens can never move the model's own
weights. ``fingerprint()`` identifies the function it computes; a saved
:class:`~mechmod.lenses.TunedLens` stores it and refuses to load against a
different unembedding.
"""

from __future__ import annotations

import copy
import hashlib
import json

import torch
from torch import nn

from mechmod.errors import MechmodError

# Attributes of a norm module that change what it computes (besides tensors).
_NORM_SCALARS = ("eps", "variance_epsilon", "epsilon", "elementwise_affine", "normalized_shape")


class Unembed(nn.Module):
    """``logits = lm_head(final_norm(h))`` in float32, frozen.

    Args:
        final_norm: the model's final norm (e.g. ``LlamaRMSNorm``); applied to
            the residual stream *before* it (the decoder layers' raw outputs).
        lm_head: the model's output projection (``nn.Linear``, ``d -> V``).

    Both modules are deep-copied and cast to float32, their parameters do not
    require grad, and the copy is kept in eval mode.
    """

    def __init__(self, final_norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        if not isinstance(final_norm, nn.Module) or not isinstance(lm_head, nn.Module):
            raise MechmodError(
                f"Unembed needs the model's final norm and lm_head as torch modules, got "
                f"{type(final_norm).__name__} and {type(lm_head).__name__}"
            )
        weight = getattr(lm_head, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise MechmodError(
                f"lm_head ({type(lm_head).__name__}) has no 2-D weight; Unembed expects an "
                "nn.Linear mapping d_model -> vocabulary"
            )
        if not torch.is_floating_point(weight):
            raise MechmodError(
                f"lm_head weight has dtype {weight.dtype} (quantised?); load the model in a "
                "floating dtype (float32, bfloat16 or float16) to build a lens"
            )
        self.final_norm = copy.deepcopy(final_norm).float().eval()
        self.lm_head = copy.deepcopy(lm_head).float().eval()
        self.requires_grad_(False)

    @classmethod
    def from_model(cls, mllm) -> "Unembed":
        """The unembedding of a loaded model (:func:`mechmod.load_model`): its
        final norm and ``lm_head``."""
        return cls(mllm.final_norm, mllm.lm_head)

    # ------------------------------------------------------------------ shape
    @property
    def d_model(self) -> int:
        return int(self.lm_head.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    # ---------------------------------------------------------------- forward
    def train(self, mode: bool = True) -> "Unembed":
        # Always in eval mode: the unembedding is part of the model, not of the lens.
        return super().train(False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Decode residual-stream states ``h [..., d_model]`` into float32 logits
        ``[..., V]``. ``h`` is taken before the final norm."""
        if h.shape[-1] != self.d_model:
            raise MechmodError(
                f"Unembed got hidden states of width {h.shape[-1]}, expected d_model={self.d_model}"
            )
        dev = self.lm_head.weight.device
        return self.lm_head(self.final_norm(h.to(device=dev, dtype=torch.float32)))

    # ------------------------------------------------------------ fingerprint
    def fingerprint(self) -> str:
        """sha256 (hex) over the module types, their scalar settings (e.g. the
        norm's eps) and every tensor's name, shape, dtype and bytes. Equal
        fingerprints mean the same unembedding function."""
        return _fingerprint_modules({"final_norm": self.final_norm, "lm_head": self.lm_head})


def _fingerprint_modules(modules: dict[str, nn.Module]) -> str:
    digest = hashlib.sha256()
    for prefix, module in modules.items():
        scalars = {}
        for name in _NORM_SCALARS:
            if hasattr(module, name):
                value = getattr(module, name)
                if isinstance(value, (int, float, bool, str, tuple, list)) or value is None:
                    scalars[name] = list(value) if isinstance(value, tuple) else value
        header = {"module": prefix, "type": type(module).__name__, "scalars": scalars}
        digest.update(json.dumps(header, sort_keys=True).encode())
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            meta = {"name": f"{prefix}.{name}", "shape": list(t.shape), "dtype": str(t.dtype)}
            digest.update(json.dumps(meta, sort_keys=True).encode())
            # view as bytes: works for every dtype (bf16 has no numpy equivalent)
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
