"""One function hides the tracer: :func:`trace` runs a batch and returns the
answer distribution and the answer-position residual of every layer.

Backends: ``nnsight`` (wraps the HF model, reads decoder-layer inputs and
outputs) and ``transformer_lens`` (TransformerLens 4's TransformerBridge
around the same in-memory HF model, reading ``blocks.{i}.hook_out``). Both
return the same :class:`ResidualTrace`; callers never touch ``.save()``.
Only the answer position is kept (design principle 5)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from mechmod.errors import MechmodError
from mechmod.names import ATTENTION_SPANS as SPANS, BACKENDS


def span_mass(attn: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Attention mass of the answer position on each span: ``attn`` [B, L, K]
    (head-averaged weights over K keys) and bool ``masks[name]`` [B, K] ->
    [B, L, len(SPANS)] (the rest of the mass is on template tokens)."""
    return torch.stack([(attn * masks[name][:, None, :].to(attn.dtype)).sum(-1) for name in SPANS], dim=-1)


@dataclass(frozen=True)
class ResidualTrace:
    """Per prompt of a batch.

    ``logits`` [B, V] float32: the model's next-token logits at the answer
    position. ``resid`` [B, n_layers + 1, d_model] float32 or None: the
    embedding output (decoder input) then each decoder layer's output, all
    before the final norm. ``attn`` [B, n_layers, T_keys] float32 or None
    (when asked): the answer position's attention weights in each layer,
    averaged over heads."""

    logits: torch.Tensor
    resid: torch.Tensor | None
    attn: torch.Tensor | None = None
    span_attention: torch.Tensor | None = None  # [B, n_layers, len(SPANS)], see span_mass

    def __post_init__(self):
        if self.logits.ndim != 2:
            raise ValueError(f"ResidualTrace.logits must be [B, V], got {tuple(self.logits.shape)}")
        if self.resid is not None and (self.resid.ndim != 3 or self.resid.shape[0] != self.logits.shape[0]):
            raise ValueError(f"ResidualTrace.resid must be [B, L+1, D], got {tuple(self.resid.shape)}")


def trace(mllm, encoded, backend: str = "nnsight", keep_resid: bool = True, attention: bool = False) -> ResidualTrace:
    """Run ``encoded`` through ``mllm`` (no grad) and read the answer position
    (with ``attention``, also its head-averaged attention weights)."""
    T = encoded.inputs["input_ids"].shape[1]
    if not bool((encoded.answer_index == T - 1).all()):
        raise MechmodError("trace: the answer must be the last position of every row (left padding)")
    return _run(mllm, encoded.inputs, None, backend, keep_resid, attention)


def trace_at(mllm, inputs: dict, positions: torch.Tensor, backend: str = "nnsight",
             attention: bool = False) -> ResidualTrace:
    """Like :func:`trace` for inputs whose answers sit at ``positions`` [B]
    (right-padded suffixes over a cached image prefix, see
    :mod:`mechmod.prefix`). The logits are the unembedding of the last
    layer's residual at the answer, which is what the model computes there
    (checked for every model by :func:`self_check`)."""
    return _run(mllm, inputs, positions.long(), backend, True, attention)


def _run(mllm, inputs, positions, backend, keep_resid, attention=False) -> ResidualTrace:
    if backend not in BACKENDS:
        raise MechmodError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    B = inputs["input_ids"].shape[0]
    where = (slice(None), -1) if positions is None else (torch.arange(B, device=positions.device), positions)
    run = _trace_nnsight if backend == "nnsight" else _trace_transformer_lens
    attn_rows: list = []
    with torch.no_grad(), (eager_attention(mllm) if attention else nullcontext()):
        logits, saved = run(mllm, dict(inputs, output_attentions=True) if attention else inputs, where, keep_resid,
                            want_logits=positions is None, attn_out=attn_rows if attention else None)
        resid = torch.stack([s.float().cpu() for s in saved], dim=1) if saved else None
        attn = torch.stack([a.float().mean(1).cpu() for a in attn_rows], dim=1) if attention else None
        if logits is None:
            logits = _unembed(mllm, saved[-1])
    return ResidualTrace(logits=logits.float().cpu(), resid=resid, attn=attn)


class eager_attention:
    """Eager attention while inside (the only kind that returns weights)."""

    def __init__(self, mllm):
        self.model = mllm.model

    def __enter__(self):
        self.before = getattr(self.model.config, "_attn_implementation", None) or "sdpa"
        if self.before != "eager":
            self.model.set_attn_implementation("eager")
        return self

    def __exit__(self, *exc):
        if self.before != "eager":
            self.model.set_attn_implementation(self.before)
        return False


def _unembed(mllm, h):
    """The model's own final norm and lm_head on residuals ``h`` (each on its device)."""
    normed = mllm.final_norm(h.to(next(mllm.final_norm.parameters()).device, mllm.dtype))
    return mllm.lm_head(normed.to(mllm.lm_head.weight.device))


