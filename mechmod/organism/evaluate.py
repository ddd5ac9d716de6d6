"""The organism's behaviour card (``mechmod organism eval``).

Fresh colour groups (a seed the training never uses), plain Hugging Face
forward passes, the answer read at the token after ``ASSISTANT:``:

* vision-only accuracy and mean answer entropy per visual tier dv 0..13 and
  Spearman(dv, mean entropy);
* text-only accuracy and mean entropy per textual tier dt 0..2, with dt 2
  split by the frequency class of the knowledge fact the description uses
  (frequent / rare / held out = never seen in training, counted apart);
* conflicts (image and description disagree, tiers drawn uniformly):
  text-following / vision-following / other shares, the share with
  |dHrel| <= 1 (conflicts that inform the balance point) and the
  text-following rate (TFR) in bins of relative uncertainty
  dHrel = 2 (Ht - Hv) / (Ht + Hv).

Entropy: whole vocabulary, natural log, float32. Mean entropies carry a 95%
normal interval (mean +- 1.96 standard errors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mechmod import _io
from mechmod.data import color as C
from mechmod.errors import MechmodError
from mechmod.models.organism.model import prompt
from mechmod.organism.data import N_TIERS, find_thing, knowledge_split
from mechmod.stats import normal_mean_ci
from mechmod.uncertainty import entropy, relative_uncertainty

DEFAULT_EVAL_SEED = 909_090
DHREL_BINS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def _spearman(x, y) -> float | None:
    """Spearman's rho (average ranks for ties); None when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return None
    return float(spearmanr(x, y).statistic)


class Organism:
    """A loaded checkpoint with batched answer/entropy readout."""

    def __init__(self, model_dir: str | Path, batch_size: int = 64):
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise MechmodError(f"{model_dir}: no config.json here; pass a trained organism directory "
                               "(mechmod organism train --out DIR)")
        self.dir = model_dir
        self.processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        self.tokenizer = self.processor.tokenizer
        self.model = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True,
                                                                   dtype=torch.float32)
        self.model.eval()
        self.batch_size = batch_size
        vocab = self.tokenizer.get_vocab()
        self.id_to_label: dict[int, str] = {}
        self.labels = sorted(C.COLORS)
        for c in self.labels:
            for variant in (c, c.capitalize(), c.upper()):
                if variant in vocab:
                    self.id_to_label[vocab[variant]] = c
        info = model_dir / "organism.json"
        self.info = json.loads(info.read_text()) if info.is_file() else {}
        self.split = self.info.get("knowledge_split") or knowledge_split()

    def answer(self, texts: list[str], images: list | None = None):
        """(labels, entropies) for each text (with its image if given)."""
        labels: list[str] = []
        ents: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i : i + self.batch_size]
            with torch.no_grad():
                if images is None:
                    enc = self.tokenizer([prompt(t, False) for t in chunk], return_tensors="pt", padding=True)
                else:
                    enc = self.processor(images=images[i : i + self.batch_size],
                                         text=[prompt(t, True) for t in chunk], return_tensors="pt", padding=True)
                logits = self.model(**enc).logits[:, -1, :].float()
            ents += entropy(logits).tolist()
            labels += [self.id_to_label.get(int(j), "other") for j in logits.argmax(-1)]
        return labels, np.asarray(ents, dtype=np.float32)


