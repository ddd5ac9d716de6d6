"""Write generated blocks into README.md (between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` markers), so the numbers there come from commands,
not from typing.

    python scripts/readme_blocks.py findings RUN [--lens-fidelity LENS_DIR/fidelity.json]
    python scripts/readme_blocks.py bench CPU.json [GPU.json ...] [PATCHING.json ...]
    python scripts/readme_blocks.py card          # `mechmod organism eval` card of the shipped organism
    python scripts/readme_blocks.py planted OUT/planted_preference.json   # probes/planted_preference.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mechmod.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"README.md has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.rstrip()}\n{end}{tail}"


def _ci(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "n/a"
    ci = d.get("ci") or [None, None]
    lo = "n/a" if ci[0] is None else f"{ci[0]:.3f}"
    hi = "n/a" if ci[1] is None else f"{ci[1]:.3f}"
    return f"{d['mean']:.3f} [{lo}, {hi}] (n={d.get('n')})"


def _p(p) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def findings(run: Path, fidelity: Path | None) -> str:
    s = json.loads(RunDir(run).summary.read_text())
    osc = s.get("oscillations") or {}
    amb, clr = osc.get("ambiguous"), osc.get("clear")
    ctl = {k: v for k, v in osc.items() if k.startswith("control_")}
    layers = "the embedding output and the decoder layers" if s.get("include_embedding") else "the decoder layers"
    lines = [f"Run: `{s['model']}`, {s['n_cases']} cases ({s.get('n_failed', 0)} failed), lens `{s.get('lens')}` "
             f"over {layers}; "
             f"written by `python scripts/readme_blocks.py findings {run}`.", ""]
    bp, ci = s.get("balance_point"), s.get("balance_ci")
    bp_txt = "none (" + str((s.get("balance") or {}).get("status")) + ")" if bp is None else (
        f"{bp:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""))
    lines += [f"- TFR {s['tfr']:.3f}, VFR {s['vfr']:.3f} (both-correct subset: TFR "
              f"{'n/a' if s.get('tfr_both_correct') is None else format(s['tfr_both_correct'], '.3f')}); "
              f"balance point {bp_txt}; monotone trend p = "
              f"{_p((s.get('monotonicity') or {}).get('p_value'))}."]
    lines.append(f"- Mean oscillations per case: ambiguous {_ci(amb)}, clear {_ci(clr)}, "
                 + ", ".join(f"{k.replace('control_', 'control ')} {_ci(v)}" for k, v in sorted(ctl.items())) + ".")
    if amb and clr and ctl and amb.get("mean") is not None and clr.get("mean") is not None:
        def order(a, b, name_a, name_b):
            sep = a.get("ci") and b.get("ci") and a["ci"][0] > b["ci"][1]
            return (f"{name_a} > {name_b} {'holds' if a['mean'] > b['mean'] else 'does not hold'}"
                    f"{' (95% intervals apart)' if sep else ' (intervals overlap)' if a['mean'] > b['mean'] else ''}")
        parts = [order(amb, clr, "ambiguous", "clear")]
        parts += [order(clr, v, "clear", k.replace("control_", "control ")) for k, v in sorted(ctl.items())
                  if v.get("mean") is not None]
        chain = amb["mean"] > clr["mean"] > max(v["mean"] for v in ctl.values() if v.get("mean") is not None)
        lines.append(f"- ambiguous > clear > control: **{'holds' if chain else 'does not hold'}** as a whole: "
                     + "; ".join(parts) + ".")
    else:
        lines.append("- ambiguous > clear > control: cannot be assessed (no balance point, so no regions).")
    sw = s.get("switch_rates") or {}
    if sw:
        lines.append("- Where the switches arrive (share of each group's switches in the early / middle / late third "
                     "of the decoder layers): " + "; ".join(
                         f"{k.replace('control_', 'control ')} " + "/".join(
                             f"{v['band_shares'].get(b, 0):.2f}" for b in ("early", "middle", "late"))
                         + f" (most: {v['band']['name']})" for k, v in sorted(sw.items()) if v.get("band")) + ".")
    att = s.get("attention_by_layer")
    if att:
        lines.append("- Attention of the answer position, mean per layer (image / description / question): "
                     + "; ".join(f"L{i} {a:.3f}/{b:.3f}/{c:.3f}" for i, (a, b, c) in
                                 enumerate(zip(att["image"], att["description"], att["question"]))) + ".")
    if fidelity and fidelity.is_file():
        f = json.loads(fidelity.read_text())["heldout"]
        lines.append(f"- Lens fidelity, held-out KL(final || lens) in nats per layer (-1 = embedding output, then "
                     f"the decoder layers) "
                     f"(n={f['n_examples']}): logit lens " + ", ".join(f"{x:.3f}" for x in f["kl_logit"])
                     + "; tuned lens " + ", ".join(f"{x:.3f}" for x in f["kl_tuned"]) + ".")
    return "\n".join(lines)


def patching_rows(rows: list[dict]) -> list[str]:
    """The patch-sweep benchmark's lines (``python -m benchmarks.patching``)."""
    out = ["", "| patch sweep | pairs x layers x groups | anchors' loop patches/s | `mechmod patch` patches/s | speedup "
           "| speedup without the clean baseline | max abs LD difference |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["settings"]
        out.append(f"| {s['model']} ({s['layers']} layers), {s['groups']} groups, {len(s['directions'])} directions, "
                   f"threads {s['threads']} | {s['pairs']} x {s['layers']} x {len(s['position_groups'])} | "
                   f"{r['naive_patches_per_s']} | {r['library_patches_per_s']} | {r['speedup']} | "
                   f"{r.get('speedup_excluding_baseline', 'n/a')} | {r['max_abs_diff']} |")
    return out


def bench(files: list[Path]) -> str:
    every = [json.loads(p.read_text().strip().splitlines()[-1]) for p in files]
    rows = [r for r in every if r.get("benchmark") != "patching"]
    out = ["| shape | device | cases | naive cases/s | runner cases/s | speedup | fraction of bound "
           "| forwards alone | kernels alone | peak memory |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = (f"{r['runner_peak_gpu_mb']} MB GPU" if r.get("runner_peak_gpu_mb")
               else f"{r.get('runner_peak_rss_mb')} MB RSS (naive {r.get('naive_peak_rss_mb')})")
        out.append(f"| {r['shape']} | {r['device']} | {r['cases']} | {r.get('naive_cases_per_s')} | "
                   f"{r['runner_cases_per_s']} | {r.get('speedup')} | {r['fraction_of_bound']} | "
                   f"{r.get('fraction_of_bound_forwards', 'n/a')} | {r.get('fraction_of_bound_kernels', 'n/a')} | {mem} |")
    for r in (r for r in rows if r.get("paper_scale_projected_minutes") is not None):
        out.append("")
        out.append(f"{r['device']}, {r['shape']} ({r['params_b']} B parameters, {r.get('dtype', 'bfloat16')}): MFU {r['mfu']}; the paper-scale "
                   f"colour study ({r['paper_scale_pflop']} PFLOP) projects to {r['paper_scale_projected_minutes']} min "
                   f"at this throughput ({r['paper_scale_minutes_at_bound']} min at the matmul bound).")
    for r in rows:
        if r.get("memory_flat") is None:
            continue
        peak = "GPU" if r.get("runner_peak_gpu_mb") else "RSS"
        by = r.get("runner_peak_gpu_mb_by_groups") or r.get("runner_peak_rss_mb_by_groups")
        top = ", ".join(f"{o['op']} {o['self_device_ms'] if o.get('self_device_ms') is not None else o['self_cpu_ms']} ms"
                        for o in r["profile"][:4])
        out.append("")
        out.append(f"{r['device']}, {r['shape']}: peak {peak} {' / '.join(map(str, by))} MB at {' / '.join(map(str, r['memory_cases']))} "
                   f"cases (ratio {r['memory_flat']}, flat = 1); profile of one batch of {r['profile_cases']} cases "
                   f"({r['profile_wall_seconds']} s, sorted by {r['profile_sorted_by']}): {top}.")
    patching = [r for r in every if r.get("benchmark") == "patching"]
    return "\n".join(out + (patching_rows(patching) if patching else []))


def card() -> str:
    from mechmod.models.organism import CHECKPOINT_DIR

    return "```\n" + (CHECKPOINT_DIR / "card.txt").read_text().rstrip() + "\n```"


def planted(path: Path) -> str:
    """The planted-preference probe's table: measured beside oracle balance points, and the verdict."""
    d = json.loads(path.read_text())
    cfg = d["config"]

    def ci(c):
        return "n/a" if not c else f"[{c[0]:+.3f}, {c[1]:+.3f}]"

    def v(x):
        return "n/a" if x is None else f"{x:+.3f}"

    out = [f"`python probes/planted_preference.py --groups {cfg['groups']} --seed {cfg['seed']} --out OUT` "
           f"(a fresh colour dataset, seed {cfg['seed']}; written by "
           f"`python scripts/readme_blocks.py planted OUT/planted_preference.json`):", "",
           "| model | planted W | balance point (mechmod) [95% CI] | oracle balance point [95% CI] | TFR | decided cases |",
           "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['model']} | {r['text_weight']:g} | {v(r['balance_point'])} {ci(r['balance_ci'])} | "
                   f"{v(r['oracle_balance_point'])} {ci(r['oracle_ci'])} | {r['tfr']:.3f} | {r['n_decided']} |")
    out += ["", f"Planted order recovered: **{'yes' if d['ordered'] else 'no'}**; outer two 95% intervals apart: "
                f"**{'yes' if d['outer_intervals_apart'] else 'no'}**."]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("findings")
    f.add_argument("run", type=Path)
    f.add_argument("--lens-fidelity", type=Path, default=None)
    b = sub.add_parser("bench")
    b.add_argument("files", type=Path, nargs="+")
    sub.add_parser("card")
    pl = sub.add_parser("planted")
    pl.add_argument("json", type=Path)
    a = p.parse_args(argv)
    body = {"findings": lambda: findings(a.run, a.lens_fidelity), "bench": lambda: bench(a.files), "card": card,
            "planted": lambda: planted(a.json)}[a.what]()
    tmp = README.with_suffix(".md.tmp")
    tmp.write_text(replace_block(README.read_text(), a.what, body))
    tmp.replace(README)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
