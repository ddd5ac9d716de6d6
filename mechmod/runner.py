"""The behavioural study run: every conflict case of a dataset through a
model, in batches, streamed to disk, resumable.

Per chunk of cases (ordered by image so an image's cases travel together):
vision-only once per (image, question), text-only once per (description,
question), multimodal per case, traced at the answer position; the
multimodal residuals of every layer are decoded by the lens into per-layer
votes and logit differences. Each finished chunk is written as one parquet
part (temp file + rename), so a killed run loses at most the chunk in
flight and a re-run skips every case already in a part: no duplicate, no
lost row. ``finalize`` merges the parts into ``results.parquet`` and writes
``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from mechmod import _io, distributed, guards
from mechmod.answers import LabelSet
from mechmod.dynamics import commit_layer, count_oscillations_batch, last_sign_change, layer_votes
from mechmod.errors import MechmodError
from mechmod.tracing import SPANS, trace
from mechmod.uncertainty import UNCERTAINTY_MEASURES, entropy, label_entropy, relative_uncertainty

RUN_FILE = "run.json"
PARTS_DIR = "parts"
RESULTS_FILE = "results.parquet"
GENERATED_DATASET = "dataset"  # `mechmod run` without --dataset generates one here


@dataclass(frozen=True)
class RunConfig:
    """What a run is: the model, the dataset and how it is decoded. A run
    directory holds one config; resuming with a different one is refused."""

    model: str
    dataset: str
    dataset_sha256: str
    lens: str = "logit"
    lens_path: str | None = None
    backend: str = "nnsight"
    uncertainty: str = "entropy"
    batch_size: int = 8
    radius: float = 0.5
    share_prefix: bool = True
    attention: bool = True

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a resume (batch size and prefix
        sharing change speed, not results)."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("share_prefix")
        return d


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    """sha256 of the dataset's manifest: identifies the cases a run covers."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise MechmodError(f"{dataset_dir}: not a mechmod dataset (no manifest.json); create one with "
                           "`mechmod dataset color --groups N --seed S --out DIR`")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_run(out: str | Path, config: RunConfig) -> Path:
    """Create the run directory, or check that it holds a run of the same
    config (so a resume never mixes models or datasets)."""
    out = Path(out)
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            held = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MechmodError(f"{run_file}: unreadable ({err}); use a new --out directory") from None
        mine = config.identity()
        theirs = {k: held.get(k) for k in mine}
        if theirs != mine:
            diff = ", ".join(f"{k}: {theirs[k]!r} here vs {mine[k]!r} asked" for k in mine if theirs[k] != mine[k])
            raise MechmodError(f"{out} holds a different run ({diff}); choose a new --out directory or "
                               "re-run with the same settings to resume")
    else:
        guards.clean_stale_temps(out, prefix=RUN_FILE)  # a run killed while writing run.json left its temp file
        if out.exists() and any(p.name != GENERATED_DATASET for p in out.iterdir()):
            raise MechmodError(f"{out} exists and is not a mechmod run directory; choose a new --out directory")
        out.mkdir(parents=True, exist_ok=True)
        _io.write_json(run_file, asdict(config))
    (out / PARTS_DIR).mkdir(exist_ok=True)
    return out


def part_files(out: str | Path) -> list[Path]:
    """The finished parts of a run, every rank's (``part-NNNNN.parquet`` of a
    single process, ``part-rRRR-NNNNN.parquet`` of rank RRR), sorted. Hidden
    temporary files of a killed writer never match."""
    return sorted((Path(out) / PARTS_DIR).glob("part-*.parquet"))


def _read_part(path: Path, columns: list[str] | None = None):
    """A part as a pyarrow Table, or None when it cannot be read: it is then
    renamed ``*.unreadable`` (so its cases are scored again) with a warning.
    Parts are written by rename, so this only happens to a file damaged
    after the fact."""
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as err:
        try:
            path.rename(path.with_name(path.name + ".unreadable"))
        except OSError:
            pass
        warnings.warn(f"{path}: unreadable ({err}); set aside as {path.name}.unreadable, its cases will be scored again")
        return None