def evaluate(model_dir: str | Path, seed: int = DEFAULT_EVAL_SEED, n: int = 100, n_conflicts: int | None = None,
             batch_size: int = 64, progress: bool = False) -> dict:
    """Compute the behaviour card: ``n`` samples per visual and textual tier,
    ``n_conflicts`` (default 6 n) conflict cases."""
    org = Organism(model_dir, batch_size=batch_size)
    rng = np.random.default_rng([seed, 7])
    n_conflicts = n_conflicts or 6 * n
    groups = list(C.sample_groups(max(n, n_conflicts), seed=seed))

    card: dict = {"format": "mechmod-organism-card/2", "model": str(model_dir.name if isinstance(model_dir, Path) else Path(model_dir).name),
                  "seed": seed, "n_per_tier": n, "n_conflicts": n_conflicts}
    if "device" in org.info:  # v2 checkpoints record where and how long they were trained
        card["training"] = {k: org.info.get(k) for k in ("device", "steps_done", "wall_time_s", "median_step_s",
                                                          "text_weight", "base")}
    # vision-only per tier
    vis = []
    for dv in range(N_TIERS):
        gs = groups[:n]
        imgs = [C.render_image(g, dv, rng)[0] for g in gs]
        pred, ent = org.answer([C.question_for(g.target_shape) for g in gs], imgs)
        accv = float(np.mean([p == g.vision_color for p, g in zip(pred, gs)]))
        vis.append({"dv": dv, "n": n, "accuracy": accv, "mean_entropy": float(ent.mean())})
        if progress:
            print(f"dv {dv}: acc {accv:.3f} H {ent.mean():.3f}", flush=True)
    card["vision"] = vis
    card["vision_entropy_spearman"] = _spearman([r["dv"] for r in vis], [r["mean_entropy"] for r in vis])
    card["vision_accuracy_dv0_4"] = float(np.mean([r["accuracy"] for r in vis[:5]]))

    # text-only per tier
    txt = []
    for dt in range(3):
        gs = groups[:n]
        descs = [C.describe(g, dt, rng) for g in gs]
        pred, ent = org.answer([f"{d} {C.question_for(g.target_shape)}" for d, g in zip(descs, gs)])
        correct = np.array([p == g.text_color for p, g in zip(pred, gs)])
        classes = np.array([org.split.get(find_thing(d, org.split) or "", {}).get("class", "none") for d in descs])
        row = {"dt": dt, "n": n, "accuracy": float(correct.mean()), "mean_entropy": float(ent.mean()),
               "entropy_ci": normal_mean_ci(ent)}
        if dt == 2:
            for cls in ("frequent", "rare", "heldout"):
                m = classes == cls
                row[cls] = {"n": int(m.sum()), "accuracy": float(correct[m].mean()) if m.any() else None,
                            "mean_entropy": float(ent[m].mean()) if m.any() else None}
            m = classes != "heldout"
            row["trained_facts"] = {"n": int(m.sum()), "accuracy": float(correct[m].mean()) if m.any() else None,
                                    "mean_entropy": float(ent[m].mean()) if m.any() else None}
        txt.append(row)
        if progress:
            print(f"dt {dt}: acc {row['accuracy']:.3f} H {row['mean_entropy']:.3f}", flush=True)
    card["text"] = txt

    # conflicts
    gs = groups[:n_conflicts]
    dvs = rng.integers(0, N_TIERS, size=len(gs))
    dts = rng.integers(0, 3, size=len(gs))
    imgs = [C.render_image(g, int(dv), rng)[0] for g, dv in zip(gs, dvs)]
    descs = [C.describe(g, int(dt), rng) for g, dt in zip(gs, dts)]
    qs = [C.question_for(g.target_shape) for g in gs]
    yv, hv = org.answer(qs, imgs)
    yt, ht = org.answer([f"{d} {q}" for d, q in zip(descs, qs)])
    ym, hm = org.answer([f"{d} {q}" for d, q in zip(descs, qs)], imgs)
    yv, yt, ym = np.array(yv), np.array(yt), np.array(ym)
    dh, _ = relative_uncertainty(ht, hv)
    # a case is decided only where the unimodal answers are two different colours
    disagree = (yv != yt) & (yv != "other") & (yt != "other")
    follows_text = disagree & (ym == yt)
    follows_vision = disagree & (ym == yv)
    other = disagree & ~(follows_text | follows_vision)
    conf = {"n": len(gs), "n_unimodal_disagree": int(disagree.sum()),
            "unimodal_agree_or_other": float((~disagree).mean()),
            "text_following": float(follows_text.mean()),
            "vision_following": float(follows_vision.mean()), "other": float(other.mean()),
            "abs_dhrel_le_1": float((np.abs(dh) <= 1).mean()),
            "multimodal_entropy_mean": float(hm.mean())}
    truth_v = np.array([g.vision_color for g in gs])
    truth_t = np.array([g.text_color for g in gs])
    both_ok = (yv == truth_v) & (yt == truth_t)
    conf["both_unimodal_correct"] = int(both_ok.sum())

    def tfr_bins(mask):
        rows = []
        for lo, hi in zip(DHREL_BINS[:-1], DHREL_BINS[1:]):
            inb = mask & (dh >= lo) & ((dh < hi) | (hi == DHREL_BINS[-1]))
            dec = inb & (follows_text | follows_vision)
            k = int(dec.sum())
            rows.append({"lo": lo, "hi": hi, "n": k,
                         "tfr": float(follows_text[dec].mean()) if k else None})
        return rows

    decided = follows_text | follows_vision
    conf["tfr"] = float(follows_text[decided].mean()) if decided.any() else None
    conf["tfr_bins"] = tfr_bins(np.ones(len(gs), bool))
    conf["tfr_bins_both_correct"] = tfr_bins(both_ok)
    conf["tfr_dhrel_spearman"] = _spearman(dh[decided], follows_text[decided].astype(float)) if decided.sum() > 2 else None
    bc = both_ok & decided
    conf["tfr_both_correct"] = float(follows_text[bc].mean()) if bc.any() else None
    conf["tfr_dhrel_spearman_both_correct"] = _spearman(dh[bc], follows_text[bc].astype(float)) if bc.sum() > 2 else None
    card["conflicts"] = conf
    card["targets"] = targets(card)
    return card


