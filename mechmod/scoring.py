"""Scoring conflict cases: one row of results per case.

Per chunk of cases (best in image order, so an image's cases travel
together): vision-only once per (image, question), text-only once per
(description, question), multimodal per case, traced at the answer position;
the multimodal residuals of every layer are decoded by the lens into
per-layer votes and logit differences.

A case that cannot be scored is a row with ``status='failed'`` and
``error='kind: reason'`` while the others are scored: ``image`` (its image
does not decode), ``model`` / ``oom`` (the forward raised for it alone),
``nonfinite`` (NaN or inf outputs, e.g. a float16 overflow, which raise
nothing: :func:`flag_nonfinite` turns them into failures so the summary
never averages a NaN).

``score`` is the public entry (a table, no run directory); the runner
streams :func:`score_cases` chunks to disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from mechmod.answers import LabelSet
from mechmod.data import open_image
from mechmod.decoding import Continuation, over_prefixes, reencoded
from mechmod.dynamics import NO_LAYER, commit_layer, count_oscillations_batch, counted, first_counted_layer, \
    last_sign_change, layer_votes
from mechmod.errors import MechmodError
from mechmod.following import follow_outcome
from mechmod.lenses import LogitLens, TunedLens, Unembed
from mechmod.phrase_answers import PhraseSet, answer_set
from mechmod.prefix import KeptPrefix, trace_shared
from mechmod.tracing import SPANS, span_mass, trace
from mechmod.uncertainty import (LOGIT_MEASURES, UNCERTAINTY_MEASURES, prompt_generator, relative_uncertainty,
                                  sample_labels, sampled_entropy)

#: kind of a case whose model outputs are not finite (the 'error' prefix)
NONFINITE = "nonfinite"


@dataclass(frozen=True)
class ScoreOptions:
    """How cases are scored: batch size and prefix sharing change speed, the
    backend, uncertainty measure and attention columns change the rows.
    ``samples`` > 0 adds the sampled-answer entropy (hs_v, hs_t: that many
    answers per unimodal prompt, drawn from generators seeded by ``seed``).
    ``include_embedding`` counts the embedding output (layer -1) in the
    oscillations, commit layer and last sign change."""

    batch_size: int = 8
    backend: str = "hooks"
    uncertainty: str = "entropy"
    share_prefix: bool = True
    attention: bool = True
    include_embedding: bool = False
    samples: int = 0
    seed: int = 0


def score(mllm, cases: pd.DataFrame, dataset_dir: str | Path, batch_size: int = 8, backend: str = "hooks",
          uncertainty: str = "entropy", lens=None, share_prefix: bool = True,
          include_embedding: bool = False) -> pd.DataFrame:
    """One row per case: y_v, y_t, y_m (answer labels or 'other'), h_v, h_t,
    h_m (full-vocabulary entropy, nats, float32), hl_* (label-set entropy),
    hmax_* (1 - max probability), hr2_* (Renyi-2 entropy), hs_v, hs_t
    (sampled-answer entropy, only with ``ScoreOptions.samples``),
    p_v, p_t, p_m (per-label probabilities in ``candidates`` order),
    dh_rel, follow, per-layer votes and logit differences under ``lens``
    (default: the logit lens; decoder layers 0..L-1 in the lists, the
    embedding output's in ``embedding_vote`` / ``embedding_logit_diff``),
    oscillations, commit layer and last sign change over the decoder layers
    (and the embedding output with ``include_embedding``), status and error. A case that cannot be
    scored (e.g. its image does not decode) gets status 'failed' and its
    reason; the others are scored. Padding and batch size do not change
    the numbers beyond float32 rounding."""
    lens = lens or LogitLens(Unembed.from_model(mllm))
    options = ScoreOptions(batch_size=batch_size, backend=backend, uncertainty=uncertainty, share_prefix=share_prefix,
                           include_embedding=include_embedding)
    ordered = cases.sort_values(["image_id", "case_id"], kind="stable")
    rows = score_cases(mllm, lens, ordered, Path(dataset_dir), options)
    return rows.set_index("case_id").loc[list(cases["case_id"])].reset_index()


def score_cases(mllm, lens, cases: pd.DataFrame, dataset_dir: Path, options: ScoreOptions,
                prepared=None) -> pd.DataFrame:
    """Rows for ``cases`` (best in image order); a case that cannot be scored
    is recorded as failed with its reason while the others are scored.
    ``prepared``: their images and prefixes built ahead (a
    :class:`mechmod.loader.Prepared`; None: built here)."""
    try:
        rows = score_chunk(mllm, lens, cases, dataset_dir, options, prepared)
    except (MechmodError, RuntimeError, ValueError):
        rows = _isolate_failures(mllm, lens, cases, dataset_dir, options, prepared)
    return flag_nonfinite(rows, tuned_lens=isinstance(lens, TunedLens))


def _isolate_failures(mllm, lens, chunk: pd.DataFrame, dataset_dir: Path, options: ScoreOptions,
                      prepared=None) -> pd.DataFrame:
    """A chunk raised: score its cases one at a time so only the bad ones fail."""
    rows = []
    for i in range(len(chunk)):
        one = chunk.iloc[i : i + 1]
        try:
            rows.append(score_chunk(mllm, lens, one, dataset_dir, options, prepared))
        except (MechmodError, RuntimeError, ValueError) as e:  # per-case failure, recorded
            oom = "out of memory" in str(e).lower()
            reason = f"{e} (lower --batch-size, or use --dtype bfloat16 / --device-map auto)" if oom else str(e)
            rows.append(pd.DataFrame([failed_row(next(one.itertuples(index=False)), "oom" if oom else "model", reason)]))
    return pd.concat(rows, ignore_index=True)


def score_chunk(mllm, lens, cases: pd.DataFrame, dataset_dir: Path, options: ScoreOptions,
                prepared=None) -> pd.DataFrame:
    """All columns of results.parquet (but ``region``) for a chunk of cases.
    A case whose inputs cannot be built (e.g. an undecodable image) is
    returned with status 'failed' and its reason; the others go on; a
    forward that raises raises (see :func:`score_cases`)."""
    rows: dict[str, dict[str, Any]] = {}
    images: dict[str, Any] = {}
    for rel in cases["image_path"].unique():
        try:
            images[rel] = prepared.images[rel] if prepared is not None else open_image(dataset_dir, rel)
        except MechmodError as err:
            images[rel] = err
    ok = []
    for rec in cases.itertuples(index=False):
        img = images[rec.image_path]
        if isinstance(img, MechmodError):
            rows[rec.case_id] = failed_row(rec, "image", str(img))
        else:
            ok.append(rec)
    if not ok:
        return pd.DataFrame(list(rows.values()))
    ok_df = pd.DataFrame(ok)
    # One label set per candidate tuple (tasks differ in their labels; MC2's phrases: mechmod.phrase_answers).
    out_rows = []
    for cand, sub in ok_df.groupby(ok_df["candidates"].map(tuple), sort=False):
        labels = answer_set(mllm.tokenizer, list(cand))
        group = _score_group(mllm, lens, sub, images, labels, options, prepared.prefixes if prepared else {})
        if isinstance(labels, PhraseSet) and not labels.votes_defined:
            group = [_without_layer_votes(r) for r in group]
        out_rows.extend(group)
    for r in out_rows:
        rows[r["case_id"]] = r
    return pd.DataFrame([rows[c] for c in cases["case_id"] if c in rows])


# ------------------------------------------------------------- tracing
def _traced(mllm, images, descriptions, questions, batch_size: int, backend: str, keep_resid: bool,
            attention: bool = False):
    """Trace prompts in batches; returns (logits [N, V], resid [N, L+1, d] or
    None, span attention mass [N, L, 3] or None)."""
    logits, resid, mass = [], [], []
    for s in range(0, len(questions), batch_size):
        enc = mllm.encode(images[s : s + batch_size], descriptions[s : s + batch_size], questions[s : s + batch_size])
        tr = trace(mllm, enc, backend=backend, attention=attention)
        logits.append(tr.logits)
        if keep_resid:
            resid.append(tr.resid)
        if attention:
            mass.append(span_mass(tr.attn, enc.spans))
    return torch.cat(logits), (torch.cat(resid) if keep_resid else None), (torch.cat(mass) if attention else None)


def _traced_shared(mllm, sub: pd.DataFrame, images, vis_keys, batch_size: int, backend: str, attention: bool,
                   prefixes: dict, undecided=None):
    """Vision-only and multimodal prompts over one cached prefix per image
    (mechmod.prefix; ``prefixes``: those built ahead, by image path): returns (vision logits in vis_keys order, multimodal
    logits, residuals and span attention masses in ``sub`` order, and by
    image path the prefix forwards kept for the images with a row that
    ``undecided`` (logits [n, V] -> per row) says will be written on)."""
    paths = list(dict.fromkeys(sub["image_path"]))
    prompts: dict[str, list] = {p: [] for p in paths}
    where_v, where_m = [], []  # (image path, row in its prompt list)
    for p, q in vis_keys:
        where_v.append((p, len(prompts[p])))
        prompts[p].append((None, q))
    for p, d, q in zip(sub["image_path"], sub["description"], sub["question"]):
        where_m.append((p, len(prompts[p])))
        prompts[p].append((d, q))
    kept: dict[int, KeptPrefix] = {}
    keep = None if undecided is None else (lambda logits: any(undecided(logits)))
    traces = dict(zip(paths, trace_shared(mllm, [images[p] for p in paths], [prompts[p] for p in paths],
                                          batch_size=batch_size, backend=backend, attention=attention,
                                          prefixes=[prefixes.get(p) for p in paths], keep=keep, kept=kept)))
    v_logits = torch.stack([traces[p].logits[i] for p, i in where_v])
    m_logits = torch.stack([traces[p].logits[i] for p, i in where_m])
    m_resid = torch.stack([traces[p].resid[i] for p, i in where_m])
    m_mass = torch.stack([traces[p].span_attention[i] for p, i in where_m]) if attention else None
    return v_logits, m_logits, m_resid, m_mass, {paths[i]: prefix for i, prefix in kept.items()}


@dataclass(frozen=True)
class CleanRuns:
    """The clean runs of a group of cases: vision-only once per (image,
    question) in ``vis_keys`` order, text-only once per (description,
    question) in ``txt_keys`` order, multimodal per case; answer logits
    [N, V], the multimodal residuals [N, L+1, d] and span attention mass
    [N, L, 3] (None without attention); ``kept``: by image path, the prefix
    forwards kept for the continuation of undecided rows."""

    vis_keys: list[tuple[str, str]]
    txt_keys: list[tuple[str, str]]
    v_logits: torch.Tensor
    t_logits: torch.Tensor
    m_logits: torch.Tensor
    m_resid: torch.Tensor
    m_mass: torch.Tensor | None
    kept: dict[str, KeptPrefix] = field(default_factory=dict)

    def rows(self, sub: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per case of ``sub``, its vision-only and its text-only row."""
        v_idx = {k: i for i, k in enumerate(self.vis_keys)}
        t_idx = {k: i for i, k in enumerate(self.txt_keys)}
        return (np.array([v_idx[k] for k in zip(sub["image_path"], sub["question"])], dtype=int),
                np.array([t_idx[k] for k in zip(sub["description"], sub["question"])], dtype=int))


def clean_runs(mllm, sub: pd.DataFrame, images, batch_size: int, backend: str, share_prefix: bool,
               attention: bool = False, prefixes: dict | None = None, labels=None) -> CleanRuns:
    """The clean runs of the cases ``sub`` (columns image_path, description,
    question; ``images``: image by path), the image prompts over one cached
    prefix per image with ``share_prefix`` (``prefixes``: those built ahead,
    by image path; with ``labels``, the prefix forwards of images with a row
    whose first token leaves its answer open are kept for
    :func:`continuations`)."""
    vis_keys = list(dict.fromkeys(zip(sub["image_path"], sub["question"])))
    txt_keys = list(dict.fromkeys(zip(sub["description"], sub["question"])))
    with torch.no_grad():
        t_logits, _, _ = _traced(mllm, [None] * len(txt_keys), [d for d, _ in txt_keys],
                                 [q for _, q in txt_keys], batch_size, backend, keep_resid=False)
        if share_prefix:
            v_logits, m_logits, m_resid, m_mass, kept = _traced_shared(
                mllm, sub, images, vis_keys, batch_size, backend, attention, prefixes or {},
                None if labels is None else labels.undecided)
        else:
            v_logits, _, _ = _traced(mllm, [images[p] for p, _ in vis_keys], [None] * len(vis_keys),
                                     [q for _, q in vis_keys], batch_size, backend, keep_resid=False)
            m_logits, m_resid, m_mass = _traced(mllm, [images[p] for p in sub["image_path"]], list(sub["description"]),
                                                list(sub["question"]), batch_size, backend, keep_resid=True,
                                                attention=attention)
            kept = {}
    return CleanRuns(vis_keys, txt_keys, v_logits, t_logits, m_logits, m_resid, m_mass, kept)


def continuations(mllm, sub: pd.DataFrame, images, runs: CleanRuns, batch_size: int, share_prefix: bool,
                  prefixes: dict | None = None) -> tuple[Continuation, Continuation, Continuation]:
    """The :data:`~mechmod.decoding.Continuation` of ``runs``' vision-only,
    text-only and multimodal rows, for answers their first token does not
    decide (:mod:`mechmod.answers`): the image prompts over shared image
    prefixes with ``share_prefix`` (``prefixes``: those built ahead, by image
    path; the prefix forwards ``runs`` kept serve again), else encoded
    again."""
    vis_keys, txt_keys = runs.vis_keys, runs.txt_keys
    v_paths, m_paths = [p for p, _ in vis_keys], list(sub["image_path"])
    v_args = ([images[p] for p in v_paths], [None] * len(vis_keys), [q for _, q in vis_keys])
    m_args = ([images[p] for p in m_paths], list(sub["description"]), list(sub["question"]))
    t_cont = reencoded(mllm, [None] * len(txt_keys), [d for d, _ in txt_keys], [q for _, q in txt_keys], batch_size)
    if not share_prefix:
        return reencoded(mllm, *v_args, batch_size), t_cont, reencoded(mllm, *m_args, batch_size)
    prefixes = prefixes or {}
    return (over_prefixes(mllm, *v_args, batch_size, [prefixes.get(p) for p in v_paths],
                          [runs.kept.get(p) for p in v_paths]), t_cont,
            over_prefixes(mllm, *m_args, batch_size, [prefixes.get(p) for p in m_paths],
                          [runs.kept.get(p) for p in m_paths]))


@dataclass(frozen=True)
class _Readout:
    """Answer-level readout of final logits over a label set."""

    pred: list[str]
    u: dict[str, np.ndarray]  # every measure of UNCERTAINTY_MEASURES, [N] each
    probs: np.ndarray  # [N, n_labels]


def _readout(logits: torch.Tensor, labels: LabelSet, continuation: Continuation) -> _Readout:
    """``continuation`` writes on where the top-1 token does not decide the
    answer (mechmod.answers)."""
    probs = labels.label_probs(logits).numpy()
    return _Readout(
        pred=labels.predict(logits, continuation),
        u={name: np.asarray(f(logits).numpy() if name in LOGIT_MEASURES else f(probs))
           for name, f in UNCERTAINTY_MEASURES.items()},
        probs=probs,
    )


def _sampled(logits: torch.Tensor, labels: LabelSet, continuation: Continuation, keys: list[str],
             options: ScoreOptions) -> np.ndarray:
    """Sampled-answer entropy of each prompt (``keys`` identify the prompts
    and seed their generators)."""
    gens = [prompt_generator(options.seed, key) for key in keys]
    return sampled_entropy(sample_labels(logits, continuation, labels, options.samples, gens), labels.labels)


def _label_logit(lens_logits: torch.Tensor, labels: LabelSet, answers: list[str]) -> torch.Tensor:
    """Per case and layer, the lens logit of a label: the max over the
    label's tokens (``LabelSet.logit_token_ids``; one gather). lens_logits [B, L+1, V] -> [B, L+1]."""
    variants = [labels.logit_token_ids(a) for a in answers]
    width = max(len(v) for v in variants)
    idx = torch.tensor([v + v[:1] * (width - len(v)) for v in variants], device=lens_logits.device)  # pad by repeating
    B, L1, _ = lens_logits.shape
    return lens_logits.gather(-1, idx[:, None, :].expand(B, L1, width)).max(dim=-1).values


def _score_group(mllm, lens, sub: pd.DataFrame, images, labels: LabelSet, options: ScoreOptions,
                 prefixes: dict) -> list[dict]:
    bs = options.batch_size
    runs = clean_runs(mllm, sub, images, bs, options.backend, options.share_prefix, options.attention, prefixes,
                      labels)
    vis_keys, txt_keys, v_logits, t_logits = runs.vis_keys, runs.txt_keys, runs.v_logits, runs.t_logits
    m_logits, m_resid, m_mass = runs.m_logits, runs.m_resid, runs.m_mass
    with torch.no_grad():
        top_ids, diff_parts = [], []
        ans_v, ans_t = list(sub["answer_vision"]), list(sub["answer_text"])
        for s in range(0, len(sub), bs):  # one lens matmul per batch, reduced where it ran
            ll = lens.forward_all(m_resid[s : s + bs])
            top_ids.append(ll.argmax(-1).cpu())
            diff_parts.append((_label_logit(ll, labels, ans_t[s : s + bs])
                               - _label_logit(ll, labels, ans_v[s : s + bs])).float().cpu())
        top_ids, diff = torch.cat(top_ids), torch.cat(diff_parts).numpy()
    v_cont, t_cont, m_cont = continuations(mllm, sub, images, runs, bs, options.share_prefix, prefixes)
    v, t, m = _readout(v_logits, labels, v_cont), _readout(t_logits, labels, t_cont), _readout(m_logits, labels, m_cont)
    vi, ti = runs.rows(sub)

    dh, degenerate = relative_uncertainty(t.u[options.uncertainty][ti], v.u[options.uncertainty][vi])
    sampled = {}
    if options.samples > 0:
        hs_v = _sampled(v_logits, labels, v_cont, [f"vision\0{p}\0{q}" for p, q in vis_keys], options)
        hs_t = _sampled(t_logits, labels, t_cont, [f"text\0{d}\0{q}" for d, q in txt_keys], options)
        sampled = {"hs_v": hs_v[vi], "hs_t": hs_t[ti]}
    dh, degenerate = np.asarray(dh, dtype=float), np.asarray(degenerate, dtype=bool)

    top1_labels = labels.labels_of(top_ids)  # [B, L+1] of label strings or 'other', the embedding output first
    votes = layer_votes(np.asarray(top1_labels, dtype=object), np.asarray(ans_v, dtype=object), np.asarray(ans_t, dtype=object))
    emb, first = options.include_embedding, first_counted_layer(options.include_embedding)
    osc = count_oscillations_batch(counted(votes, emb))
    commit = commit_layer(counted((top_ids == m_logits.argmax(-1)[:, None]).numpy(), emb), first)
    counted_diff = counted(diff, emb)

    y_v = [v.pred[i] for i in vi]
    y_t = [t.pred[i] for i in ti]
    follow = follow_outcome(np.asarray(m.pred, dtype=object), np.asarray(y_v, dtype=object), np.asarray(y_t, dtype=object))
    rows = []
    for j, rec in enumerate(sub.itertuples(index=False)):
        rows.append(
            dict(
                _base(rec),
                y_v=y_v[j], y_t=y_t[j], y_m=m.pred[j],
                **{f"{col}_{x}": float(r.u[name][i]) for name, col in _COLUMN_OF.items()
                   for x, r, i in (("v", v, vi[j]), ("t", t, ti[j]), ("m", m, j))},
                **{col: float(values[j]) for col, values in sampled.items()},
                p_v=v.probs[vi[j]].tolist(), p_t=t.probs[ti[j]].tolist(), p_m=m.probs[j].tolist(),
                dh_rel=float(dh[j]), dh_rel_degenerate=bool(degenerate[j]),
                follow=str(follow[j]),
                layer_votes=[str(x) for x in votes[j, 1:]],
                layer_logit_diff=[float(x) for x in diff[j, 1:]],
                embedding_vote=str(votes[j, 0]), embedding_logit_diff=float(diff[j, 0]),
                oscillations=int(osc[j]),
                commit_layer=int(commit[j]),
                **_attention_columns(m_mass, j),
                last_sign_change=_or_no_layer(last_sign_change(counted_diff[j], first)),
                status="ok", error="",
            )
        )
    return rows


# ------------------------------------------------------------- row records
def _attention_columns(mass, j: int) -> dict[str, list[float]]:
    """attn_image / attn_description / attn_question: the answer position's
    attention mass on each span, one value per decoder layer."""
    if mass is None:
        return {f"attn_{name}": [] for name in SPANS}
    return {f"attn_{name}": [float(x) for x in mass[j, :, k]] for k, name in enumerate(SPANS)}


def _or_no_layer(x: int | None) -> int:
    return NO_LAYER if x is None else int(x)


#: measure -> prefix of its results columns (_v, _t, _m); 1 - margin is read from p_v / p_t
_COLUMN_OF = {"entropy": "h", "label_entropy": "hl", "max_prob": "hmax", "renyi2": "hr2"}
_BASE_COLUMNS = ("case_id", "group_id", "task", "dv", "dt", "control", "image_id", "answer_vision", "answer_text")


def _base(rec) -> dict[str, Any]:
    d = {k: getattr(rec, k) for k in _BASE_COLUMNS}
    d["dv"], d["dt"] = int(d["dv"]), int(d["dt"])
    d["candidates"] = list(rec.candidates)
    return d


#: the columns read from the lens's per-layer votes
_VOTE_COLUMNS = ("layer_votes", "layer_logit_diff", "embedding_vote", "embedding_logit_diff", "oscillations",
                 "last_sign_change")


def _without_layer_votes(row: dict[str, Any]) -> dict[str, Any]:
    """The row of a case whose answers begin with the same word: no layer
    votes (its vote columns as a failed row's: empty lists, -1, NaN)."""
    empty = failed_row(SimpleNamespace(**row), "", "")
    return {**row, **{c: empty[c] for c in _VOTE_COLUMNS if c in empty}}


def failed_row(rec, kind: str, reason: str) -> dict[str, Any]:
    """The row of a case that could not be scored: its case columns, empty
    answers, NaN numbers, status 'failed', error ``kind: reason``."""
    nan = float("nan")
    return dict(
        _base(rec), y_v="", y_t="", y_m="", **{f"{col}_{x}": nan for col in _COLUMN_OF.values() for x in "vtm"},
        p_v=[], p_t=[], p_m=[], dh_rel=nan, dh_rel_degenerate=False, follow="failed",
        layer_votes=[], layer_logit_diff=[], embedding_vote="", embedding_logit_diff=nan, oscillations=-1,
        commit_layer=NO_LAYER, last_sign_change=NO_LAYER,
        **_attention_columns(None, 0), status="failed", error=f"{kind}: {reason}",
    )


_SCALARS = (*(f"{col}_{x}" for col in _COLUMN_OF.values() for x in "vtm"), "hs_v", "hs_t", "dh_rel",
            "embedding_logit_diff")
_VECTORS = ("p_v", "p_t", "p_m", "layer_logit_diff")


def _finite(value) -> bool:
    if value is None:
        return True
    try:
        if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
            return all(math.isfinite(float(x)) for x in value)
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def nonfinite_fields(row) -> list[str]:
    """The fields of a scored row (a mapping) holding NaN or inf (a case
    without layer votes holds no embedding logit difference)."""
    absent = {"embedding_logit_diff"} if len(row.get("layer_votes", ())) == 0 else set()
    return [c for c in (*_SCALARS, *_VECTORS) if c in row and c not in absent and not _finite(row[c])]


def flag_nonfinite(rows: pd.DataFrame, tuned_lens: bool = False) -> pd.DataFrame:
    """``rows`` with every 'ok' row holding a non-finite value replaced by a
    failed row ``nonfinite: ...`` (the other rows unchanged). The reason
    blames a tuned lens (``tuned_lens``) when only its readings are not
    finite, else the model's precision."""
    if rows.empty or "status" not in rows:
        return rows
    out = []
    changed = False
    for row in rows.to_dict("records"):
        bad = nonfinite_fields(row) if row.get("status") == "ok" else []
        if bad:
            changed = True
            why = ("(the tuned lens reads NaN/inf: its file is broken); retrain it with `mechmod lens train`"
                   if tuned_lens and set(bad) <= {"layer_logit_diff", "embedding_logit_diff"} else
                   "(NaN/inf logits, e.g. a float16 overflow); re-run with --dtype float32 or bfloat16")
            row = failed_row(SimpleNamespace(**row), NONFINITE, f"non-finite values in {', '.join(bad)} {why}")
        out.append(row)
    return pd.DataFrame(out, columns=rows.columns) if changed else rows
