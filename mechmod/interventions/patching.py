"""Activation patching: a component's output at layer l over a position
group, copied from a source run into a target run.

Config: :class:`PatchSpec` (component, layers, position groups). Module:
:func:`patch_groups`, a thin variant of the generic :func:`core.sweep`
(setter = "write the source's activations at the aligned positions of
layer l"): one source forward reads every layer at every group's aligned
positions, then each (group, layer) of a chunk is patched in one forward,
the target batch stacked once per setting along the batch dimension
(:func:`patch_layers`: one group). A residual-stream patch at layer l
resumes the clean target run at layer l: only the later layers run, from
the group's first patched position on (:mod:`mechmod.interventions.resume`).

Position alignment (:func:`align_positions`), for source and target prompts
of different lengths (e.g. vision-only source, conflict target): positions
are aligned *by span*. The k-th token of a span (image, description,
question) in the source goes to the k-th token of the same span in the
target, for k below the shorter span's length (the rest is not patched;
a span missing in the source, e.g. the description of a vision-only
prompt, patches nothing). ``last`` is right-aligned (answer position to
answer position). ``template`` tokens before the first content token are
aligned from the left, those after the last content token from the
right, those in between by order. ``all`` is the union of every span, so
for prompts with identical layouts it is the identity on every non-pad
position.

Metrics, per pair with source answer ``a_s`` and target answer ``a_t``
(the clean runs' top-1 labels, :class:`mechmod.answers.LabelSet`):
LD = logit(a_s) - logit(a_t) (the max over each label's token variants,
as in the run's logit differences); flip: the patched top-1 label is
``a_s``; restoration = (LD_patched - LD_target) / (LD_source - LD_target)
(0: nothing moved, 1: the source's preference fully restored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from mechmod.errors import MechmodError
from mechmod.interventions.core import Site, chunk_for, continuation, forward, sweep, sweep_tail, tails_exact
from mechmod.interventions.resume import record, sweep_resumed
from mechmod.models.base import same_image
from mechmod.names import PATCH_COMPONENTS as COMPONENTS, POSITION_GROUPS, SPANS

STUDY_GROUPS = ("image", "description", "question", "last")


@dataclass(frozen=True)
class PatchSpec:
    """What to patch: ``component`` in COMPONENTS, ``positions`` a group of
    POSITION_GROUPS or a tuple of them (their union), ``layers`` the decoder
    layers to sweep (None: all)."""

    component: str = "resid"
    positions: str | tuple[str, ...] = "last"
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise MechmodError(f"PatchSpec.component {self.component!r}: choose one of {COMPONENTS}")
        bad = [g for g in self.groups if g not in POSITION_GROUPS]
        if bad or not self.groups:
            raise MechmodError(f"PatchSpec.positions {self.positions!r}: use groups of {POSITION_GROUPS}")

    @property
    def groups(self) -> tuple[str, ...]:
        g = (self.positions,) if isinstance(self.positions, str) else tuple(self.positions)
        return SPANS if "all" in g else g

    def layer_list(self, n_layers: int) -> list[int]:
        layers = list(range(n_layers)) if self.layers is None else [int(x) for x in self.layers]
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise MechmodError(f"PatchSpec.layers {bad} outside 0..{n_layers - 1}")
        return layers


@dataclass(frozen=True)
class Alignment:
    """Per row, P aligned (source, target) position pairs; ``valid`` masks
    the padding of rows with fewer pairs. All [B, P]."""

    src: torch.Tensor
    tgt: torch.Tensor
    valid: torch.Tensor

    @property
    def n_pairs(self) -> torch.Tensor:
        return self.valid.sum(1)


def _positions(mask_row: torch.Tensor) -> list[int]:
    return torch.nonzero(mask_row, as_tuple=False).flatten().tolist()


def _template_parts(spans: dict, i: int) -> tuple[list[int], list[int], list[int]]:
    tpl = _positions(spans["template"][i])
    content = _positions(spans["image"][i] | spans["description"][i] | spans["question"][i])
    lo, hi = (min(content), max(content)) if content else (10**9, -1)
    return [p for p in tpl if p < lo], [p for p in tpl if lo < p < hi], [p for p in tpl if p > hi]


def _row_pairs(source, target, i: int, groups: Sequence[str]) -> list[tuple[int, int]]:
    pairs: dict[int, int] = {}  # target position -> source position
    Ts, Tt = source.inputs["input_ids"].shape[1], target.inputs["input_ids"].shape[1]
    for g in groups:
        if g == "last":
            pairs.setdefault(Tt - 1, Ts - 1)
        elif g == "template":
            (sh, sm, st), (th, tm, tt) = _template_parts(source.spans, i), _template_parts(target.spans, i)
            n = min(len(st), len(tt))
            for a, b in list(zip(sh, th)) + list(zip(sm, tm)) + list(zip(st[len(st) - n:], tt[len(tt) - n:])):
                pairs.setdefault(b, a)
        else:
            for a, b in zip(_positions(source.spans[g][i]), _positions(target.spans[g][i])):
                pairs.setdefault(b, a)
    return sorted((a, b) for b, a in pairs.items())


def align_positions(source, target, positions: str | Sequence[str]) -> Alignment:
    """Aligned positions of a position group between two :class:`Encoded`
    batches of equal size (row i of the source patches row i of the
    target); see the module docstring for the rule."""
    groups = PatchSpec(positions=positions if isinstance(positions, str) else tuple(positions)).groups
    B = source.batch_size
    if target.batch_size != B:
        raise MechmodError(f"align_positions: {B} source rows vs {target.batch_size} target rows")
    return _packed([_row_pairs(source, target, i, groups) for i in range(B)])


def _content_start(enc, i: int) -> int:
    """Row i's first non-pad position (left padding)."""
    mask = enc.inputs.get("attention_mask")
    return 0 if mask is None else int(torch.nonzero(mask[i].cpu()).min())


