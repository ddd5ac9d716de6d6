"""On-the-fly training data for the organism, from the project's generators
(:mod:`mechmod.data.color`, :mod:`mechmod.data.knowledge`).

Each training step draws ``G`` colour groups and builds three sub-batches:

* **vision-only**: image of the group at a visual tier ``dv`` (curriculum over
  the 14 tiers) + question; label = the image colour. The images use the
  ``"binding"`` distractor policy of :func:`mechmod.data.color.render_image`
  (at least 5 objects, the target one of them picked at random, all drawn
  from one distribution in any colour but the text answer's), so that a
  rule blind to shapes answers no better than guessing among the colours
  present (:mod:`mechmod.organism.shortcuts` measures it); the study
  datasets keep the paper's rule.
* **text-only**: the group's description at ``dt`` in 0..2 + question;
  label = the text colour; plus knowledge questions "What color is a
  sapphire? ..." so that dt 2 ("the same as a sapphire") is answerable.
  Knowledge facts come in three frequencies (fixed split, recorded in the
  checkpoint): *frequent*, *rare* (seen ~10x less often), *held out* (never
  seen in training; counted apart by the evaluation).
  Graded text uncertainty is learned from the data, never injected at
  inference: the reasoning step of a tier fails at a known rate
  (:data:`TEXT_FAILURE`): dt 0 states the colour and never fails; dt 1's
  bridge ("the same as a heart. The heart is T") is wrong in 12% of the
  training descriptions; dt 2's comparison with a thing in 25%, on top of
  rare and held-out facts. A failed step's label is one of the five other
  colours, uniformly, so the calibrated answer keeps the stated colour at
  88% / 75% with entropies of about 0, 0.49 and 0.95 nats: a harder tier is
  genuinely less certain. Paraphrase templates vary the wording of each.
* **multimodal** (the documented choice): no hard-labelled conflict.
  - consistent pairs (image recoloured to the text colour): hard label;
  - one modality uninformative: the description is about another shape
    (``text_irrelevant``: label = image colour) or the question is about a
    shape never drawn (``image_irrelevant``: label = text colour);
  - conflicting pairs with a *soft* target: the normalised product of the
    model's own (detached) vision-only and text-only colour distributions
    for the same image and description, computed in the same step
    (reliability-weighted cue combination, a product of experts). No rule
    says which modality wins: the more certain unimodal belief dominates,
    so conflict behaviour depends on relative uncertainty - exactly what the
    study measures - and the organism is a subject with a known mechanism.

Everything is drawn from ``numpy.random.Generator`` objects seeded from the
training seed, so a seed fixes the data stream.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from dataclasses import dataclass

import numpy as np

from mechmod.data import color as C
from mechmod.data.knowledge import KNOWLEDGE
from mechmod.models.organism.model import prompt
from mechmod.names import CONTROLS
from mechmod.organism.shortcuts import TRAINING_POLICY

N_TIERS = 14
#: per text tier dt, the share of training descriptions whose reasoning step fails
TEXT_FAILURE = (0.0, 0.12, 0.25)
KNOWLEDGE_QUESTION = "What color is {D}? Please use one word to answer this question."
SPLIT_SEED = 20251104  # fixed: the knowledge split is part of the organism
RARE_WEIGHT = 0.1


def knowledge_split(knowledge: dict | None = None) -> dict[str, dict[str, str]]:
    """thing -> (color, frequency class) with classes frequent / rare / heldout:
    per colour one thing held out, two rare, the rest frequent."""
    knowledge = knowledge or KNOWLEDGE
    rng = np.random.default_rng(SPLIT_SEED)
    out: dict[str, dict[str, str]] = {}
    for col in sorted(knowledge):
        things = sorted(knowledge[col])
        order = rng.permutation(len(things))
        for rank, idx in enumerate(order):
            cls = "heldout" if rank == 0 else "rare" if rank <= 2 else "frequent"
            out[things[idx]] = {"color": col, "class": cls}
    return out


def find_thing(text: str, split: dict) -> str | None:
    """The knowledge thing a description mentions (longest match), if any."""
    low = text.lower()
    best = None
    for thing in split:
        t = thing.lower()
        if t in low and (best is None or len(t) > len(best)):
            best = thing
    return best


def patch_labels(info, n_side: int) -> np.ndarray:
    """Per-patch (shape, colour) labels of a rendered image from its masks:
    the visible object owning most of the patch (>= 8% of it), else 0
    (background). Returns int8 [3, n_side * n_side]: row 0 = 1 + index in
    ``TARGET_SHAPES``, row 1 = 1 + index in ``COLORS``, row 2 = 1 where the
    target covers >= 8% of the patch."""
    masks = [info.target_mask, *info.distractor_masks]
    shapes = [info.target_shape] + [d.shape for d in info.distractors]
    colors = [info.target_color] + [d.color for d in info.distractors]
    H, W = masks[0].shape
    owner = np.zeros((H, W), dtype=np.int32)  # 0 = background, i + 1 = object i
    t = info.target_layer  # painted in drawing order: the target after the first t distractors
    for i in [*range(1, t + 1), 0, *range(t + 1, len(masks))]:
        owner[masks[i]] = i + 1
    ys = np.minimum((np.arange(H) * n_side) // H, n_side - 1)
    xs = np.minimum((np.arange(W) * n_side) // W, n_side - 1)
    cell = ys[:, None] * n_side + xs[None, :]
    k = len(masks) + 1
    counts = np.bincount((cell * k + owner).ravel(), minlength=n_side * n_side * k).reshape(n_side * n_side, k)
    best = counts[:, 1:].argmax(1)
    area = counts.sum(1)
    keep = counts[np.arange(len(best)), best + 1] >= 0.08 * area
    shape_ids = np.array([C.TARGET_SHAPES.index(s) + 1 for s in shapes])
    color_ids = np.array([list(C.COLORS).index(c) + 1 for c in colors])
    out = np.zeros((3, n_side * n_side), dtype=np.int8)
    out[0] = np.where(keep, shape_ids[best], 0)
    out[1] = np.where(keep, color_ids[best], 0)
    out[2] = counts[:, 1] >= 0.08 * area  # the target is visible in this patch
    return out


def _render_chunk(args):
    """Worker: render and preprocess one deterministic chunk of a tier."""
    seed, dv, k, size, image_size, n_side = args
    # imported in the worker: it must set its own thread count before torch does any work
    import torch

    torch.set_num_threads(1)
    from transformers import CLIPImageProcessor

    ip = CLIPImageProcessor(do_resize=True, size={"height": image_size, "width": image_size},
                            do_center_crop=False, do_rescale=True, do_normalize=True, do_convert_rgb=True)
    rng = np.random.default_rng([seed, 2, dv, k])
    groups = C.sample_groups(size, seed=int(seed * 1_000_003 + dv * 10_007 + k + 17))
    order = rng.permutation(len(groups))
    groups = [groups[i] for i in order]
    images, labels = [], []
    for g in groups:
        img, info = C.render_image(g, dv, rng, return_masks=True, distractors=TRAINING_POLICY)
        images.append(img)
        labels.append(patch_labels(info, n_side))
    pv = ip(images, return_tensors="np")["pixel_values"].astype(np.float16)
    return dv, k, [dataclasses.astuple(g) for g in groups], pv, np.stack(labels)


class ImagePool:
    """Images pre-rendered once per training run (rendering the dense tiers
    costs up to ~0.1 s an image, far more than a training step), seeded and
    independent of the number of worker processes."""

    CHUNK = 50

    def __init__(self, seed: int, per_tier, image_size: int, processes: int = 2, progress: bool = False,
                 patch_size: int = 16):
        per_tier = list(per_tier)
        jobs = []
        for dv, n in enumerate(per_tier):
            for k in range(0, max(1, -(-n // self.CHUNK))):
                jobs.append((seed, dv, k, min(self.CHUNK, n - k * self.CHUNK) if n > 0 else 0, image_size,
                             image_size // patch_size))
        jobs = [j for j in jobs if j[3] > 0]
        jobs.sort(key=lambda j: -j[1])  # slow dense tiers first
        results = []
        if processes > 1:
            with mp.get_context("fork").Pool(processes) as pool:
                for i, r in enumerate(pool.imap_unordered(_render_chunk, jobs)):
                    results.append(r)
                    if progress and (i + 1) % 20 == 0:
                        print(f"image pool: {i + 1}/{len(jobs)} chunks", flush=True)
        else:
            results = [_render_chunk(j) for j in jobs]
        results.sort(key=lambda r: (r[0], r[1]))
        self.groups: dict[int, list] = {dv: [] for dv in range(len(per_tier))}
        self.pixels: dict[int, list] = {dv: [] for dv in range(len(per_tier))}
        self.labels: dict[int, list] = {dv: [] for dv in range(len(per_tier))}
        for dv, _k, gs, pv, lab in results:
            self.groups[dv] += [C.ColorGroup(*g) for g in gs]
            self.pixels[dv].append(pv)
            self.labels[dv].append(lab)
        self.pixels = {dv: (np.concatenate(v) if v else None) for dv, v in self.pixels.items()}
        self.labels = {dv: (np.concatenate(v) if v else None) for dv, v in self.labels.items()}

    def draw(self, dv: int, rng: np.random.Generator, with_labels: bool = False):
        i = int(rng.integers(len(self.groups[dv])))
        if with_labels:
            return self.groups[dv][i], self.pixels[dv][i], self.labels[dv][i]
        return self.groups[dv][i], self.pixels[dv][i]


DEFAULT_POOL = (1000,) * 5 + (500,) * 4 + (250,) * 5  # 224 px float16: ~2.5 GB


@dataclass
class Example:
    text: str  # description + " " + question, or question
    label: str
    image: object | None = None  # preprocessed pixel array [3, H, W] (float16)
    kind: str = ""
    dv: int = -1
    dt: int = -1
    patch: object | None = None  # int8 [2, n_patches] patch labels (vision rows)


def curriculum_tiers(progress: float) -> np.ndarray:
    """Sampling weights over dv 0..13 at training progress in [0, 1]: the
    800x600 tiers dv 0-4 only for the first 15% (binding the asked shape to
    its colour is the slow skill: learn it where the shapes are large), then
    the higher tiers unlock one by one until 50% of training. The easy tiers
    keep about 60% of the mass throughout, so that the skill they need is not
    crowded out by tiers the small model cannot master anyway."""
    top = 4 + int(round(9 * min(1.0, max(0.0, progress - 0.15) / 0.35)))
    w = np.array([0.5, 1.0, 1.2, 1.4, 1.4] + [0.5] * 4 + [0.3] * 5, dtype=float)
    w[top + 1 :] = 0.0
    return w / w.sum()


class TrainingStream:
    """Infinite, seeded stream of training steps."""

    def __init__(self, seed: int, pool: ImagePool, groups_per_step: int = 12, knowledge_per_step: int = 6,
                 vision_per_step: int = 24,
                 p_conflict: float = 0.4, p_text_irrelevant: float = 0.12,
                 p_image_irrelevant: float = 0.08, dt_weights=(0.25, 0.3, 0.45), text_failure=TEXT_FAILURE):
        self.pool = pool
        self.split = knowledge_split()
        self.seed = seed
        self.rng = np.random.default_rng([seed, 1])
        self.G = groups_per_step
        self.K = knowledge_per_step
        self.V = vision_per_step
        self.p_conflict = p_conflict
        self.p_ti = p_text_irrelevant
        self.p_ii = p_image_irrelevant
        self.dt_w = np.asarray(dt_weights, float) / sum(dt_weights)
        self.text_failure = tuple(text_failure)
        self.train_things = [t for t, v in self.split.items() if v["class"] != "heldout"]
        w = np.array([1.0 if self.split[t]["class"] == "frequent" else RARE_WEIGHT for t in self.train_things])
        self.thing_p = w / w.sum()

    # -- descriptions ------------------------------------------------------------
    def accept_description(self, desc: str) -> bool:
        thing = find_thing(desc, self.split)
        if thing is None:
            return True
        cls = self.split[thing]["class"]
        if cls == "heldout":
            return False
        if cls == "rare":
            return bool(self.rng.random() < RARE_WEIGHT)
        return True

    def describe(self, group, dt: int, control: str = "none"):
        """A description of ``group`` at tier ``dt`` whose knowledge thing (dt 2)
        respects the frequency split; resamples the group if needed. Returns
        (group, description)."""
        for _ in range(200):
            desc = C.describe(group, dt, self.rng, control=control)
            if self.accept_description(desc):
                return group, desc
        raise RuntimeError("could not draw an admissible description")

    # -- one step ------------------------------------------------------------
    def step(self, progress: float) -> dict:
        tier_p = curriculum_tiers(progress)
        vision, text, multi = [], [], []
        for i in range(self.G):
            dv = int(self.rng.choice(N_TIERS, p=tier_p))
            dt = int(self.rng.choice(3, p=self.dt_w))
            g, img, lab = self.pool.draw(dv, self.rng, with_labels=True)
            g, desc = self.describe(g, dt)  # g unchanged: descriptions only resample the thing
            q = C.question_for(g.target_shape)
            vision.append(Example(q, g.vision_color, img, "vision", dv, -1, lab))
            text.append(Example(f"{desc} {q}", self.text_label(g.text_color, dt), None, "text", -1, dt))
            u = self.rng.random()
            if u < self.p_conflict:
                # soft target filled in by the trainer from rows i of vision/text
                multi.append(Example(f"{desc} {q}", "", img, "conflict", dv, dt))
            elif u < self.p_conflict + self.p_ti:
                ex = self.describe_ex(g, dt, "text_irrelevant")
                multi.append(Example(f"{ex.text} {q}", g.vision_color, img, "text_irrelevant", dv, dt))
            elif u < self.p_conflict + self.p_ti + self.p_ii:
                ex = self.describe_ex(g, dt, "image_irrelevant")
                multi.append(Example(f"{ex.text} {C.question_for(ex.asked_shape)}", g.text_color, img,
                                     "image_irrelevant", dv, dt))
            else:  # consistent: describe the drawn colour of another pool image
                dv2 = int(self.rng.choice(N_TIERS, p=tier_p))
                g2, img2 = self.pool.draw(dv2, self.rng)
                g2c = dataclasses.replace(g2, text_color=g2.vision_color)
                _, d2 = self.describe(g2c, dt)
                multi.append(Example(f"{d2} {C.question_for(g2.target_shape)}", g2.vision_color, img2,
                                     "consistent", dv2, dt))
        for _ in range(self.V):  # extra vision-only rows: binding is the slow skill
            dv = int(self.rng.choice(N_TIERS, p=tier_p))
            g, img, lab = self.pool.draw(dv, self.rng, with_labels=True)
            vision.append(Example(C.question_for(g.target_shape), g.vision_color, img, "vision", dv, -1, lab))
        for _ in range(self.K):
            thing = self.train_things[int(self.rng.choice(len(self.train_things), p=self.thing_p))]
            text.append(Example(KNOWLEDGE_QUESTION.format(D=thing), self.split[thing]["color"], None, "knowledge"))
        return {"vision": vision, "text": text, "multi": multi}

    def text_label(self, color: str, dt: int) -> str:
        """The text-only label: ``color``, or when the tier's reasoning step
        fails (rate ``text_failure[dt]``) one of the other colours."""
        u, j = self.rng.random(), int(self.rng.integers(len(C.COLORS) - 1))
        if u < self.text_failure[dt]:
            return [c for c in C.COLORS if c != color][j]
        return color

    def describe_ex(self, group, dt: int, control: str):
        for _ in range(200):
            ex = C.describe_ex(group, dt, self.rng, control=control)
            if self.accept_description(ex.text):
                return ex
        raise RuntimeError("could not draw an admissible description")


def all_training_texts(n_groups: int = 3000, seed: int = 0) -> list[str]:
    """Every kind of string the generators and the stream can emit (for the
    vocabulary): descriptions at all tiers and controls over many groups,
    questions for all shapes, knowledge questions, prompt words."""
    rng = np.random.default_rng(seed)
    texts = [prompt("x", True), prompt("x", False)]
    texts += list(C.COLORS)
    shapes = set(C.TARGET_SHAPES) | set(C.CONTROL_SHAPES)
    texts += [C.question_for(s) for s in sorted(shapes)]
    for col, things in KNOWLEDGE.items():
        texts += [col, *things]
        texts += [KNOWLEDGE_QUESTION.format(D=t) for t in things]
    for g in C.sample_groups(n_groups, seed=seed):
        for dt in range(3):
            for control in CONTROLS:
                texts.append(C.describe(g, dt, rng, control=control))
    return texts
