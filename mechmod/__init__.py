"""mechmod: which modality does a multimodal LLM follow when image and text
disagree, why, and where inside the network is the choice made.

The public surface (everything else lives in its submodule)::

    mllm = mechmod.load_model("organism")              # or a hub id / local path
    enc = mllm.encode([image], [description], [question])
    tr = mechmod.trace(mllm, enc)                        # logits [B, V], resid [B, L+1, D]
    labels = mechmod.LabelSet(mllm.tokenizer, ["red", "blue", ...])
    lens = mechmod.LogitLens(mechmod.Unembed.from_model(mllm))
    mechmod.relative_uncertainty(h_text, h_vision)       # dHrel
    mechmod.balance_point(dh_rel, follows_text)          # with bootstrap CI
    mechmod.count_oscillations(votes)
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "mechmod.models",
    "trace": "mechmod.tracing",
    "score": "mechmod.scoring",
    "LabelSet": "mechmod.answers",
    "Unembed": "mechmod.lenses",
    "LogitLens": "mechmod.lenses",
    "TunedLens": "mechmod.lenses",
    "entropy": "mechmod.uncertainty",
    "relative_uncertainty": "mechmod.uncertainty",
    "following_curve": "mechmod.following",
    "balance_point": "mechmod.following",
    "count_oscillations": "mechmod.dynamics",
    "MechmodError": "mechmod.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    """Lazy exports: ``import mechmod`` stays cheap (no torch import)."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mechmod' has no attribute {name!r}")
