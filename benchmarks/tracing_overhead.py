"""Benchmark: the per-batch cost of reading a forward, by backend.

    python -m benchmarks.tracing_overhead [--model organism|quick] [--repeats N] [--batch-size B]

One batch of multimodal prompts (the study's first cases), traced as the
runner traces it (every layer's residual at the answer position, the
attention mass on or off) with the ``hooks`` and the ``nnsight`` backend,
and run as a plain forward (``model(**inputs)``, nothing read); the calls
alternate, and each figure is the median over ``--repeats`` of the
process's CPU time (robust on a shared machine; wall time is reported
too), with ``--threads`` torch threads. A backend's overhead is its median
minus the plain forward's. ``quick`` is the random
LLaVA of ``benchmarks.pipeline``'s ``quick`` shape. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _model(name: str, root: Path):
    from mechmod.models import load_model

    if name == "organism":
        return load_model("organism")
    from benchmarks.pipeline import build

    setup = build(name, root, groups=4, dv=[0], device="cpu")
    return load_model(setup.model_dir, device="cpu", dtype="float32")


def measure(model: str, repeats: int, batch_size: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from mechmod.data import generate_color, load_cases, open_image
    from mechmod.tracing import trace

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mllm = _model(model, root)
        generate_color(root / "cases", groups=max(1, batch_size // 8 + 1), seed=0, progress=False)
        cases = load_cases(root / "cases").iloc[:batch_size]
        images = [open_image(root / "cases", p) for p in cases["image_path"]]
        enc = mllm.encode(images, list(cases["description"]), list(cases["question"]))
    calls = {"plain": lambda: mllm.model(**enc.inputs, logits_to_keep=1)}
    for backend in ("hooks", "nnsight"):
        for attention in (False, True):
            calls[f"{backend}{'+attention' if attention else ''}"] = \
                lambda b=backend, a=attention: trace(mllm, enc, backend=b, attention=a)
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    wall: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for fn in calls.values():  # warm-up (nnsight's import and wrapper, kernels)
            fn()
        for _ in range(repeats):
            for name, fn in calls.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - t0)
    ms = {k: 1000 * statistics.median(v) for k, v in cpu.items()}
    return {"model": model, "batch_size": batch_size, "tokens": int(enc.inputs["input_ids"].shape[1]),
            "repeats": repeats, "cpu_ms": {k: round(v, 2) for k, v in ms.items()},
            "wall_ms": {k: round(1000 * statistics.median(v), 2) for k, v in wall.items()},
            "overhead_cpu_ms_per_batch": {k: round(v - ms["plain"], 2) for k, v in ms.items() if k != "plain"},
            "torch_threads": threads}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("organism", "quick"), default="organism")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    print(json.dumps(measure(a.model, a.repeats, a.batch_size, a.threads)))


if __name__ == "__main__":
    main()