def shared_prefix(source, target, i: int, image_token_id: int) -> tuple[int, int, int]:
    """Row i's shared prefix: (its first source position, its first target
    position, its length). From their first non-pad positions the two rows
    hold the same tokens for ``length`` positions, an image among them only
    where both rows show the same image (:func:`mechmod.models.base.same_image`); a causal
    model computes the same activations there in both runs."""
    s0, t0 = _content_start(source, i), _content_start(target, i)
    a, b = source.inputs["input_ids"][i, s0:].cpu(), target.inputs["input_ids"][i, t0:].cpu()
    n = min(a.numel(), b.numel())
    differ = torch.nonzero(a[:n] != b[:n]).flatten()
    n = int(differ[0]) if differ.numel() else n
    shown = [enc.images[i] if enc.images else None for enc in (source, target)]
    if not same_image(*shown):
        image = torch.nonzero(a[:n] == image_token_id).flatten()
        n = int(image[0]) if image.numel() else n
    return s0, t0, n


def changed(align: Alignment, source, target, image_token_id: int) -> Alignment:
    """``align`` without its identity pairs: those whose source and target
    positions sit at the same offset in the row's :func:`shared_prefix`,
    where the source's activations are the target's own (e.g. the image of
    a source showing the target's image after the same template). Writing
    them changes nothing, so they need no forward."""
    rows = []
    for i in range(align.valid.shape[0]):
        s0, t0, n = shared_prefix(source, target, i, image_token_id)
        pairs = zip(align.src[i][align.valid[i]].tolist(), align.tgt[i][align.valid[i]].tolist())
        rows.append([(a, b) for a, b in pairs if not (a - s0 == b - t0 < n)])
    return _packed(rows)