def targets(card: dict) -> dict:
    """The organism's behavioural targets (the paper's premises), met or not."""
    vis, txt, conf = card["vision"], card["text"], card["conflicts"]
    sp_tfr = conf.get("tfr_dhrel_spearman")
    ci = [r["entropy_ci"] for r in txt]
    return {
        "vision_acc_dv0_ge_0.90": vis[0]["accuracy"] >= 0.90,
        "vision_acc_mean_dv0_4_ge_0.90": card["vision_accuracy_dv0_4"] >= 0.90,
        "vision_entropy_spearman_ge_0.8": bool((card["vision_entropy_spearman"] or 0) >= 0.8),
        "text_entropy_dt0_lt_dt1_lt_dt2_cis_apart": ci[0][1] < ci[1][0] and ci[1][1] < ci[2][0],
        "conflicts_abs_dhrel_le_1_ge_0.25": conf["abs_dhrel_le_1"] >= 0.25,
        "text_following_ge_0.15": conf["text_following"] >= 0.15,
        "vision_following_ge_0.15": conf["vision_following"] >= 0.15,
        "tfr_falls_with_dhrel": sp_tfr is not None and sp_tfr < 0,
    }


def _f(x, nd=3):
    return "   -  " if x is None else f"{x:.{nd}f}"


def _duration(t: dict) -> str:
    """Wall time of a training, with its median step time where recorded (the
    wall time also counts pauses and a shared machine)."""
    wall = f"{t['wall_time_s'] / 60:.1f} min"
    return wall if not t.get("median_step_s") else f"{wall} wall, {t['median_step_s']:.2f} s/step median"


def format_card(card: dict) -> str:
    """Plain-text behaviour card (deterministic)."""
    L = []
    L.append(f"organism behaviour card  (model {card['model']}, eval seed {card['seed']}, "
             f"n={card['n_per_tier']} per tier, {card['n_conflicts']} conflicts)")
    t = card.get("training")
    if t:
        b = t.get("base") or {}
        base = f", fine-tuned from {Path(b['dir']).name}" if b else ""
        if b.get("wall_time_s"):  # the shipped variants record their base's training too
            base += f" ({b['steps']} steps on {b['device']} in {_duration(b)})"
        L.append(f"trained {t['steps_done']} steps on {t['device']} in {_duration(t)}, "
                 f"text weight W = {t['text_weight']:g}{base}")
    L.append("")
    L.append("vision-only (image + question)")
    L.append("  dv   acc    H(nats)")
    for r in card["vision"]:
        L.append(f"  {r['dv']:>2}  {_f(r['accuracy'])}  {_f(r['mean_entropy'])}")
    L.append(f"  Spearman(dv, mean H) = {_f(card['vision_entropy_spearman'])}")
    L.append("")
    L.append("text-only (description + question)")
    L.append("  dt   acc    H(nats)  95% interval      n")
    for r in card["text"]:
        lo, hi = r["entropy_ci"]
        L.append(f"  {r['dt']:>2}  {_f(r['accuracy'])}  {_f(r['mean_entropy'])}   [{lo:.3f}, {hi:.3f}]  {r['n']:>4}")
    d2 = card["text"][2]
    for cls in ("frequent", "rare", "heldout"):
        c = d2.get(cls)
        if c:
            L.append(f"  dt2 {cls:<9} acc {_f(c['accuracy'])}  H {_f(c['mean_entropy'])}  n {c['n']}")
    L.append("")
    c = card["conflicts"]
    L.append("conflicts (image and description disagree; dv, dt uniform)")
    L.append(f"  text-following {_f(c['text_following'])}  vision-following {_f(c['vision_following'])}  "
             f"other {_f(c['other'])}  (shares of all {c['n']})")
    L.append(f"  unimodal answers agree or not a colour: {_f(c['unimodal_agree_or_other'])}")
    L.append(f"  |dHrel| <= 1: {_f(c['abs_dhrel_le_1'])} of the conflicts")
    L.append(f"  TFR {_f(c['tfr'])}   Spearman(dHrel, follows text) {_f(c['tfr_dhrel_spearman'])}")
    L.append(f"  both unimodal answers correct: {c['both_unimodal_correct']}  TFR there {_f(c['tfr_both_correct'])}")
    L.append("  dHrel bin        n    TFR   | both-correct n   TFR")
    for a, b in zip(c["tfr_bins"], c["tfr_bins_both_correct"]):
        L.append(f"  [{a['lo']:+.1f},{a['hi']:+.1f})  {a['n']:>4}  {_f(a['tfr'])}  |  {b['n']:>4}  {_f(b['tfr'])}")
    L.append("")
    L.append("targets")
    for k, v in sorted(card["targets"].items()):  # sorted: the card JSON is written with sorted keys
        L.append(f"  {'met ' if v else 'MISS'}  {k}")
    return "\n".join(L)


def save_card(card: dict, path: str | Path) -> None:
    _io.write_json(path, card)
