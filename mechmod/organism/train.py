"""Training loop of the organism (``mechmod organism train``).

Answer-only cross-entropy on the token after ``ASSISTANT:`` for the three
sub-batches of :class:`~mechmod.organism.data.TrainingStream`; the
conflict rows of the multimodal sub-batch get the soft target p_v * p_t^W
(normalised) built from the same step's detached vision-only and text-only
predictions; W (``text_weight``, 1 = plain product of experts) plants a
preference, and a fine-tune from a base (``init_from``) changes W alone. AdamW, linear warm-up then cosine decay, gradient clipping.
The seed fixes initialisation and the data stream; the number of steps
(not wall time) fixes the schedule, so a run is reproducible.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mechmod import _io
from mechmod.data.color import COLORS, TARGET_SHAPES
from mechmod.errors import MechmodError
from mechmod.models.organism.model import (
    IMAGE_TOKEN,
    OrganismConfig,
    build_model,
    build_processor,
    build_tokenizer,
    prompt,
    words_of,
)
from mechmod.organism.data import DEFAULT_POOL, ImagePool, TrainingStream, all_training_texts, knowledge_split
from mechmod.organism.shortcuts import TRAINING_POLICY


def build_artifacts(cfg: OrganismConfig, seed: int, vocab_groups: int = 3000):
    texts = all_training_texts(n_groups=vocab_groups, seed=0)
    tok = build_tokenizer(words_of(texts))
    proc = build_processor(tok, cfg)
    model = build_model(cfg, tok, seed=seed)
    return tok, proc, model


def encode_step(step: dict, tokenizer, n_image_tokens: int, color_ids: dict[str, int]) -> dict:
    """Tensors for one step. Image rows get the ``<image>`` placeholder
    expanded to ``n_image_tokens`` copies, exactly as the LLaVA processor does."""
    expand = IMAGE_TOKEN * n_image_tokens
    out = {}
    for key in ("vision", "multi"):
        exs = step[key]
        texts = [prompt(e.text, True).replace(IMAGE_TOKEN, expand) for e in exs]
        enc = dict(tokenizer(texts, return_tensors="pt", padding=True))
        enc["pixel_values"] = torch.from_numpy(np.stack([e.image for e in exs]).astype(np.float32))
        out[key] = enc
    exs = step["text"]
    out["text"] = dict(tokenizer([prompt(e.text, False) for e in exs], return_tensors="pt", padding=True))
    for key in ("vision", "text", "multi"):
        out[key + "_labels"] = torch.tensor([color_ids.get(e.label, -100) for e in step[key]])
    out["patch_labels"] = torch.from_numpy(np.stack([e.patch for e in step["vision"]]).astype(np.int64))
    out["meta"] = {k: [(e.kind, e.dv, e.dt) for e in step[k]] for k in ("vision", "text", "multi")}
    return out


STATE_FILE = "train_state.pt"  # optimiser, aids and step of an unfinished run (for --resume)


def train(out_dir: str | Path, seed: int = 0, steps: int = 2400, cfg: OrganismConfig | None = None,
          lr: float = 1.5e-3, warmup: int = 150, threads: int = 2, workers: int = 2,
          log_every: int = 50, progress: bool = True, stream_kw: dict | None = None,
          vocab_groups: int = 3000, pool_per_tier=DEFAULT_POOL, max_minutes: float | None = None,
          save_every: int = 500, aux_patch_weight: float = 1.0, binding_weight: float = 0.5,
          binding_layers: tuple[int, ...] = (1, 2), text_weight: float = 1.0, init_from: str | Path | None = None,
          resume: bool = False, device: str = "cpu") -> dict:
    """Train an organism from scratch (or fine-tune one: ``init_from``) and
    save it to ``out_dir`` in HF format. ``text_weight`` W plants the conflict
    preference (:func:`conflict_target`). A fine-tune draws every step at full
    curriculum, so variants trained from one base with one seed see the same
    data and differ by W only. Every ``save_every`` steps the checkpoint and
    the optimiser state are saved; ``resume`` continues from them."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    stream_kw = stream_kw or {}
    out_dir = Path(out_dir)
    t_start = time.time()
    if init_from is not None:
        base_info = _io.read_json(Path(init_from) / "organism.json", "the base organism (--from)", dict)
        cfg = OrganismConfig(**base_info["config"])
        proc = AutoProcessor.from_pretrained(init_from, local_files_only=True)
        tok = proc.tokenizer
        model = LlavaForConditionalGeneration.from_pretrained(init_from, local_files_only=True, dtype=torch.float32)
        model.set_attn_implementation("eager")
    else:
        base_info = None
        cfg = cfg or OrganismConfig()
        tok, proc, model = build_artifacts(cfg, seed, vocab_groups)
    # a shallow LM (smoke configs) cannot host layers 1-2: use what exists
    binding_layers = tuple(li for li in binding_layers if li < cfg.text_layers) or (cfg.text_layers - 1,)
    colors = sorted(COLORS)
    color_ids = {c: tok.convert_tokens_to_ids(c) for c in colors}
    if any(i == tok.unk_token_id for i in color_ids.values()):
        raise MechmodError("a colour word is missing from the organism vocabulary")
    n_params = sum(p.numel() for p in model.parameters())
    model.to(device)
    objective = Objective(model, torch.tensor([color_ids[c] for c in colors], device=device), cfg.vision_hidden,
                          aux_patch_weight, binding_weight, binding_layers, text_weight)
    opt = _optimizer(model, objective.aux_head, lr)
    done, log, elapsed = 0, [], 0.0
    if resume and (out_dir / STATE_FILE).is_file():
        state = torch.load(out_dir / STATE_FILE, map_location=device, weights_only=True)  # no unpickling
        model.load_state_dict(state["model"])
        objective.aux_head.load_state_dict(state["aux_head"])
        opt.load_state_dict(state["optimizer"])
        done, log, elapsed = state["step"], state["log"], state["elapsed_s"]

    def lr_at(s):
        if s < warmup:
            return lr * (s + 1) / warmup
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))

    t_pool = time.time()
    pool = ImagePool(seed, pool_per_tier, cfg.image_size, processes=workers, progress=progress,
                     patch_size=cfg.patch_size)
    t_pool = time.time() - t_pool
    if progress:
        print(f"image pool: {sum(pool_per_tier)} images in {t_pool:.0f} s", flush=True)
    stream = TrainingStream(seed, pool, **stream_kw)

    def progress_at(s):
        return 1.0 if init_from is not None else s / max(1, steps)

    for s in range(done):  # replay the drawn steps: the stream continues where it stopped
        stream.step(progress_at(s))
    model.train()
    tally = Tally()
    t0 = time.time() - elapsed
    bar = tqdm(total=steps, initial=done, disable=not progress, desc="organism", mininterval=5)
    stopped_at = None
    for s in range(done, steps):
        if max_minutes is not None and time.time() - t0 > 60 * max_minutes:
            stopped_at = s  # budget guard: keep what was trained, say so in organism.json
            break
        batch = to_device(encode_step(stream.step(progress_at(s)), tok, cfg.n_image_tokens, color_ids), device)
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        loss, logits, parts = objective(batch, tally.acc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tally.add(batch, logits, parts)
        bar.update(1)
        saving = bool(save_every) and (s + 1) % save_every == 0 and s + 1 < steps
        if (s + 1) % log_every == 0 or s + 1 == steps or saving:
            row = tally.row(s + 1, round(time.time() - t0, 1), lr_at(s))
            log.append(row)
            bar.set_postfix(lv=row["loss_vision"], lt=row["loss_text"], va=row["acc_vision_easy"],
                            vh=row["acc_vision_hard"], t2=row["acc_text_dt2"])
            if progress:
                tqdm.write(json.dumps(row))
        if saving:
            model.eval()
            save(out_dir, model, proc, {"partial": True, "step": s + 1, "seed": seed, "text_weight": text_weight}, log)
            state = {"model": model.state_dict(), "aux_head": objective.aux_head.state_dict(),
                     "optimizer": opt.state_dict(), "step": s + 1, "log": log, "elapsed_s": time.time() - t0}
            with _io.atomic_path(out_dir / STATE_FILE) as tmp:
                torch.save(state, tmp)
            model.train()
    bar.close()
    objective.hook.remove()
    wall = time.time() - t0
    model.eval()
    info = {
        "format": "mechmod-organism/2",
        "seed": seed,
        "steps": steps,
        "steps_done": steps if stopped_at is None else stopped_at,
        "max_minutes": max_minutes,
        "lr": lr,
        "warmup": warmup,
        "threads": threads,
        "device": _device_name(device),
        "text_weight": text_weight,
        "base": None if base_info is None else {"dir": str(init_from), "seed": base_info.get("seed"),
                                                 "steps": base_info.get("steps_done"),
                                                 "text_weight": base_info.get("text_weight", 1.0)},
        "pool_processes": workers,
        "pool_per_tier": list(pool_per_tier),
        "pool_seconds": round(t_pool, 1),
        "wall_time_s": round(wall, 1),
        "total_time_s": round(time.time() - t_start + elapsed, 1),
        "n_params": int(n_params),
        "config": cfg.to_dict(),
        "stream": stream_kw,
        "text_failure": list(stream.text_failure),
        "image_distractors": TRAINING_POLICY,
        "aux_patch_weight": aux_patch_weight,
        "binding_weight": binding_weight,
        "binding_layers": list(binding_layers),
        "vocab_size": len(tok),
        "knowledge_split": knowledge_split(),
        "multimodal_training": (
            "consistent pairs (hard label); one modality uninformative (text about another shape -> "
            "image colour; question about a never-drawn shape -> text colour); conflicts with a soft "
            "target = normalised p_v * p_t^W of the model's own detached vision-only and text-only colour "
            "distributions (reliability-weighted cue combination, W = text_weight), never a hard conflict label"
        ),
    }
    save(out_dir, model.to("cpu"), proc, info, log)
    (out_dir / STATE_FILE).unlink(missing_ok=True)
    return {"info": info, "log": log}


def _device_name(device: str) -> str:
    """The device in words, for organism.json and the card."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({torch.get_num_threads()} threads)" if device == "cpu" else str(device)


def to_device(batch: dict, device: str) -> dict:
    """A step's tensors on ``device`` (meta stays as it is)."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        return {k: move(x) for k, x in v.items()} if isinstance(v, dict) and v and all(
            isinstance(x, torch.Tensor) for x in v.values()) else v
    return {k: move(v) for k, v in batch.items()}