def done_case_ids(out: str | Path) -> set[str]:
    """Case ids already written to parts (finished or failed), by any rank."""
    done: set[str] = set()
    for part in part_files(out):
        table = _read_part(part, columns=["case_id"])
        if table is not None:
            done.update(table.column("case_id").to_pylist())
    return done


def part_prefix(rank: int | None = None) -> str:
    """File-name prefix of one writer's parts: ``part-`` alone, ``part-rRRR-`` for a rank."""
    return "part-" if rank is None else f"part-r{rank:03d}-"


def _next_part_index(out: Path, rank: int | None = None) -> int:
    prefix = part_prefix(rank)
    idx = [int(p.stem[len(prefix):]) for p in part_files(out)
           if p.stem.startswith(prefix) and p.stem[len(prefix):].isdigit()]
    return max(idx) + 1 if idx else 0


# ---------------------------------------------------------------- decoding
def _chunks(df: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(df), size):
        yield df.iloc[start : start + size]


def _traced(mllm, images, descriptions, questions, batch_size: int, backend: str, keep_resid: bool,
            attention: bool = False):
    """Trace prompts in batches; returns (logits [N, V], resid [N, L+1, d] or
    None, span attention mass [N, L, 3] or None)."""
    from mechmod.tracing import span_mass

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


def _traced_shared(mllm, sub: pd.DataFrame, images, vis_keys, batch_size: int, backend: str, attention: bool):
    """Vision-only and multimodal prompts over one cached prefix per image
    (mechmod.prefix): returns (vision logits in vis_keys order, multimodal
    logits, residuals and span attention masses in ``sub`` order)."""
    from mechmod.prefix import trace_shared

    paths = list(dict.fromkeys(sub["image_path"]))
    prompts: dict[str, list] = {p: [] for p in paths}
    where_v, where_m = [], []  # (image path, row in its prompt list)
    for p, q in vis_keys:
        where_v.append((p, len(prompts[p])))
        prompts[p].append((None, q))
    for p, d, q in zip(sub["image_path"], sub["description"], sub["question"]):
        where_m.append((p, len(prompts[p])))
        prompts[p].append((d, q))
    traces = dict(zip(paths, trace_shared(mllm, [images[p] for p in paths], [prompts[p] for p in paths],
                                          batch_size=batch_size, backend=backend, attention=attention)))
    v_logits = torch.stack([traces[p].logits[i] for p, i in where_v])
    m_logits = torch.stack([traces[p].logits[i] for p, i in where_m])
    m_resid = torch.stack([traces[p].resid[i] for p, i in where_m])
    m_mass = torch.stack([traces[p].span_attention[i] for p, i in where_m]) if attention else None
    return v_logits, m_logits, m_resid, m_mass


@dataclass(frozen=True)
class _Readout:
    """Answer-level readout of final logits over a label set."""

    pred: list[str]
    h: np.ndarray  # full-vocabulary entropy
    h_label: np.ndarray
    probs: np.ndarray  # [N, n_labels]


def _readout(logits: torch.Tensor, labels: LabelSet) -> _Readout:
    probs = labels.label_probs(logits).numpy()
    return _Readout(
        pred=labels.predict(logits),
        h=entropy(logits).numpy(),
        h_label=np.asarray(label_entropy(probs)),
        probs=probs,
    )


def _label_logit(lens_logits: torch.Tensor, labels: LabelSet, answers: list[str]) -> torch.Tensor:
    """Per case and layer, the lens logit of a label: the max over the
    label's token variants (one gather). lens_logits [B, L+1, V] -> [B, L+1]."""
    variants = [labels.token_ids(a) for a in answers]
    width = max(len(v) for v in variants)
    idx = torch.tensor([v + v[:1] * (width - len(v)) for v in variants], device=lens_logits.device)  # pad by repeating
    B, L1, _ = lens_logits.shape
    return lens_logits.gather(-1, idx[:, None, :].expand(B, L1, width)).max(dim=-1).values