def _packed(rows: Sequence[Sequence[tuple[int, int]]]) -> Alignment:
    """An :class:`Alignment` of per-row (source, target) position pairs."""
    B, P = len(rows), max(1, max((len(r) for r in rows), default=0))
    src = torch.zeros(B, P, dtype=torch.long)
    tgt = torch.zeros(B, P, dtype=torch.long)
    valid = torch.zeros(B, P, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            src[i, : len(r)] = torch.tensor([a for a, _ in r])
            tgt[i, : len(r)] = torch.tensor([b for _, b in r])
            valid[i, : len(r)] = True
    return Alignment(src=src, tgt=tgt, valid=valid)


def source_activations(mllm, source, component: str, layers: Sequence[int], aligns: Sequence[Alignment],
                       backend: str = "nnsight"):
    """One forward of the source batch for every alignment: (its answer
    logits [B, V], per alignment {layer: the component's activations at its
    aligned source positions [B, P, D]})."""
    rows = torch.arange(source.batch_size, device=mllm.device)[:, None]
    src = torch.cat([a.src for a in aligns], dim=1).to(mllm.device)
    reads = [(Site(l, component), lambda x: x[rows, src]) for l in layers]
    logits, got = forward(mllm, source.inputs, reads=reads, backend=backend)
    sizes = [a.src.shape[1] for a in aligns]
    per_layer = [x.split(sizes, dim=1) for x in got]
    return logits, [{l: parts[k] for l, parts in zip(layers, per_layer)} for k in range(len(aligns))]


def patch_setter(component: str, acts: Sequence[dict[int, torch.Tensor]], aligns: Sequence[Alignment],
                 offset: int = 0):
    """The sweep setter: setting = (alignment index k, layer); writes
    ``acts[k][layer]`` into the target copy's positions aligned by
    ``aligns[k]``, each ``offset`` earlier (a tail past a cached prefix)."""
    b_idx = [torch.arange(a.valid.shape[0])[:, None].expand_as(a.valid)[a.valid] for a in aligns]
    t_idx = [a.tgt[a.valid] - offset for a in aligns]

    def setter(setting: tuple[int, int], rows: slice):
        k, layer = setting
        vals = acts[k][layer][aligns[k].valid.to(acts[k][layer].device)]

        def write(x):
            x[b_idx[k].to(x.device) + rows.start, t_idx[k].to(x.device)] = vals.to(x.dtype)
            return x
        return [(Site(layer, component), write)]
    return setter


def tail_start(target, align: Alignment, image_token_id: int, inside_images: bool = False) -> int:
    """The first target position ``align`` writes, where every image token
    comes before it or ``inside_images`` (0 otherwise: the patch needs the
    whole prompt)."""
    first = int(align.tgt[align.valid].min()) if align.valid.any() else 0
    if inside_images:
        return first
    images = torch.nonzero((target.inputs["input_ids"] == image_token_id).any(0)).flatten()
    return first if images.numel() == 0 or first > int(images.max()) else 0


def patch_groups(mllm, source, target, specs: Sequence[PatchSpec], metric=None, chunk: int | None = None,
                 max_rows: int = 64, backend: str = "nnsight"):
    """Patch from ``source`` into ``target`` (Encoded batches, row i into row
    i) for each spec (same component and layers, e.g. one per position
    group) at each of its layers: one source forward for all, then sweeps
    over every (spec, layer), ``chunk`` settings per forward (default: as
    many as fit ``max_rows`` rows). Specs that write after the image (the
    text, the answer position) compute the positions from their first
    written one only, over a clean prefix cache (where
    :func:`core.tails_exact`: one cache from the earliest such position).
    The residual stream is patched with forwards resumed at the patched
    layer (:mod:`mechmod.interventions.resume`, where
    :func:`core.tails_exact`), each spec from its own first written
    position (even inside an image, where image tokens attend causally),
    over one clean record of the target in segments. Writes of a target
    position's own activations are left out (:func:`changed`); a spec left
    with none gets the clean target's metric without a forward.
    Returns (per spec the metric of the patched answer logits
    [n_layers, B, ...], source logits [B, V], the clean target's logits
    [B, V], per spec its alignment)."""
    if len({(s.component, s.layers) for s in specs}) != 1:
        raise MechmodError("patch_groups: the specs must share component and layers")
    component, layers = specs[0].component, specs[0].layer_list(mllm.n_layers)
    aligns = [align_positions(source, target, s.positions) for s in specs]
    writes = [changed(a, source, target, mllm.image_token_id) for a in aligns]
    src_logits, acts = source_activations(mllm, source, component, layers, writes, backend)
    chunk = chunk or chunk_for(target.batch_size, max_rows)
    cached = tails_exact(mllm, backend)
    resumed = cached and component == "resid"
    live = [k for k, w in enumerate(writes) if w.valid.any()]
    inside = resumed and mllm.adapter.causal_image  # resume.record cuts inside images there
    starts = {k: tail_start(target, writes[k], mllm.image_token_id, inside) if cached else 0 for k in live}
    tails = [c for c in starts.values() if c]
    cut_of = starts if resumed else {k: min(tails) if c else 0 for k, c in starts.items()}  # one prefix cache
    parts = {cut: [k for k, c in cut_of.items() if c == cut] for cut in sorted(set(cut_of.values()))}
    rec = record(mllm, target.inputs, list(parts)) if resumed else None
    tgt_logits = rec.logits if resumed else forward(mllm, target.inputs, backend=backend)[0]
    out: dict[tuple[int, int], torch.Tensor] = {}
    for cut, part in parts.items():
        settings = [(k, l) for k in part for l in layers]
        out.update(zip(settings, _sweep(mllm, target.inputs, rec, cut, settings, component, acts, writes, metric,
                                        chunk, backend)))
    if len(live) < len(specs):
        clean = (metric or (lambda x, more: x))(tgt_logits, continuation(mllm, target.inputs, (), backend))
        out.update(((k, l), clean) for k in range(len(specs)) if k not in live for l in layers)
    return [torch.stack([out[k, l] for l in layers]) for k in range(len(specs))], src_logits, tgt_logits, aligns


def _sweep(mllm, inputs, rec, cut: int, settings, component: str, acts, aligns, metric, chunk: int,
           backend: str) -> torch.Tensor:
    """One patch sweep of ``settings`` writing at positions ``cut`` and later
    (0: the whole prompt): resumed at the patched layer from ``rec`` (a
    :func:`resume.record` of ``inputs``, or None), else over the clean
    prefix's cache (``cut`` > 0), else full forwards."""
    setter = patch_setter(component, acts, aligns)
    tail_setter = patch_setter(component, acts, aligns, cut)
    if rec is not None:
        return sweep_resumed(mllm, inputs, rec, cut, settings, tail_setter, setter, metric, chunk, backend)
    if cut:
        return sweep_tail(mllm, inputs, cut, settings, tail_setter, setter, metric, chunk, backend)
    return sweep(mllm, inputs, settings, setter, metric, chunk, backend)


def patch_layers(mllm, source, target, spec: PatchSpec, metric=None, chunk: int | None = None,
                 max_rows: int = 64, backend: str = "nnsight"):
    """:func:`patch_groups` for one spec. Returns (metric of the patched
    answer logits [n_layers, B, ...], source logits [B, V], alignment)."""
    out, src_logits, _, aligns = patch_groups(mllm, source, target, [spec], metric, chunk, max_rows, backend)
    return out[0], src_logits, aligns[0]


# ------------------------------------------------------------------ metrics
def label_logit(logits: torch.Tensor, labels, answers: Sequence[str]) -> torch.Tensor:
    """[B, V] logits -> [B]: each row's max logit over its answer's token
    variants (NaN for an answer outside the label set, e.g. 'other')."""
    out = torch.full((logits.shape[0],), float("nan"))
    for i, a in enumerate(answers):
        if a in labels.labels:
            out[i] = logits[i, torch.as_tensor(labels.logit_token_ids(a))].max()
    return out


def logit_diff(logits: torch.Tensor, labels, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
    """logit(a) - logit(b) per row (see :func:`label_logit`)."""
    return label_logit(logits, labels, a) - label_logit(logits, labels, b)


def restoration(ld_patched, ld_target, ld_source) -> np.ndarray:
    """(LD_patched - LD_target) / (LD_source - LD_target), NaN where the
    source and target differ by less than 1e-6."""
    p, t, s = (np.asarray(x, dtype=float) for x in (ld_patched, ld_target, ld_source))
    den = s - t
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(den) > 1e-6, (p - t) / den, np.nan)


def flip_rate(patched_answers, source_answers) -> float | None:
    """Share of pairs whose patched answer is the source's."""
    a, s = np.asarray(patched_answers, dtype=object), np.asarray(source_answers, dtype=object)
    return float((a == s).mean()) if a.size else None


# ---------------------------------------------------------------- summaries
def first_layer_reaching(rates, threshold: float = 0.5, layers: Sequence[int] | None = None) -> int | None:
    """The first layer whose flip rate is >= ``threshold`` (None: never)."""
    r = np.asarray(rates, dtype=float)
    layers = list(range(r.size)) if layers is None else list(layers)
    hit = np.nonzero(np.nan_to_num(r, nan=-np.inf) >= threshold)[0]
    return int(layers[hit[0]]) if hit.size else None


def critical_window(restoration_by_layer, share: float = 0.8, layers: Sequence[int] | None = None,
                    min_total: float = 1e-4) -> dict | None:
    """The shortest run of consecutive layers whose restoration holds
    ``share`` of the total (negative values count as 0; ties: the earliest,
    then the one holding most). None when nothing is restored."""
    w = np.clip(np.nan_to_num(np.asarray(restoration_by_layer, dtype=float)), 0, None)
    layers = list(range(w.size)) if layers is None else list(layers)
    total = float(w.sum())
    if total < min_total:
        return None
    c = np.concatenate([[0.0], np.cumsum(w)])
    for length in range(1, w.size + 1):
        sums = c[length:] - c[:-length]
        ok = np.nonzero(sums >= share * total - 1e-12)[0]
        if ok.size:
            s = int(ok[np.argmax(sums[ok])])  # most restoration; ties: the earliest
            return {"start": int(layers[s]), "end": int(layers[s + length - 1]), "length": length,
                    "share": float(sums[s] / total)}
    return None  # pragma: no cover - length n always holds the total


def flips_by_dh(dh_rel, flipped, bins: int = 4) -> list[dict]:
    """Flip rate per layer in equal-count dHrel bins. ``flipped`` [n_cases,
    n_layers] bool. Each bin: dHrel range, n, flip rate per layer and the
    first layer reaching 50%."""
    x = np.asarray(dh_rel, dtype=float)
    f = np.asarray(flipped, dtype=float)
    if x.size == 0:
        return []
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(edges.size - 2, 0))
    out = []
    for b in range(max(edges.size - 1, 1)):
        sel = idx == b
        if not sel.any():
            continue
        rates = f[sel].mean(0)
        out.append({"dh_lo": float(x[sel].min()), "dh_hi": float(x[sel].max()), "dh_mean": float(x[sel].mean()),
                    "n": int(sel.sum()), "flip_rate": [float(v) for v in rates],
                    "first_50": first_layer_reaching(rates)})
    return out


