"""Benchmark: mechmod's runner against the naive loop and the compute bound.

    python -m benchmarks.pipeline [--quick] [--device cpu|cuda] [--shape small|quick|overhead|llava7b]
    python -m benchmarks.pipeline --real-config DIR [--shrink] [--device cuda] [--groups N]

On one random-weight LLaVA-shaped model and one set of conflict cases, in
one run:

(a) naive loop: one case at a time, a full forward of each of its three
    inputs with ``output_hidden_states=True``, the logit lens on every
    position of every layer;
(b) mechmod's runner (``run_study``: shared image prefixes, batched tails,
    answer position only, one lens matmul per batch, rows streamed to disk).

On CPU it also runs the runner on the ``overhead`` shape (a model so small
that compute is negligible) and reports its per-case overhead: seconds per
case of the runner, the one-off summary and report left out, minus the
time spent inside the model's forward (``overhead_seconds_per_case``).

Each runs in its own subprocess so that its peak RSS is its own. The FLOP
lower bound counts the work the study cannot avoid with prefix sharing
(vision tower and LM prefix once per image, the prefix up to the last
layer's keys and values, each prompt's text tail once, the final
unembedding and the lens at the answer position) and divides it by this
machine's matmul throughput, measured in the same run. On CPU the runner
then runs once more under :class:`benchmarks.kernels.KernelClock`: the
seconds and FLOPs of its matmul and attention kernels
(``kernel_*_seconds``, ``executed_*_gflop``) and
``fraction_of_bound_kernels``, the most of the bound a runner could reach
if nothing but those kernels took time. Prints one JSON line.

With ``--real-config`` the model is the real checkpoint's HF class built
from its real config with random weights, with the real tokenizer, chat
template and processor (``benchmarks.real_model``; ``--shrink`` for a small
CPU stand-in), so token counts, templates and answer labels are the real
ones. Such a run also reports peak memory at two case counts (``groups``
and half of it: ``memory_flat`` is the ratio of the peaks), the paper-scale
projection and ``profile``: the top ops of one runner batch by self time
(torch.profiler, CPU and CUDA activities where available).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks.kernels import KernelClock, kernel_fields
from benchmarks.real_model import build_real_model, config_folder
from mechmod.errors import MechmodError

SHAPES = {
    # image tokens dominate the sequence, as in LLaVA-1.5 (576 of ~620)
    "small": dict(image_size=336, patch_size=14, vision_hidden=128, vision_layers=2, vision_heads=4, vision_mlp=512,
                  text_hidden=256, text_layers=4, text_heads=4, text_mlp=1024, max_positions=1024),
    "quick": dict(image_size=224, patch_size=14, vision_hidden=64, vision_layers=2, vision_heads=2, vision_mlp=256,
                  text_hidden=128, text_layers=2, text_heads=2, text_mlp=512, max_positions=512),
    # compute is negligible: what is left of a run is the runner's per-case Python work
    "overhead": dict(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                     text_hidden=32, text_layers=2, text_heads=2, text_mlp=64, max_positions=256),
    # LLaVA-1.5-7B proportions (CLIP ViT-L/14-336 + Llama-2-7B), for a lent GPU (--real-config is the real one)
    "llava7b": dict(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
                    vision_mlp=4096, text_hidden=4096, text_layers=32, text_heads=32, text_mlp=11008,
                    max_positions=4096),
}


@dataclass(frozen=True)
class Setup:
    model_dir: str
    dataset_dir: str
    device: str
    dtype: str
    batch_size: int


def build(shape: str, root: Path, groups: int, dv: list[int], device: str) -> Setup:
    """A random LLaVA of the given shape (word-level tokenizer, CLIP
    processor) and a colour dataset, both saved under ``root``."""
    import torch

    from mechmod.data import generate_color
    from mechmod.organism.data import all_training_texts
    from mechmod.models.organism.model import OrganismConfig, build_model, build_processor, build_tokenizer, words_of

    cfg = OrganismConfig(**SHAPES[shape])
    tok = build_tokenizer(words_of(all_training_texts(n_groups=300, seed=0)))
    model = build_model(cfg, tok, seed=0)
    model.set_attn_implementation("sdpa")
    model.save_pretrained(root / "model", safe_serialization=True)
    build_processor(tok, cfg).save_pretrained(root / "model")
    generate_color(root / "dataset", groups=groups, seed=0, dv=dv, progress=False)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    del model
    torch.manual_seed(0)
    return Setup(str(root / "model"), str(root / "dataset"), device, dtype, batch_size=16 if device == "cpu" else 64)


# ----------------------------------------------------------------- workers
def run_naive(setup: Setup, mllm=None) -> dict:
    """One case at a time, three full forwards with all hidden states, the
    lens on every position of every layer."""
    import torch

    from mechmod.data import load_cases, open_image
    from mechmod.models import load_model

    mllm = mllm or load_model(setup.model_dir, device=setup.device, dtype=setup.dtype)
    _reset_peak(setup.device)
    cases = load_cases(setup.dataset_dir)
    t0 = time.perf_counter()
    with torch.no_grad():
        for rec in cases.itertuples():
            image = open_image(setup.dataset_dir, rec.image_path)
            for images, desc in (([image], [None]), ([None], [rec.description]), ([image], [rec.description])):
                enc = mllm.encode(images, desc, [rec.question])
                out = mllm.model(**enc.inputs, output_hidden_states=True)
                for h in out.hidden_states:  # lens on every position
                    mllm.lm_head(mllm.final_norm(h)).float().log_softmax(-1)
    _sync(setup.device)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "cases": len(cases), "cases_per_s": len(cases) / dt, "peak_rss_mb": _peak_rss_mb(),
            "peak_gpu_mb": _peak_gpu_mb(setup.device)}


def run_runner(setup: Setup, mllm=None) -> dict:
    import torch

    from mechmod.data import load_cases
    from mechmod.lenses import LogitLens, Unembed
    from mechmod.models import load_model
    from mechmod.rundir import RunConfig
    from mechmod.runner import dataset_fingerprint, run_study

    mllm = mllm or load_model(setup.model_dir, device=setup.device, dtype=setup.dtype)
    _reset_peak(setup.device)
    held_gpu_mb = _held_gpu_mb(setup.device)
    n = len(load_cases(setup.dataset_dir))
    cfg = RunConfig(model=setup.model_dir, dataset=setup.dataset_dir, dataset_sha256=dataset_fingerprint(setup.dataset_dir),
                    batch_size=setup.batch_size)
    from mechmod import report, runner, summary  # noqa: F401  (imports are a one-off cost, not per-case work)

    finalize, spent = runner.finalize, {}

    def timed_finalize(out):  # summary + report: once per run, whatever its size
        t = time.perf_counter()
        result = finalize(out)
        spent["finalize"] = time.perf_counter() - t
        return result

    runner.finalize = timed_finalize
    forwards = runner.Timing()  # its ``model``: seconds inside the model's forwards, as the run's timing line counts them
    try:
        with tempfile.TemporaryDirectory() as out, runner._ForwardClock(mllm.model, forwards):
            t0 = time.perf_counter()
            with torch.no_grad():
                run_study(mllm, LogitLens(Unembed.from_model(mllm)), setup.dataset_dir,
                          Path(out) / "run", cfg, progress=False)
            _sync(setup.device)
            dt = time.perf_counter() - t0
    finally:
        runner.finalize = finalize
    result = {"seconds": dt, "cases": n, "cases_per_s": n / dt, "finalize_seconds": spent.get("finalize"),
              "forward_seconds": forwards.model,
              "scoring_cases_per_s": n / (dt - spent.get("finalize", 0.0)),
              "peak_rss_mb": _peak_rss_mb(), "peak_gpu_mb": _peak_gpu_mb(setup.device), "held_gpu_mb": held_gpu_mb}
    if setup.device == "cpu":  # the same run again, its kernels timed and their FLOPs counted (not in the timing above)
        with tempfile.TemporaryDirectory() as out, torch.no_grad(), KernelClock() as clock:
            run_study(mllm, LogitLens(Unembed.from_model(mllm)), setup.dataset_dir, Path(out) / "run", cfg,
                      progress=False)
        result["kernels"] = {"seconds": clock.seconds, "flops": clock.flops}
    return result


def overhead_per_case(run: dict) -> dict:
    """From a runner result on the ``overhead`` shape, where compute is
    negligible: seconds per case outside the model's forward (finalize
    excluded)."""
    scoring = run["seconds"] - run["finalize_seconds"]
    return {"overhead_shape": "overhead", "overhead_cases": run["cases"],
            "overhead_seconds_per_case": round((scoring - run["forward_seconds"]) / run["cases"], 5),
            "overhead_forward_seconds_per_case": round(run["forward_seconds"] / run["cases"], 5)}


def matmul_flops_per_s(device: str, dtype: str, size: int = 1024, seconds: float = 2.0) -> float:
    """Measured dense matmul throughput (FLOP/s) at this process's threads."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(size, size, device=device, dtype=dt)
    b = torch.randn(size, size, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    _sync(device)
    return 2 * size**3 * n / (time.perf_counter() - t0)


# ---------------------------------------------------------------- the bound
def lower_bound_flops(setup: Setup, mllm=None) -> dict:
    """FLOPs of the work the study cannot avoid with prefix sharing, total
    and per unit (image prefix, vision-only tail, text-only prompt,
    multimodal tail with its lens), so a larger study can be projected."""
    from mechmod.data import load_cases, open_image
    from mechmod.models import load_model
    from mechmod.prefix import image_prefix

    mllm = mllm or load_model(setup.model_dir, device="cpu", dtype="float32", check=False)
    cfg = mllm.model.config
    if cfg.model_type != "llava":
        raise MechmodError(f"--real-config: the FLOP bound models LLaVA-1.5 (one CLIP tile per image), not "
                           f"{cfg.model_type!r}; give the llava-1.5-7b-hf folder")
    vc, tc = cfg.vision_config, cfg.text_config
    d, L, V = tc.hidden_size, tc.num_hidden_layers, tc.vocab_size
    kv = tc.num_key_value_heads * (d // tc.num_attention_heads)
    layer_lin = 2 * d * d + 2 * d * kv + 3 * d * tc.intermediate_size  # q,o + k,v + gate,up,down
    n_patch = (vc.image_size // vc.patch_size) ** 2
    vis_lin = vc.num_hidden_layers * (4 * vc.hidden_size**2 + 2 * vc.hidden_size * vc.intermediate_size)
    proj = vc.hidden_size * d + d * d

    def lm(tokens: int, context_before: int, layers: int = L) -> float:
        # linear layers + attention scores and values over the causal context
        attn = sum(2 * 2 * d * (context_before + t + 1) for t in range(tokens)) * layers
        return 2 * layer_lin * layers * tokens + attn

    n_seq = n_patch + 1
    vision = 2 * vis_lin * n_seq + vc.num_hidden_layers * 2 * 2 * vc.hidden_size * n_seq**2 + 2 * proj * n_patch
    cases = load_cases(setup.dataset_dir)
    prefix_len = image_prefix(mllm, open_image(setup.dataset_dir, cases.iloc[0].image_path)).length
    unembed = 2 * d * V
    # the prefix's cache: every layer but the last whole, the last one's key and value projections only
    per_image = vision + lm(prefix_len, 0, L - 1) + 2 * 2 * d * kv * prefix_len
    vis = [lm(len(mllm.tail(mllm.prompt(q, True))[0]), prefix_len) + unembed
           for q in cases.drop_duplicates(["image_path", "question"])["question"]]
    txt = [lm(len(mllm.tokenizer(mllm.prompt(f"{d_} {q}", False))["input_ids"]), 0) + unembed
           for d_, q in cases.drop_duplicates(["description", "question"])[["description", "question"]].itertuples(index=False)]
    mm = [lm(len(mllm.tail(mllm.prompt(f"{d_} {q}", True))[0]), prefix_len) + (L + 1) * unembed
          for d_, q in cases[["description", "question"]].itertuples(index=False)]
    images = cases["image_path"].nunique()
    total = images * per_image + sum(vis) + sum(txt) + sum(mm)
    return {"flops": total, "images": int(images), "prefix_tokens": int(prefix_len), "cases": len(cases),
            "per_image": per_image, "per_vision_tail": sum(vis) / len(vis), "per_text_prompt": sum(txt) / len(txt),
            "per_multimodal_tail": sum(mm) / len(mm)}


# the paper's colour study: 400 groups x 14 images; per group 3 dt x 3 controls
PAPER_SCALE = {"images": 400 * 14, "vision_tails": 400 * 14 * 2, "text_prompts": 400 * 9, "multimodal": 400 * 14 * 9}


def paper_scale_flops(bound: dict) -> float:
    return (PAPER_SCALE["images"] * bound["per_image"] + PAPER_SCALE["vision_tails"] * bound["per_vision_tail"]
            + PAPER_SCALE["text_prompts"] * bound["per_text_prompt"]
            + PAPER_SCALE["multimodal"] * bound["per_multimodal_tail"])


def build_real(src: Path, root: Path, groups: tuple[int, ...], dv: list[int], device: str, shrink: bool):
    """The real-config model (:mod:`benchmarks.real_model`) and one colour
    dataset per group count, under ``root``. On CPU the model is saved
    there (the parts load it in their own processes) and the MLLM is None;
    on a GPU it stays in memory in bf16, wrapped as an MLLM."""
    import transformers

    from mechmod.data import generate_color
    from mechmod.models import adapter_for
    from mechmod.models.base import MLLM

    gpu = device.startswith("cuda")
    dtype = "bfloat16" if gpu else "float32"
    model = build_real_model(src, root / "model", shrink, device, dtype)
    setups = {}
    for g in groups:
        generate_color(root / f"dataset-g{g}", groups=g, seed=0, dv=dv, progress=False)
        setups[g] = Setup(str(root / "model"), str(root / f"dataset-g{g}"), device, dtype, batch_size=64 if gpu else 16)
    if not gpu:
        model.save_pretrained(root / "model", safe_serialization=True)
        return setups, None
    processor = transformers.AutoProcessor.from_pretrained(root / "model")
    return setups, MLLM(model, processor, adapter_for(model.config.model_type), name=f"random-{src.name}")


def profile_batch(setup: Setup, mllm, top: int = 10) -> dict:
    """torch.profiler over one runner batch (``score_chunk`` on
    ``batch_size`` cases, after one unprofiled batch): its wall time, the
    host ops' summed self time, the device kernels' summed time (wall minus
    these is Python or idle device), and the ``top`` host ops by self time
    (on a GPU by the device time of the kernels they launched)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from mechmod.data import load_cases
    from mechmod.lenses import LogitLens, Unembed
    from mechmod.scoring import ScoreOptions, score_chunk

    gpu = setup.device.startswith("cuda")
    cases = load_cases(setup.dataset_dir).iloc[:setup.batch_size]
    lens, options = LogitLens(Unembed.from_model(mllm)), ScoreOptions(batch_size=setup.batch_size)
    with torch.no_grad():
        score_chunk(mllm, lens, cases, Path(setup.dataset_dir), options)
        _sync(setup.device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            score_chunk(mllm, lens, cases, Path(setup.dataset_dir), options)
            _sync(setup.device)
            wall = time.perf_counter() - t0
    events = prof.key_averages()
    ops = [e for e in events if e.device_type == DeviceType.CPU]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    ranked = sorted(ops, key=lambda e: getattr(e, key), reverse=True)[:top]
    return {
        "profile_cases": len(cases), "profile_wall_seconds": round(wall, 4), "profile_sorted_by": key,
        "profile_host_op_seconds": round(sum(e.self_cpu_time_total for e in ops) / 1e6, 4),
        "profile_device_kernel_seconds": round(sum(e.self_device_time_total for e in kernels) / 1e6, 4) if gpu else None,
        "profile": [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
                     "self_device_ms": round(e.self_device_time_total / 1e3, 3) if gpu else None} for e in ranked],
    }


def memory_fields(small: dict, big: dict, groups: tuple[int, int], gpu: bool) -> dict:
    """Peak memory of the runner at two case counts; ``memory_flat`` is the
    ratio of the peaks (1.0: memory does not grow with the cases). On a GPU
    the peak above the memory held before the run (the weights) as well."""
    key = "peak_gpu_mb" if gpu else "peak_rss_mb"
    out = {"memory_groups": list(groups), "memory_cases": [small["cases"], big["cases"]],
           f"runner_{key}_by_groups": [round(small[key]), round(big[key])],
           "memory_flat": round(big[key] / small[key], 3)}
    if gpu:
        grown = [r["peak_gpu_mb"] - r["held_gpu_mb"] for r in (small, big)]
        out["runner_peak_gpu_mb_above_weights_by_groups"] = [round(g) for g in grown]
        out["memory_flat_above_weights"] = round(grown[1] / grown[0], 3)
    return out


def build_on_gpu(shape: str, root: Path, groups: int, dv: list[int], device: str, vocab: int = 32064):
    """A random-weight model of ``shape`` built directly on the GPU in bf16
    (weight values do not change the cost), wrapped as an MLLM; the
    vocabulary is padded to LLaVA-1.5's 32064 rows."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from mechmod.data import generate_color
    from mechmod.models import llava
    from mechmod.models.base import MLLM
    from mechmod.organism.data import all_training_texts
    from mechmod.models.organism.model import OrganismConfig, build_processor, build_tokenizer, llava_config, words_of

    c = OrganismConfig(**SHAPES[shape])
    tok = build_tokenizer(words_of(all_training_texts(n_groups=300, seed=0)))
    config = llava_config(c, tok, vocab_size=vocab, vision_feature_layer=-2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.set_attn_implementation("sdpa")
    mllm = MLLM(model.eval(), build_processor(tok, c), llava.ADAPTER, name=f"random-{shape}")
    generate_color(root / "dataset", groups=groups, seed=0, dv=dv, progress=False)
    setup = Setup("(in memory)", str(root / "dataset"), device, "bfloat16", batch_size=64)
    return setup, mllm


def _smoke(setup: Setup, mllm) -> None:
    """Score a few cases without the runner's failure isolation, so a bug
    shows its traceback instead of becoming failed rows."""
    from mechmod.data import load_cases
    from mechmod.lenses import LogitLens, Unembed
    from mechmod.scoring import ScoreOptions, score_chunk

    rows = score_chunk(mllm, LogitLens(Unembed.from_model(mllm)),
                       load_cases(setup.dataset_dir).iloc[:6], Path(setup.dataset_dir), ScoreOptions(batch_size=4))
    if (rows["status"] != "ok").any():
        raise SystemExit(f"smoke test failed: {rows['error'].iloc[0]}")


# dense bf16 tensor-core peak of the datasheet (TFLOP/s, no sparsity), by device-name fragment
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "A100": 312.0}


def main_gpu(a, shape: str, groups: int, dv: list[int]) -> dict:
    """Everything in one process on the GPU (peak memory by the CUDA allocator)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="mechmod-bench-") as tmp:
        if a.real_config:
            sizes = memory_groups(groups)
            setups, mllm = build_real(config_folder(a.real_config), Path(tmp), sizes, dv, a.device, a.shrink)
            small, setup = (replace(setups[g], batch_size=a.batch_size or setups[g].batch_size) for g in sizes)
        else:
            setup, mllm = build_on_gpu(shape, Path(tmp), groups, dv, a.device)
            small = setup = replace(setup, batch_size=a.batch_size or setup.batch_size)
        peak = matmul_flops_per_s(a.device, "bfloat16", size=8192, seconds=3.0)
        _smoke(setup, mllm)
        warm = run_runner(small, mllm)  # warm-up (kernels, allocator); with --real-config the smaller case count
        naive = None if a.skip_naive else run_naive(setup, mllm)
        runner = run_runner(setup, mllm)
        bound = lower_bound_flops(setup, mllm)
        extra = {**memory_fields(warm, runner, sizes, gpu=True), **profile_batch(setup, mllm)} if a.real_config else {}
    scoring_s = runner["seconds"] - runner["finalize_seconds"]
    achieved = bound["flops"] / scoring_s
    paper = paper_scale_flops(bound)
    return {
        "shape": shape, "device": torch.cuda.get_device_name(), "dtype": "bfloat16", "batch_size": setup.batch_size,
        "cases": runner["cases"],
        "images": bound["images"], "prefix_tokens": bound["prefix_tokens"],
        "params_b": round(sum(p.numel() for p in mllm.model.parameters()) / 1e9, 2),
        "naive_cases_per_s": naive and round(naive["cases_per_s"], 2),
        "runner_cases_per_s": round(runner["cases_per_s"], 2),
        "speedup": naive and round(runner["cases_per_s"] / naive["cases_per_s"], 2),
        "runner_peak_gpu_mb": runner["peak_gpu_mb"] and round(runner["peak_gpu_mb"]),
        "bound_tflop": round(bound["flops"] / 1e12, 2), "matmul_tflop_per_s": round(peak / 1e12, 1),
        "runner_scoring_cases_per_s": round(runner["scoring_cases_per_s"], 2),
        "finalize_seconds": round(runner["finalize_seconds"], 2),
        "mfu": round(achieved / peak, 3), "fraction_of_bound": round(bound["flops"] / peak / runner["seconds"], 3),
        "paper_scale_pflop": round(paper / 1e15, 2),
        "paper_scale_projected_minutes": round((paper / achieved + runner["finalize_seconds"]) / 60, 2),
        "paper_scale_minutes_at_bound": round(paper / peak / 60, 2),
        **_datasheet_mfu(torch.cuda.get_device_name(), achieved), **extra,
    }


def _datasheet_mfu(device_name: str, achieved: float) -> dict:
    """MFU against the device's datasheet bf16 peak, where the name is known."""
    peak = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in device_name), None)
    return {"datasheet_bf16_tflop_per_s": peak, "mfu_datasheet": peak and round(achieved / (peak * 1e12), 3)}


def memory_groups(groups: int) -> tuple[int, int]:
    """The two case counts of the memory check: half of ``groups`` and ``groups``."""
    if groups < 2:
        raise MechmodError(f"--groups {groups}: --real-config compares memory at half the groups and at all of "
                           "them; give --groups 2 or more")
    return groups // 2, groups


# ------------------------------------------------------------------ driver
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_gpu_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _held_gpu_mb(device: str) -> float | None:
    import torch

    return torch.cuda.memory_allocated() / 2**20 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _child(part: str, setup: Setup, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "benchmarks.pipeline", "--part", part, "--setup", json.dumps(asdict(setup)),
           "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark part {part!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_result(shape: str, a, setup: Setup, naive: dict | None, runner: dict, bound: dict, flops_per_s: float) -> dict:
    """The CPU JSON fields of one naive-vs-runner comparison."""
    bound_s = bound["flops"] / flops_per_s
    return {
        "shape": shape, "device": a.device, "dtype": setup.dtype, "threads": a.threads, "cases": runner["cases"],
        "images": bound["images"], "prefix_tokens": bound["prefix_tokens"],
        "naive_cases_per_s": naive and round(naive["cases_per_s"], 3),
        "runner_cases_per_s": round(runner["cases_per_s"], 3),
        "speedup": naive and round(runner["cases_per_s"] / naive["cases_per_s"], 2),
        "naive_peak_rss_mb": naive and round(naive["peak_rss_mb"]),
        "runner_peak_rss_mb": round(runner["peak_rss_mb"]),
        "runner_peak_gpu_mb": runner["peak_gpu_mb"] and round(runner["peak_gpu_mb"]),
        "bound_gflop": round(bound["flops"] / 1e9, 2),
        "matmul_gflop_per_s": round(flops_per_s / 1e9, 1),
        "bound_seconds": round(bound_s, 3),
        "runner_seconds": round(runner["seconds"], 3),
        "runner_finalize_seconds": round(runner["finalize_seconds"], 3),
        "fraction_of_bound": round(bound_s / runner["seconds"], 3),
        "fraction_of_bound_scoring": round(bound_s / (runner["seconds"] - runner["finalize_seconds"]), 3),
        "runner_forward_seconds": round(runner["forward_seconds"], 3),
        "fraction_of_bound_forwards": round(bound_s / runner["forward_seconds"], 3),
        **(kernel_fields(**runner["kernels"], bound_flops=bound["flops"], peak_flops_per_s=flops_per_s)
           if "kernels" in runner else {}),
    }


def main_real_cpu(a, shape: str, groups: int, dv: list[int]) -> dict:
    """The real-config model on CPU: the naive loop and the runner at both
    memory-check case counts in their own processes; the bound, the
    paper-scale projection and the batch profile in this one. ``mfu`` is
    the fraction of the measured matmul throughput (this process's threads)."""
    from mechmod.models import load_model

    sizes = memory_groups(groups)
    with tempfile.TemporaryDirectory(prefix="mechmod-bench-") as tmp:
        setups, _ = build_real(config_folder(a.real_config), Path(tmp), sizes, dv, a.device, a.shrink)
        small, setup = (replace(setups[g], batch_size=a.batch_size or setups[g].batch_size) for g in sizes)
        naive = None if a.skip_naive else _child("naive", setup, a.threads)
        small_run = _child("runner", small, a.threads)
        runner = _child("runner", setup, a.threads)
        mllm = load_model(setup.model_dir, device="cpu", dtype="float32", check=False)
        bound = lower_bound_flops(setup, mllm)
        prof = profile_batch(setup, mllm)
        flops_per_s = matmul_flops_per_s(a.device, setup.dtype)
    result = cpu_result(shape, a, setup, naive, runner, bound, flops_per_s)
    achieved = bound["flops"] / (runner["seconds"] - runner["finalize_seconds"])
    paper = paper_scale_flops(bound)
    return {**result, "batch_size": setup.batch_size,
            "params_b": round(sum(p.numel() for p in mllm.model.parameters()) / 1e9, 4),
            "mfu": round(achieved / flops_per_s, 3), "mfu_peak": "measured fp32 matmul at --threads",
            "paper_scale_pflop": round(paper / 1e15, 4),
            "paper_scale_projected_minutes": round((paper / achieved + runner["finalize_seconds"]) / 60, 2),
            "paper_scale_minutes_at_bound": round(paper / flops_per_s / 60, 2),
            **memory_fields(small_run, runner, sizes, gpu=False), **prof}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small model and few cases (under a minute)")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None)
    p.add_argument("--real-config", metavar="DIR",
                   help="a real checkpoint's config folder (or its name under $MECHMOD_REAL_CONFIGS): the real HF "
                        "class with random weights, real tokenizer, chat template and processor (LLaVA-1.5)")
    p.add_argument("--shrink", action="store_true",
                   help="with --real-config: a small LM and vision tower (vocabulary, processor kept), for CPU")
    p.add_argument("--groups", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="runner batch size (default 16 on CPU, 64 on GPU)")
    p.add_argument("--skip-naive", action="store_true", help="(GPU, large shapes) time the runner only")
    p.add_argument("--part", choices=["naive", "runner"], help=argparse.SUPPRESS)
    p.add_argument("--setup", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.shrink and not a.real_config:
        p.error("--shrink applies to --real-config")
    if a.real_config and a.shape:
        p.error("--shape and --real-config name two different models; give one")
    import torch

    torch.set_num_threads(a.threads)
    if a.part:
        setup = Setup(**json.loads(a.setup))
        print(json.dumps(run_naive(setup) if a.part == "naive" else run_runner(setup)))
        return 0
    dv = [0, 7] if a.quick else [0, 4, 9]
    if a.real_config:
        shape = config_folder(a.real_config).name + ("-shrunk" if a.shrink else "")
        groups = a.groups or (2 if a.quick else 8)
        run = main_gpu if a.device.startswith("cuda") else main_real_cpu
        print(json.dumps(run(a, shape, groups, dv)))
        return 0
    shape = a.shape or ("quick" if a.quick else "small")
    groups = a.groups or (1 if a.quick else 4)
    if a.device.startswith("cuda"):
        print(json.dumps(main_gpu(a, shape, groups, dv)))
        return 0
    with tempfile.TemporaryDirectory(prefix="mechmod-bench-") as tmp:
        setup = replace(build(shape, Path(tmp), groups, dv, a.device), batch_size=a.batch_size or 16)
        naive = None if a.skip_naive else _child("naive", setup, a.threads)
        runner = _child("runner", setup, a.threads)
        bound = lower_bound_flops(setup)
        flops_per_s = matmul_flops_per_s(a.device, setup.dtype)
    overhead = runner
    if shape != "overhead":  # the runner again on a model whose compute is negligible
        with tempfile.TemporaryDirectory(prefix="mechmod-bench-") as tmp:
            overhead = _child("runner", build("overhead", Path(tmp), groups, dv, a.device), a.threads)
    print(json.dumps({**cpu_result(shape, a, setup, naive, runner, bound, flops_per_s), **overhead_per_case(overhead)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