def score_chunk(mllm, lens, cases: pd.DataFrame, dataset_dir: Path, config: RunConfig) -> pd.DataFrame:
    """All columns of results.parquet (but ``region``) for a chunk of cases.
    A case whose inputs cannot be built (e.g. an undecodable image) is
    returned with status 'failed' and its reason; the others go on."""
    from mechmod.data import open_image

    rows: dict[str, dict[str, Any]] = {}
    images: dict[str, Any] = {}
    for rel in cases["image_path"].unique():
        try:
            images[rel] = open_image(dataset_dir, rel)
        except MechmodError as err:
            images[rel] = err
    ok = []
    for rec in cases.itertuples(index=False):
        img = images[rec.image_path]
        if isinstance(img, MechmodError):
            rows[rec.case_id] = _failed(rec, "image", str(img))
        else:
            ok.append(rec)
    if not ok:
        return pd.DataFrame(list(rows.values()))
    ok_df = pd.DataFrame(ok)
    bs = config.batch_size
    # One label set per candidate tuple (tasks differ in their labels).
    out_rows = []
    for cand, sub in ok_df.groupby(ok_df["candidates"].map(tuple), sort=False):
        labels = LabelSet(mllm.tokenizer, list(cand))
        out_rows.extend(_score_group(mllm, lens, sub, images, labels, bs, config))
    for r in out_rows:
        rows[r["case_id"]] = r
    return pd.DataFrame([rows[c] for c in cases["case_id"] if c in rows])


def _score_group(mllm, lens, sub: pd.DataFrame, images, labels: LabelSet, bs: int, config: RunConfig) -> list[dict]:
    vis_keys = list(dict.fromkeys(zip(sub["image_path"], sub["question"])))
    txt_keys = list(dict.fromkeys(zip(sub["description"], sub["question"])))
    with torch.no_grad():
        t_logits, _, _ = _traced(mllm, [None] * len(txt_keys), [d for d, _ in txt_keys],
                                 [q for _, q in txt_keys], bs, config.backend, keep_resid=False)
        if config.share_prefix:
            v_logits, m_logits, m_resid, m_mass = _traced_shared(mllm, sub, images, vis_keys, bs, config.backend,
                                                                 config.attention)
        else:
            v_logits, _, _ = _traced(mllm, [images[p] for p, _ in vis_keys], [None] * len(vis_keys),
                                     [q for _, q in vis_keys], bs, config.backend, keep_resid=False)
            m_logits, m_resid, m_mass = _traced(mllm, [images[p] for p in sub["image_path"]], list(sub["description"]),
                                                list(sub["question"]), bs, config.backend, keep_resid=True,
                                                attention=config.attention)
        top_ids, diff_parts = [], []
        ans_v, ans_t = list(sub["answer_vision"]), list(sub["answer_text"])
        for s in range(0, len(sub), bs):  # one lens matmul per batch, reduced where it ran
            ll = lens.forward_all(m_resid[s : s + bs])
            top_ids.append(ll.argmax(-1).cpu())
            diff_parts.append((_label_logit(ll, labels, ans_t[s : s + bs])
                               - _label_logit(ll, labels, ans_v[s : s + bs])).float().cpu())
        top_ids, diff = torch.cat(top_ids), torch.cat(diff_parts).numpy()
    v, t, m = _readout(v_logits, labels), _readout(t_logits, labels), _readout(m_logits, labels)
    v_idx = {k: i for i, k in enumerate(vis_keys)}
    t_idx = {k: i for i, k in enumerate(txt_keys)}
    vi = np.array([v_idx[k] for k in zip(sub["image_path"], sub["question"])])
    ti = np.array([t_idx[k] for k in zip(sub["description"], sub["question"])])

    measure = UNCERTAINTY_MEASURES[config.uncertainty]
    if config.uncertainty == "entropy":
        u_v, u_t = v.h[vi], t.h[ti]
    else:
        u_v, u_t = np.asarray(measure(v.probs[vi])), np.asarray(measure(t.probs[ti]))
    dh, degenerate = relative_uncertainty(u_t, u_v)
    dh, degenerate = np.asarray(dh, dtype=float), np.asarray(degenerate, dtype=bool)

    top1_labels = labels.labels_of(top_ids)  # [B, L+1] of label strings or 'other'
    votes = layer_votes(np.asarray(top1_labels, dtype=object), np.asarray(ans_v, dtype=object), np.asarray(ans_t, dtype=object))
    osc = count_oscillations_batch(votes)
    commit = commit_layer((top_ids == m_logits.argmax(-1)[:, None]).numpy())

    y_v = [v.pred[i] for i in vi]
    y_t = [t.pred[i] for i in ti]
    from mechmod.following import follow_outcome

    follow = follow_outcome(np.asarray(m.pred, dtype=object), np.asarray(y_v, dtype=object), np.asarray(y_t, dtype=object))
    rows = []
    for j, rec in enumerate(sub.itertuples(index=False)):
        rows.append(
            dict(
                _base(rec),
                y_v=y_v[j], y_t=y_t[j], y_m=m.pred[j],
                h_v=float(v.h[vi[j]]), h_t=float(t.h[ti[j]]), h_m=float(m.h[j]),
                hl_v=float(v.h_label[vi[j]]), hl_t=float(t.h_label[ti[j]]), hl_m=float(m.h_label[j]),
                p_v=v.probs[vi[j]].tolist(), p_t=t.probs[ti[j]].tolist(), p_m=m.probs[j].tolist(),
                dh_rel=float(dh[j]), dh_rel_degenerate=bool(degenerate[j]),
                follow=str(follow[j]),
                layer_votes=[str(x) for x in votes[j]],
                layer_logit_diff=[float(x) for x in diff[j]],
                oscillations=int(osc[j]),
                commit_layer=int(commit[j]),
                **_attention_columns(m_mass, j),
                last_sign_change=_or_minus_one(last_sign_change(diff[j])),
                status="ok", error="",
            )
        )
    return rows


