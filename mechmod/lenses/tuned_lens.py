"""The tuned lens (Belrose et al. 2023): one learned affine translator per
layer in front of the frozen unembedding.

``forward(h, layer) = unembed(h + W_l h + b_l)`` for residual indices
``0 <= layer < n_layers``; the last index (``n_layers``, the output of the last
decoder layer) has no translator, so the lens there reproduces the model's own
logits exactly. ``W_l`` and ``b_l`` start at zero, so a fresh tuned lens *is*
the logit lens, and weight decay pulls towards it.

The translators of all layers are stored stacked (``weight [L, d, d]``,
``bias [L, d]``, the same numbers as ``L`` ``nn.Linear(d, d)`` modules), so
:meth:`TunedLens.forward_all` is one batched matmul.

On disk a lens is a directory::

    DIR/lens.safetensors   weight [L, d, d], bias [L, d] (float32)
    DIR/config.json        format, n_layers, d_model, vocab_size,
                           unembed_fingerprint, weights_sha256, model, training

Loading reads safetensors only (never pickle) and refuses a lens trained for
another unembedding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechmod import _io
from mechmod.errors import MechmodError
from mechmod.lenses.logit_lens import Lens, _check_layer
from mechmod.lenses.unembed import Unembed

FORMAT = "mechmod-tuned-lens/1"
WEIGHTS_FILE = "lens.safetensors"
CONFIG_FILE = "config.json"


class TunedLens(Lens):
    """Logit lens with a learned affine translator per layer.

    Args:
        unembed: the model's frozen unembedding (shared, not trained).
        n_layers: number of decoder layers; residual indices run 0..n_layers.
        d_model: residual width (defaults to, and must equal, the unembedding's).
        model_name: name of the model the lens belongs to (saved in the config).
    """

    def __init__(
        self,
        unembed: Unembed,
        n_layers: int,
        d_model: int | None = None,
        *,
        model_name: str | None = None,
    ):
        super().__init__(unembed)
        d_model = unembed.d_model if d_model is None else int(d_model)
        if d_model != unembed.d_model:
            raise MechmodError(
                f"TunedLens d_model={d_model} does not match the unembedding's width {unembed.d_model}"
            )
        if int(n_layers) < 1:
            raise MechmodError(f"TunedLens needs n_layers >= 1, got {n_layers}")
        self.n_layers = int(n_layers)
        self.d_model = d_model
        self.model_name = model_name
        self.train_info: dict[str, Any] = {}
        device = unembed.lm_head.weight.device
        self.weight = nn.Parameter(torch.zeros(self.n_layers, d_model, d_model, device=device))
        self.bias = nn.Parameter(torch.zeros(self.n_layers, d_model, device=device))

    def __len__(self) -> int:
        return self.n_layers

    def translator(self, layer: int) -> nn.Linear:
        """Layer ``layer``'s translator as a detached ``nn.Linear`` copy (the
        lens adds its output to ``h``); ``layer`` in ``0..n_layers-1``."""
        if not 0 <= layer < self.n_layers:
            raise MechmodError(f"translators exist for residual indices 0..{self.n_layers - 1}, got {layer}")
        lin = nn.Linear(self.d_model, self.d_model, device=self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.weight[layer])
            lin.bias.copy_(self.bias[layer])
        return lin

    # -------------------------------------------------------------- forward
    def transform(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        layer = _check_layer(layer, self.n_layers)
        h = h.to(device=self.weight.device, dtype=torch.float32)
        if layer == self.n_layers:
            return h
        return h + h @ self.weight[layer].T + self.bias[layer]

    def transform_all(self, resid: torch.Tensor) -> torch.Tensor:
        if resid.shape[1] != self.n_layers + 1:
            raise MechmodError(
                f"residuals have {resid.shape[1]} layer entries, expected n_layers+1 = {self.n_layers + 1}"
            )
        resid = resid.to(device=self.weight.device, dtype=torch.float32)
        translated = translate(resid[:, : self.n_layers], self.weight, self.bias)
        return torch.cat([translated, resid[:, self.n_layers :]], dim=1)

    # ------------------------------------------------------------ save/load
    def config(self) -> dict[str, Any]:
        """The JSON config written next to the weights."""
        return {
            "format": FORMAT,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": self.unembed.vocab_size,
            "unembed_fingerprint": self.unembed.fingerprint(),
            "model": self.model_name,
            "training": self.train_info,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``DIR/lens.safetensors`` and ``DIR/config.json`` (atomically,
        weights first). Returns the directory."""
        from safetensors.torch import save as st_save

        directory = Path(directory)
        tensors = {
            "weight": self.weight.detach().to("cpu", torch.float32).contiguous(),
            "bias": self.bias.detach().to("cpu", torch.float32).contiguous(),
        }
        data = st_save(tensors, metadata={"format": "pt", "mechmod": FORMAT})
        _io.write_bytes(directory / WEIGHTS_FILE, data)
        config = self.config()
        config["weights_sha256"] = hashlib.sha256(data).hexdigest()
        _io.write_json(directory / CONFIG_FILE, _io.jsonable(config))
        return directory

    @classmethod
    def load(cls, directory: str | Path, unembed: Unembed) -> "TunedLens":
        """Load a lens saved by :meth:`save` for the given unembedding.

        Raises :class:`MechmodError` when the files are missing or malformed,
        when the weights file is not safetensors (a pickle is never opened),
        or when ``unembed`` is not the unembedding the lens was trained for.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        weights_path = directory / WEIGHTS_FILE
        for p in (config_path, weights_path):
            if not p.is_file():
                raise MechmodError(
                    f"{p} not found: a tuned lens directory holds {WEIGHTS_FILE} and {CONFIG_FILE} "
                    "(written by TunedLens.save / `mechmod lens train --out DIR`)"
                )
        config = _io.read_json(config_path, "retrain the lens with `mechmod lens train`")
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            found = config.get("format") if isinstance(config, dict) else type(config).__name__
            raise MechmodError(
                f"{config_path} has format {found!r}, expected {FORMAT!r}; retrain the lens with this mechmod version"
            )
        for key in ("n_layers", "d_model", "unembed_fingerprint"):
            if key not in config:
                raise MechmodError(f"{config_path} lacks {key!r}; the lens directory is incomplete or corrupted")

        expected = config["unembed_fingerprint"]
        actual = unembed.fingerprint()
        if expected != actual:
            trained_for = config.get("model") or "an unrecorded model"
            raise MechmodError(
                f"the tuned lens in {directory} was trained for unembedding {expected} "
                f"({trained_for}), but the given model's unembedding is {actual}. "
                f"Load the model the lens was trained for ({trained_for}, same weights and dtype), "
                "or train a lens for this model with `mechmod lens train --model NAME --out DIR`."
            )

        data = weights_path.read_bytes()
        tensors = _read_safetensors(data, weights_path)
        if "weights_sha256" in config and hashlib.sha256(data).hexdigest() != config["weights_sha256"]:
            raise MechmodError(
                f"{weights_path} does not match the sha256 recorded in {config_path}: "
                "the weights were changed or truncated; retrain or restore the lens"
            )
        n_layers, d_model = config["n_layers"], config["d_model"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n_layers, d_model)):
            raise MechmodError(f"{config_path}: n_layers {n_layers!r} and d_model {d_model!r} must be positive "
                               "integers; the lens directory is corrupted: retrain it with `mechmod lens train`")
        if not isinstance(config.get("training") or {}, dict):
            raise MechmodError(f"{config_path}: 'training' must be a JSON object; the lens directory is corrupted: "
                               "retrain it with `mechmod lens train`")
        want = {"weight": (n_layers, d_model, d_model), "bias": (n_layers, d_model)}
        if set(tensors) != set(want):
            raise MechmodError(f"{weights_path} holds tensors {sorted(tensors)}, expected {sorted(want)}")
        for name, shape in want.items():
            if tuple(tensors[name].shape) != shape:
                raise MechmodError(
                    f"{weights_path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                    f"expected {shape} from {config_path}"
                )
        if not all(bool(torch.isfinite(tensors[name]).all()) for name in want):
            raise MechmodError(f"{weights_path} holds NaN or infinite weights: the lens file is broken; retrain it "
                               "with `mechmod lens train`")
        lens = cls(unembed, n_layers, d_model, model_name=config.get("model"))
        with torch.no_grad():
            lens.weight.copy_(tensors["weight"].to(torch.float32))
            lens.bias.copy_(tensors["bias"].to(torch.float32))
        lens.train_info = dict(config.get("training") or {})
        return lens


def translate(inner: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h + W_l h + b_l`` for every layer at once: ``inner [B, L, d]``,
    ``weight [L, d, d]``, ``bias [L, d]`` -> ``[B, L, d]`` (one batched matmul)."""
    return inner + torch.einsum("bli,loi->blo", inner, weight) + bias


def _read_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; anything else (a pickle, a torch.save zip) is
    rejected before any deserialisation happens."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if header_len <= 0 or header_len > len(data) - 8 or data[8:9] != b"{":
        if data[:2] == b"PK":
            kind = "a zip archive (what torch.save writes)"
        elif data[:1] == b"\x80":
            kind = "a pickle"
        else:
            kind = "not a safetensors file (bad header)"
        raise MechmodError(
            f"{path} is {kind}; mechmod reads lens weights from safetensors only and never "
            "unpickles. Re-save the lens with TunedLens.save or retrain it with `mechmod lens train`."
        )
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise MechmodError(f"{path} is not a readable safetensors file ({err})") from None