@dataclass(frozen=True)
class PatchCurve:
    """Per layer of one (direction, component, position group) sweep.
    Axes: ``layers`` [n_layers]; ``flip_rate`` / ``restoration`` (mean
    normalised restoration over the pairs with a finite value) per layer."""

    direction: str
    component: str
    positions: str
    n_pairs: int
    layers: list[int]
    flip_rate: list[float]
    restoration: list[float]
    first_50: int | None = None
    window: dict | None = None
    by_dh: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not (len(self.layers) == len(self.flip_rate) == len(self.restoration)):
            raise ValueError("PatchCurve: per-layer lists differ in length")

    def to_dict(self) -> dict:
        from mechmod._io import jsonable

        return jsonable(dict(self.__dict__))


def summarize_curve(direction: str, component: str, positions: str, layers: Sequence[int], flipped,
                    restored, dh_rel, bins: int = 4) -> PatchCurve:
    """Summary of a sweep: ``flipped`` [n_pairs, n_layers] bool,
    ``restored`` [n_pairs, n_layers] float (NaN allowed)."""
    f = np.asarray(flipped, dtype=float).reshape(-1, len(layers))
    r = np.asarray(restored, dtype=float).reshape(-1, len(layers))
    n = f.shape[0]
    rate = f.mean(0) if n else np.full(len(layers), np.nan)
    with np.errstate(invalid="ignore"):
        rest = np.nanmean(r, 0) if n and np.isfinite(r).any() else np.full(len(layers), np.nan)
    return PatchCurve(direction=direction, component=component, positions=positions, n_pairs=n,
                      layers=[int(x) for x in layers], flip_rate=[float(v) for v in rate],
                      restoration=[float(v) for v in rest], first_50=first_layer_reaching(rate, 0.5, layers),
                      window=critical_window(rest, 0.8, layers), by_dh=flips_by_dh(dh_rel, f, bins) if n else [])
