"""Model families, the registry and :func:`load_model`.

One file per family (``llava.py``, ``llava_next.py``, ``qwen2_vl.py``,
``qwen2_5_vl.py``, ``gemma3.py``), each defining ``ADAPTER``: every module
of this package but ``base`` is a family (the registry finds a new file by
itself) and the registry maps HF ``config.model_type`` to it. Built-in
short names: ``organism``, ``organism-text`` and ``organism-vision`` (the
shipped model organisms) and each family's hub ids.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from mechmod._malloc import keep_freed_memory
from mechmod.backends import self_check
from mechmod.errors import MechmodError
from mechmod.models.base import Adapter, Encoded, MLLM

ORGANISM = "organism"


def family_modules() -> list[str]:
    """The family modules of this package, by name (packages such as the organism excluded)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg and m.name != "base")


def families() -> dict[str, Adapter]:
    """family name -> adapter, for every supported family."""
    out = {}
    for mod in family_modules():
        adapter = getattr(importlib.import_module(f"mechmod.models.{mod}"), "ADAPTER", None)
        if not isinstance(adapter, Adapter):
            raise MechmodError(f"mechmod/models/{mod}.py defines no ADAPTER; every module there but base.py is a "
                               "model family")
        out[adapter.family] = adapter
    return out


def adapter_for(model_type: str) -> Adapter:
    """The adapter of an HF ``config.model_type``."""
    for adapter in families().values():
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in families().values() for t in a.model_types)
    raise MechmodError(f"model_type {model_type!r} has no mechmod adapter (supported: {', '.join(known)}); "
                       "add one file under mechmod/models/ defining ADAPTER")


def builtin_models() -> dict[str, str]:
    """Short name -> hub id or local path (the ``organism*`` names are shipped checkpoints)."""
    from mechmod.models.organism import VARIANTS, checkpoint_dir

    out = {name: str(checkpoint_dir(name)) for name in VARIANTS}
    for adapter in families().values():
        out.update(adapter.builtin)
    return out


def resolve(name_or_path: str) -> str:
    """A short name to its hub id / path; anything else unchanged."""
    return builtin_models().get(str(name_or_path), str(name_or_path))


def default_dtype(device: str):
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def _parse_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise MechmodError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def _map_device(device_map) -> str:
    """"cuda" when a device map may put weights on a GPU, else "cpu"."""
    import torch

    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    on_cpu = all(str(v) in ("cpu", "disk", "meta") for v in values)
    return "cpu" if on_cpu or not torch.cuda.is_available() else "cuda"


def _check_unembedding_placed(mllm: MLLM, device_map) -> None:
    """The final norm and lm_head must hold their weights on a device: the
    lenses copy them, and the answers are read through them. A device map that
    offloads them (to "cpu" beside GPUs, or "disk") is refused."""
    for name, module in (("final norm", mllm.final_norm), ("lm_head", mllm.lm_head)):
        if any(p.device.type == "meta" for p in module.parameters()):
            raise MechmodError(
                f"--device-map {device_map!r} offloads the model's {name} ({mllm.adapter.final_norm_path if name != 'lm_head' else mllm.adapter.lm_head_path}) "
                "to cpu/disk, but the lens needs its weights in memory; place it on a device "
                f'(e.g. add "{mllm.adapter.lm_head_path}": 0 and "{mllm.adapter.final_norm_path}": 0) or free GPU memory')


def load_model(name_or_path: str = ORGANISM, device: str = "cpu", dtype=None,
               trust_remote_code: bool = False, check: bool = True, device_map=None) -> MLLM:
    """Load a multimodal model by short name, local directory or hub id.

    Weights are read from safetensors only (``use_safetensors=True``: a
    pickle checkpoint is refused). ``trust_remote_code`` runs the
    repository's own code and is off unless asked. ``device_map`` (``"auto"``,
    ``"balanced"``, a dict ``{module: device}``) spreads the model over devices
    with accelerate (``device`` is then ignored); tracing reads every layer
    wherever it sits. With ``check`` the
    adapter runs one tiny forward and checks every slot (see
    :func:`mechmod.backends.self_check`). A model on the CPU sets glibc to
    keep freed memory for the next forward (:mod:`mechmod._malloc`)."""
    import transformers
    from safetensors import SafetensorError

    source = resolve(name_or_path)
    local = Path(source)
    if local.exists() and not (local / "config.json").is_file():
        raise MechmodError(f"{source}: no config.json; give a model directory saved by save_pretrained, "
                           f"a hub id, or one of {', '.join(builtin_models())}")
    try:
        config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise MechmodError(f"cannot load the config of {name_or_path!r} ({err}); give a local model directory, "
                           f"a reachable hub id, or one of {', '.join(builtin_models())}") from None
    adapter = adapter_for(config.model_type)
    if device_map is not None:  # accelerate places the weights; the default dtype follows where they go
        device = _map_device(device_map)
    torch_dtype = _parse_dtype(dtype) or default_dtype(device)
    cls = getattr(transformers, adapter.model_class)
    kw = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True)
    if device_map is not None:
        kw["device_map"] = device_map
    try:
        model = cls.from_pretrained(source, **kw)
        processor = transformers.AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a damaged weights file
        raise MechmodError(f"cannot load {name_or_path!r} as {adapter.model_class} ({err}); check that its "
                           "weights files are complete (re-download or re-save the model)") from None
    if device_map is None:
        model = model.to(device)
    mllm = MLLM(model, processor, adapter, name=str(name_or_path))
    if mllm.device.type == "cpu":
        keep_freed_memory()
    if device_map is not None:
        _check_unembedding_placed(mllm, device_map)
    if check:
        self_check(mllm)
    return mllm


__all__ = ["Adapter", "Encoded", "MLLM", "families", "adapter_for", "builtin_models", "load_model", "resolve"]
