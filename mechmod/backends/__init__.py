"""One backend layer: every read and edit site of a forward pass, for
nnsight 0.8 (``NNsight(model)``) and the TransformerLens 4 bridge
(``TransformerBridge.boot_transformers(path, hf_model=...)``). Tracing,
patching, steering, attribution and attention knockout all go through
:func:`run`; only this package knows where a site sits in a model (from the
adapter's declared module paths) or in the bridge (its hook names)::

    sites           Site, SITE_COMPONENTS: the vocabulary and each site's view
    forward         run(mllm, inputs, edits, reads, backend), eager_attention, unembed
    answer_attention answer_rows: the answer position's attention weights under sdpa
    hooks_backend   the sites at the adapter's modules (plain forward hooks: tracing's default)
    nnsight_backend the sites at the adapter's modules (nnsight envoys)
    tl_backend      the sites at the bridge's hook points; boot_bridge
    check           self_check: the adapter's paths, shapes and identities on load
"""

from mechmod.backends.answer_attention import answer_rows
from mechmod.backends.check import self_check
from mechmod.backends.forward import eager_attention, run, unembed
from mechmod.backends.sites import WEIGHT_SITES, Edit, Read, Site
from mechmod.names import BACKENDS, SITE_COMPONENTS

__all__ = ["BACKENDS", "SITE_COMPONENTS", "WEIGHT_SITES", "Site", "Edit", "Read", "run", "eager_attention",
           "answer_rows", "unembed", "self_check"]