def _nnsight_model(mllm):
    cached = getattr(mllm, "_nnsight", None)
    if cached is None:
        from nnsight import NNsight

        if getattr(mllm.model, "hf_device_map", None):
            class Dispatched(NNsight):
                # nnsight moves the inputs to the first parameter's device, which is
                # 'meta' when accelerate offloads that module (a device map with
                # "cpu"/"disk" entries); the inputs already sit where mllm.encode
                # put them and accelerate's hooks move them from module to module.
                @property
                def device(self):
                    return None

            cached = Dispatched(mllm.model)
        else:
            cached = NNsight(mllm.model)
        mllm._nnsight = cached
    return cached


def _envoy(root, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _trace_nnsight(mllm, inputs, where, keep_resid: bool, want_logits: bool, attn_out=None):
    model = _nnsight_model(mllm)
    n = mllm.n_layers
    saved: list = []
    logits = None
    with model.trace(**inputs, logits_to_keep=1):
        layers = _envoy(model, mllm.adapter.layers_path)
        if keep_resid:
            saved.append(layers[0].input[where].save())
            for i in range(n):
                saved.append(_layer_hidden(layers[i].output)[where].save())
        if want_logits:
            logits = model.output.logits[:, -1].save()
        if attn_out is not None:
            weights = model.output.attentions
            if len(weights) != n:  # the TransformerLens bridge swapped the attention modules
                raise MechmodError(f"{mllm.name}: the model returned {len(weights)} attention maps for {n} layers "
                                   "(was a TransformerLens bridge booted on it?); reload the model for nnsight")
            for i in range(n):  # [B, heads, keys] at the answer position
                attn_out.append(weights[i][where[0], :, where[1], :].save())
    return logits, saved


def _layer_hidden(output):
    """Decoder layers return a bare tensor in transformers 5 (a tuple in 4.x)."""
    return output[0] if isinstance(output, tuple) else output


def _bridge(mllm):
    cached = getattr(mllm, "_tl_bridge", None)
    if cached is None:
        from mechmod.models.bridge import boot_bridge

        cached = boot_bridge(mllm)
        mllm._tl_bridge = cached
    return cached


def _trace_transformer_lens(mllm, inputs, where, keep_resid: bool, want_logits: bool, attn_out=None):
    bridge = _bridge(mllm)
    n = mllm.n_layers
    names = ["blocks.0.hook_in"] + [f"blocks.{i}.hook_out" for i in range(n)]
    store: dict[str, torch.Tensor] = {}

    def keep(tensor, hook):
        store[hook.name] = _layer_hidden(tensor)[where].detach()
        return tensor

    def keep_pattern(pattern, hook):  # [B, heads, queries, keys] -> the answer's row
        store[hook.name] = pattern[where[0], :, where[1], :].detach()
        return pattern

    patterns = [f"blocks.{i}.attn.hook_pattern" for i in range(n)] if attn_out is not None else []
    hooks = ([(name, keep) for name in names] if keep_resid else []) + [(name, keep_pattern) for name in patterns]
    inputs = {k: v for k, v in inputs.items() if k != "output_attentions"}
    with bridge.hooks(fwd_hooks=hooks):
        out = bridge.original_model(**inputs, logits_to_keep=1)
    logits = out.logits[:, -1] if want_logits else None
    if attn_out is not None:
        missing = [p for p in patterns if p not in store]
        if missing:
            raise MechmodError(f"the TransformerLens bridge of {mllm.name} did not fire {missing[0]}; "
                               "use --backend nnsight for attention masses")
        attn_out.extend(store[p] for p in patterns)
    return logits, [store[k] for k in names] if keep_resid else []


def self_check(mllm, backend: str = "nnsight") -> None:
    """Adapter self-check (one tiny forward per modality layout): every slot
    has the expected shape and the final norm + unembedding of the last
    layer's residual reproduces the model's logits. Raises MechmodError
    naming the family and what differs."""
    from PIL import Image

    img = Image.new("RGB", (64, 48), (200, 30, 30))
    problems = []
    for images, desc in (([None], ["a check"]), ([img], [None])):
        enc = mllm.encode(images, desc, ["what color ?"])
        tr = trace(mllm, enc, backend=backend)
        L, D, V = mllm.n_layers, mllm.d_model, mllm.lm_head.weight.shape[0]
        if tuple(tr.resid.shape) != (1, L + 1, D):
            problems.append(f"resid {tuple(tr.resid.shape)} != {(1, L + 1, D)}")
        if tr.logits.shape[-1] < V:
            problems.append(f"logits width {tr.logits.shape[-1]} < lm_head rows {V}")
        with torch.no_grad():
            again = _unembed(mllm, tr.resid[:, -1]).float().cpu()
        tol = 1e-3 if mllm.dtype == torch.float32 else 5e-2 * float(again.abs().max())
        err = float((again - tr.logits[:, : again.shape[-1]]).abs().max())
        if not err <= tol:
            problems.append(f"final_norm(lm_head(last resid)) differs from the logits by {err:.3g} (tolerance {tol:.3g}); "
                            f"{mllm.adapter.final_norm_path!r} or {mllm.adapter.lm_head_path!r} is not the real unembedding")
        if images[0] is not None and not bool(enc.spans["image"].any()):
            problems.append(f"no image token (id {mllm.image_token_id}) in the image prompt")
    if problems:
        raise MechmodError(f"{mllm.name} ({mllm.family}) failed its self-check: " + "; ".join(problems))