def _attention_columns(mass, j: int) -> dict[str, list[float]]:
    """attn_image / attn_description / attn_question: the answer position's
    attention mass on each span, one value per decoder layer."""
    if mass is None:
        return {f"attn_{name}": [] for name in SPANS}
    return {f"attn_{name}": [float(x) for x in mass[j, :, k]] for k, name in enumerate(SPANS)}


def _or_minus_one(x: int | None) -> int:
    return -1 if x is None else int(x)


_BASE_COLUMNS = ("case_id", "group_id", "task", "dv", "dt", "control", "image_id", "answer_vision", "answer_text")


def _base(rec) -> dict[str, Any]:
    d = {k: getattr(rec, k) for k in _BASE_COLUMNS}
    d["dv"], d["dt"] = int(d["dv"]), int(d["dt"])
    d["candidates"] = list(rec.candidates)
    return d


def _failed(rec, kind: str, reason: str) -> dict[str, Any]:
    nan = float("nan")
    return dict(
        _base(rec), y_v="", y_t="", y_m="", h_v=nan, h_t=nan, h_m=nan, hl_v=nan, hl_t=nan, hl_m=nan,
        p_v=[], p_t=[], p_m=[], dh_rel=nan, dh_rel_degenerate=False, follow="failed",
        layer_votes=[], layer_logit_diff=[], oscillations=-1, commit_layer=-1, last_sign_change=-1,
        **_attention_columns(None, 0), status="failed", error=f"{kind}: {reason}",
    )


def _isolate_failures(mllm, lens, chunk: pd.DataFrame, dataset_dir: Path, config: RunConfig, err: Exception) -> pd.DataFrame:
    """A chunk raised: score its cases one at a time so only the bad ones fail."""
    rows = []
    for i in range(len(chunk)):
        one = chunk.iloc[i : i + 1]
        try:
            rows.append(score_chunk(mllm, lens, one, dataset_dir, config))
        except (MechmodError, RuntimeError, ValueError) as e:  # per-case failure, recorded
            oom = "out of memory" in str(e).lower()
            reason = f"{e} (lower --batch-size, or use --dtype bfloat16 / --device-map auto)" if oom else str(e)
            rows.append(pd.DataFrame([_failed(next(one.itertuples(index=False)), "oom" if oom else "model", reason)]))
    return pd.concat(rows, ignore_index=True)


