"""Benchmark: `mechmod patch`'s layer sweep against the anchors' loop.

    python -m benchmarks.patching [--groups N] [--quick] [--threads T]

One patch sweep (the residual stream at every decoder layer, the study's
position groups, the three source -> conflict directions) on one model
(default: the shipped organism) and one colour dataset, two ways in one run:

(a) the anchors' loop: one pair at a time at batch 1, the source run once
    with forward hooks keeping every layer's output, then one forward per
    layer and position group, a plain forward hook on that layer writing the
    source's activations at the aligned positions;
(b) ``run_patching`` (what ``mechmod patch`` runs, units off), including
    its clean baseline (the loop gets the pairs and answers for free).

Both compute LD = logit(source answer) - logit(target answer) at the
answer position for every (pair, layer, group); the run fails unless they
agree. Prints one JSON line: both throughputs in case-layer-group patches
per second, ``speedup``, ``max_abs_diff`` and ``settings``; also
``baseline_seconds`` (the clean baseline alone, timed apart: part of (b),
free to (a)) and ``speedup_excluding_baseline``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

TOLERANCE = 1e-3  # float32 logits, batched vs batch-1 matmuls


def _hidden(out):
    """A decoder layer's output tensor (bare, or the first of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def anchors_loop(mllm, dataset_dir, base, directions, groups) -> tuple[dict, int]:
    """{(direction, group, case_id, layer): patched LD} by the naive loop, and
    the number of forwards it ran."""
    import torch

    from mechmod.interventions.cases import Images, encode, standard_pairs
    from mechmod.interventions.patching import align_positions, logit_diff
    from mechmod.phrase_answers import answer_set

    layers = list(mllm.adapter.module(mllm.model, mllm.adapter.layers_path))
    images, out, forwards = Images(dataset_dir), {}, 0
    for direction in directions:
        for rec in standard_pairs(base, direction).itertuples():
            labels = answer_set(mllm.tokenizer, list(rec.candidates))
            src = encode(mllm, images, [rec.src_image_path], [rec.src_description], [rec.src_question])
            tgt = encode(mllm, images, [rec.image_path], [rec.description], [rec.question])
            cache = {}
            keep = [layer.register_forward_hook(lambda m, a, o, l=l: cache.__setitem__(l, _hidden(o).clone()))
                    for l, layer in enumerate(layers)]
            try:
                mllm.model(**src.inputs)
            finally:
                for h in keep:
                    h.remove()
            mllm.model(**tgt.inputs)  # the clean target (its LD is the restoration's baseline)
            forwards += 2
            for g in groups:
                align = align_positions(src, tgt, g)
                s_pos, t_pos = align.src[0][align.valid[0]], align.tgt[0][align.valid[0]]
                for l, layer in enumerate(layers):
                    def write(m, a, o, l=l):
                        _hidden(o)[0, t_pos] = cache[l][0, s_pos]
                        return o
                    handle = layer.register_forward_hook(write)
                    try:
                        logits = mllm.model(**tgt.inputs).logits[:, -1].float().cpu()
                    finally:
                        handle.remove()
                    forwards += 1
                    out[(direction, g, rec.case_id, l)] = float(logit_diff(logits, labels, [rec.a_src], [rec.a_tgt])[0])
    return out, forwards


def library(mllm, dataset_dir, cases, directions, groups, batch_size: int, max_rows: int):
    from mechmod.interventions.patch_study import PatchStudyConfig, run_patching

    cfg = PatchStudyConfig(directions=tuple(directions), positions=tuple(groups), components=("resid",), units=False,
                           knockouts=(), batch_size=batch_size, max_rows=max_rows)
    return run_patching(mllm, dataset_dir, cases, cfg).layers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="organism")
    p.add_argument("--groups", type=int, default=None, help="colour groups (default 2; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="one group, one visual tier (seconds)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="`mechmod patch --batch-size`")
    p.add_argument("--max-rows", type=int, default=64, help="`mechmod patch --max-rows`")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mechmod.data import generate_color, load_cases
    from mechmod.interventions.cases import DIRECTIONS, baseline
    from mechmod.interventions.patch_study import PatchStudyConfig
    from mechmod.interventions.patching import STUDY_GROUPS
    from mechmod.models import load_model

    torch.set_num_threads(a.threads)
    groups = a.groups or (1 if a.quick else 2)
    dv = [0] if a.quick else None
    directions, positions = list(DIRECTIONS), list(STUDY_GROUPS)
    mllm = load_model(a.model)
    with tempfile.TemporaryDirectory(prefix="mechmod-bench-") as tmp, torch.no_grad():
        ds = generate_color(Path(tmp) / "dataset", groups=groups, seed=0, dv=dv, progress=False)
        cases = load_cases(ds)
        cases = cases[cases["control"].isin(["none", "image_irrelevant"])]
        base = baseline(mllm, ds, cases).table  # warm-up, and the loop's pairs (not timed)
        t0 = time.perf_counter()
        baseline(mllm, ds, cases)
        base_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = library(mllm, ds, cases, directions, positions, a.batch_size, a.max_rows)
        lib_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive, forwards = anchors_loop(mllm, ds, base, directions, positions)
        naive_s = time.perf_counter() - t0
    got = {(r.direction, r.positions, r.case_id, r.layer): r.ld_patched for r in table.itertuples()}
    if set(got) != set(naive):
        raise SystemExit(f"the two sweeps patched different (pair, layer, group)s: {len(got)} vs {len(naive)}")
    diff = max((abs(got[k] - v) for k, v in naive.items()), default=0.0)
    if not diff <= TOLERANCE:
        raise SystemExit(f"library and anchors' loop disagree: max |LD difference| {diff:.3g} > {TOLERANCE}")
    n = len(naive)
    result = {
        "benchmark": "patching", "patches": n, "anchors_forwards": forwards,
        "naive_patches_per_s": round(n / naive_s, 2), "library_patches_per_s": round(n / lib_s, 2),
        "speedup": round(naive_s / lib_s, 2), "max_abs_diff": float(f"{diff:.3g}"),
        "naive_seconds": round(naive_s, 3), "library_seconds": round(lib_s, 3), "baseline_seconds": round(base_s, 3),
        "speedup_excluding_baseline": round(naive_s / max(lib_s - base_s, 1e-9), 2),
        "settings": {"model": a.model, "groups": groups, "dv": dv or "all",
                     "pairs": int(table.drop_duplicates(["direction", "case_id"]).shape[0]),
                     "cases": int(len(cases)), "layers": mllm.n_layers, "position_groups": positions,
                     "directions": directions, "component": "resid", "backend": PatchStudyConfig().backend,
                     "batch_size": a.batch_size,
                     "max_rows": a.max_rows, "threads": a.threads, "dtype": str(mllm.dtype).replace("torch.", ""),
                     "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
                     "library_includes": "clean baseline of every case", "naive_includes": "encoding, source and "
                     "clean target forward per pair"},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
