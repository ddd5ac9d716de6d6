"""Kernel accounting: the seconds and FLOPs of a run's matmul and attention kernels.

:class:`KernelClock` is a ``TorchDispatchMode`` that times every matmul
(mm, addmm, bmm, baddbmm, convolution) and attention kernel (aten's
fused flash kernel for the CPU, which sdpa and mechmod's split attention
call) a run makes, and counts the FLOPs each executes (from its shapes:
padding and causal halves included, what the kernel really does). Their
sum is the time a runner would take if nothing but these kernels took
any: ``bound / kernel seconds`` is the most of the FLOP bound that
runner could reach at these kernels' speed. CPU only (a CUDA kernel
returns before it has run); the timings exclude the mode's own Python
work, which happens outside them.
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
MATMUL = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution}
ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu}


def attention_flops(query: torch.Tensor, key: torch.Tensor, causal: bool) -> int:
    """Scores and weighted values of ``query`` [B, H, L, E] over ``key``
    [B, H_kv, S, E]: 4 FLOPs per (query, key, feature), causal (top-left,
    as sdpa's ``is_causal``) counting only the keys each query sees."""
    B, H, L, E = query.shape
    S = key.shape[-2]
    pairs = sum(min(i + 1, S) for i in range(L)) if causal else L * S
    return 4 * B * H * pairs * E


class KernelClock(TorchDispatchMode):
    """``seconds`` and ``flops`` by kind ("matmul", "attention") of the
    kernels called while inside."""

    def __init__(self):
        super().__init__()
        self.seconds = {"matmul": 0.0, "attention": 0.0}
        self.flops = {"matmul": 0, "attention": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        kind = "matmul" if packet in MATMUL else "attention" if packet in ATTENTION else None
        if kind is None:
            return func(*args, **kwargs)
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        self.seconds[kind] += time.perf_counter() - t0
        if kind == "matmul":
            self.flops[kind] += int(flop_registry[packet](*args, **kwargs, out_val=out))
        else:
            causal = kwargs.get("is_causal", args[4] if len(args) > 4 else False)  # (q, k, v, dropout, is_causal)
            self.flops[kind] += attention_flops(args[0], args[1], bool(causal))
        return out


def kernel_fields(seconds: dict, flops: dict, bound_flops: float, peak_flops_per_s: float) -> dict:
    """The JSON fields of one accounting (a :class:`KernelClock`'s
    ``seconds`` and ``flops``): seconds, GFLOP and throughput by kind and
    ``fraction_of_bound_kernels``, the bound's seconds at the measured
    matmul peak over the kernels' seconds."""
    out = {f"kernel_{k}_seconds": round(v, 3) for k, v in seconds.items()}
    out |= {f"executed_{k}_gflop": round(v / 1e9, 2) for k, v in flops.items()}
    out |= {f"kernel_{k}_gflop_per_s": round(flops[k] / v / 1e9, 1) if v else None for k, v in seconds.items()}
    total = sum(seconds.values())
    out["fraction_of_bound_kernels"] = round(bound_flops / peak_flops_per_s / total, 3) if total else None
    return out