def conflict_target(p_v: torch.Tensor, p_t: torch.Tensor, text_weight: float = 1.0) -> torch.Tensor:
    """The soft target of a conflict row: p_v * p_t^W over the colours,
    normalised (computed in log space). W = 1 is the plain product of
    experts; W > 1 plants a text preference, W < 1 a vision preference."""
    logq = torch.log(p_v.clamp_min(1e-30)) + text_weight * torch.log(p_t.clamp_min(1e-30))
    return torch.softmax(logq, dim=-1)


def _optimizer(model, aux_head, lr: float):
    """AdamW with weight decay on the matrices (embeddings excepted)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n] + [aux_head.weight]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)] + [aux_head.bias]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98))


class Objective:
    """The loss of one step: answer cross-entropy on the vision-only and
    text-only rows; on the multimodal rows a hard label, or for conflicts the
    soft product-of-experts target of the same step's detached unimodal
    predictions; plus two training aids. The auxiliary per-patch (shape,
    colour) head reads the vision features the projector reads (a training
    aid only, never saved with the model); the binding aid asks head 0 of
    ``binding_layers``, at the answer position, to look at the asked shape's
    patches."""

    def __init__(self, model, cid: torch.Tensor, vision_hidden: int, aux_weight: float, binding_weight: float,
                 binding_layers: tuple[int, ...], text_weight: float = 1.0):
        self.model, self.cid, self.text_weight = model, cid, text_weight
        self.aux_weight, self.binding_weight, self.binding_layers = aux_weight, binding_weight, binding_layers
        self.n_shape = len(TARGET_SHAPES) + 1
        self.aux_head = torch.nn.Linear(vision_hidden, self.n_shape + len(COLORS) + 1).to(cid.device)
        self.captured: dict = {}
        self.hook = model.model.multi_modal_projector.register_forward_hook(
            lambda mod, inp, out: self.captured.__setitem__("feat", inp[0]))

    def __call__(self, batch: dict, acc: dict) -> tuple[torch.Tensor, dict, dict]:
        """(total loss, answer logits per sub-batch, loss parts); counts the
        auxiliary head's shape read-out into ``acc``."""
        lv, loss_bind = self._vision(batch)
        loss_aux = self._aux(batch, self.captured.pop("feat"), acc)  # feat [B, n_patches, d_vision]
        lt = self._answer_logits(batch["text"])
        lm = self._answer_logits(batch["multi"])
        loss_v = F.cross_entropy(lv, batch["vision_labels"])
        loss_t = F.cross_entropy(lt, batch["text_labels"])
        loss_m = self._multimodal(batch, lv, lt, lm)
        loss = loss_v + loss_t + loss_m + self.aux_weight * loss_aux + self.binding_weight * loss_bind
        parts = {"vision": loss_v, "text": loss_t, "multi": loss_m, "aux": loss_aux, "bind": loss_bind}
        return loss, {"vision": lv, "text": lt, "multi": lm}, parts

    def _answer_logits(self, enc) -> torch.Tensor:
        return self.model(**enc).logits[:, -1, :].float()

    def _vision(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision-only answer logits and the binding loss."""
        if self.binding_weight <= 0:
            return self._answer_logits(batch["vision"]), torch.zeros(())
        out_v = self.model(**batch["vision"], output_attentions=True)
        ids = batch["vision"]["input_ids"]
        is_img = ids == self.model.config.image_token_id
        tgt = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        tgt[is_img] = batch["patch_labels"][:, 2].reshape(-1).float()
        has = tgt.sum(-1) > 0
        loss_bind = torch.zeros((), device=ids.device)
        for li in self.binding_layers:
            att = out_v.attentions[li][:, 0, -1, :]  # [B, T]
            mass = (att * tgt).sum(-1)
            loss_bind = loss_bind - torch.log(mass[has] + 1e-6).mean() / len(self.binding_layers)
        return out_v.logits[:, -1, :].float(), loss_bind

    def _aux(self, batch: dict, feat: torch.Tensor, acc: dict) -> torch.Tensor:
        """Per-patch shape and colour cross-entropy of the auxiliary head."""
        if self.aux_weight <= 0:
            return torch.zeros(())
        n_shape = self.n_shape
        al = self.aux_head(feat.reshape(-1, feat.shape[-1]))
        lab = batch["patch_labels"]  # [B, 2, n_patches]
        # object patches dominate the weight: at dv 0-4 a few patches of
        # 64-100 hold an object, and a plain mean drowns the shape signal
        # (the hard part) in easy background patches
        ls = lab[:, 0].reshape(-1).long()
        w_obj = torch.where(ls > 0, 1.0, 0.1)
        w_obj = w_obj / w_obj.sum()
        loss_aux = (w_obj * (F.cross_entropy(al[:, :n_shape], ls, reduction="none")
                             + F.cross_entropy(al[:, n_shape:], lab[:, 1].reshape(-1).long(),
                                               reduction="none"))).sum()
        with torch.no_grad():  # shape read-out on object patches (logged)
            obj = ls > 0
            acc["patch_shape"][0] += int((al[:, :n_shape].argmax(-1)[obj] == ls[obj]).sum())
            acc["patch_shape"][1] += int(obj.sum())
        return loss_aux

    def _multimodal(self, batch: dict, lv: torch.Tensor, lt: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        """Hard rows + soft product-of-experts rows for conflicts."""
        cid = self.cid
        meta_m = batch["meta"]["multi"]
        is_conf = torch.tensor([k == "conflict" for k, _, _ in meta_m], device=lm.device)
        logp_m = F.log_softmax(lm, dim=-1)
        with torch.no_grad():
            G = len(meta_m)
            pv = F.softmax(lv[:G], -1)[:, cid]
            pt = F.softmax(lt[:G], -1)[:, cid]
            q = conflict_target(pv, pt, self.text_weight)
        soft = -(q * logp_m[:, cid]).sum(-1)
        hard_lab = batch["multi_labels"].clamp(min=0)
        hard = -logp_m.gather(1, hard_lab[:, None])[:, 0]
        return torch.where(is_conf, soft, hard).mean()


class Tally:
    """Accuracies per row kind and mean losses since the last log row."""

    def __init__(self):
        self.acc = {"vision_easy": [0, 0], "vision_hard": [0, 0], "text_dt0": [0, 0], "text_dt1": [0, 0],
                    "text_dt2": [0, 0], "knowledge": [0, 0], "multi_consistent": [0, 0], "conflict_text": [0, 0],
                    "patch_shape": [0, 0]}
        self.loss_sum = {"vision": 0.0, "text": 0.0, "multi": 0.0, "aux": 0.0, "bind": 0.0}
        self.n_since = 0

    def add(self, batch: dict, logits: dict, parts: dict) -> None:
        """Count one step's answers (conflicts: against the text label) and losses."""
        acc = self.acc
        with torch.no_grad():
            for key in ("vision", "text", "multi"):
                pred = logits[key].argmax(-1)
                labels = batch[key + "_labels"]
                for j, (kind, dv, dt) in enumerate(batch["meta"][key]):
                    if key == "vision":
                        name = "vision_easy" if dv <= 4 else "vision_hard"
                    elif key == "text":
                        name = "knowledge" if kind == "knowledge" else f"text_dt{dt}"
                    elif kind == "conflict":
                        name = "conflict_text"
                        labels_j = batch["text_labels"][j]
                        acc[name][0] += int(pred[j] == labels_j)
                        acc[name][1] += 1
                        continue
                    else:
                        name = "multi_consistent"
                    acc[name][0] += int(pred[j] == labels[j])
                    acc[name][1] += 1
        for key in ("vision", "text", "multi"):
            self.loss_sum[key] += parts[key].item()
        for key in ("aux", "bind"):
            self.loss_sum[key] += float(parts[key].detach())
        self.n_since += 1

    def row(self, step: int, elapsed_s: float, lr: float) -> dict:
        """The log row of the steps since the last one; starts a new count."""
        row = {"step": step, "elapsed_s": elapsed_s, "lr": lr}
        row.update({f"loss_{k}": round(v / self.n_since, 4) for k, v in self.loss_sum.items()})
        row.update({f"acc_{k}": (round(a / n, 3) if n else None) for k, (a, n) in self.acc.items()})
        for v in self.acc.values():
            v[0] = v[1] = 0
        for k in self.loss_sum:
            self.loss_sum[k] = 0.0
        self.n_since = 0
        return row


def save(out_dir: Path, model, processor, info: dict, log: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    _io.write_json(out_dir / "organism.json", info)
    _io.write_json(out_dir / "training_log.json", log)