def score_cases(mllm, lens, cases: pd.DataFrame, dataset_dir: Path, config: RunConfig) -> pd.DataFrame:
    """Rows for ``cases`` (best in image order); a case that cannot be scored
    is recorded as failed with its reason while the others are scored."""
    try:
        rows = score_chunk(mllm, lens, cases, dataset_dir, config)
    except (MechmodError, RuntimeError, ValueError) as err:
        rows = _isolate_failures(mllm, lens, cases, dataset_dir, config, err)
    return guards.flag_nonfinite(rows)


# -------------------------------------------------------------------- run
def run_study(mllm, lens, dataset_dir: str | Path, out: str | Path, config: RunConfig,
              chunk_size: int | None = None, progress: bool = True, world=None) -> Path:
    """Run (or resume) the study into ``out``; returns the run directory
    after :func:`finalize`.

    Data parallel (``world.size > 1``, by default detected from the
    launcher's environment, see :mod:`mechmod.distributed`): each rank scores
    its share of the images (:func:`~mechmod.distributed.shard_cases`) into
    its own parts; rank 0 finalizes after every rank is done (other ranks
    return the run directory without finalizing)."""
    from mechmod.data import load_cases
    from tqdm.auto import tqdm

    world = world or distributed.setup()
    dataset_dir = Path(dataset_dir)
    if world.is_main:
        out = open_run(out, config)
    world.barrier()  # run.json exists before the other ranks check it
    if not world.is_main:
        out = open_run(out, config)
    rank = world.rank if world.parallel else None
    # a killed writer's half-written temporary files (never read) go; each rank only touches its own
    guards.clean_stale_temps(out / PARTS_DIR, prefix=part_prefix(rank) if world.parallel else "")
    cases = load_cases(dataset_dir)
    mine = distributed.shard_cases(cases, world.rank, world.size)
    done = done_case_ids(out)
    pending = mine[~mine["case_id"].isin(done)].sort_values(["image_id", "case_id"], kind="stable")
    chunk_size = chunk_size or max(4 * config.batch_size, 32)
    part = _next_part_index(out, rank)
    desc = f"cases (rank {world.rank}/{world.size})" if world.parallel else "cases"
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=desc, unit="case",
               disable=not progress or not world.is_main)
    for chunk in _chunks(pending, chunk_size):
        rows = score_cases(mllm, lens, chunk, dataset_dir, config)
        _io.write_parquet(out / PARTS_DIR / f"{part_prefix(rank)}{part:05d}.parquet", rows)
        part += 1
        bar.update(len(chunk))
    bar.close()
    world.barrier()  # every rank's parts are written
    if not world.is_main:
        return out
    missing = set(cases["case_id"]) - done_case_ids(out)
    if missing:
        raise MechmodError(f"{out}: {len(missing)} case(s) have no result after all ranks finished "
                           f"(e.g. {sorted(missing)[0]!r}); re-run the same command to resume")
    return finalize(out)


def read_parts(out: str | Path) -> pd.DataFrame:
    parts = part_files(out)
    if not parts:
        raise MechmodError(f"{out}: no results yet (no {PARTS_DIR}/part-*.parquet)")
    tables = [t for t in (_read_part(p) for p in parts) if t is not None]
    if not tables:
        raise MechmodError(f"{out}: no readable part in {PARTS_DIR}/; re-run the same command to score the cases again")
    df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    return df.drop_duplicates("case_id", keep="last").sort_values("case_id", kind="stable").reset_index(drop=True)


def finalize(out: str | Path) -> Path:
    """Merge the parts into results.parquet, then write summary.json and
    report.html from it. Call it where no other process writes to ``out``
    (rank 0 after the last barrier)."""
    from mechmod.summary import summarize_run

    out = Path(out)
    guards.clean_stale_temps(out)  # e.g. a results.parquet temp of a finalize killed midway
    results = read_parts(out)
    model = json.loads((out / RUN_FILE).read_text()).get("model") if (out / RUN_FILE).is_file() else None
    summarize_run(out, results=results, model=model)
    return out
