"""How well shape-blind rules answer the organism's training images.

The organism's training images use the ``"binding"`` distractor policy of
:func:`mechmod.data.color.render_image`; this module measures, per visual
tier and on the rendered pixels, the fixed rules of
:mod:`mechmod.data.shortcuts` and a :class:`ShapeBlindClassifier` fitted on
one seeded set of images and scored on another (``mechmod organism
shortcuts``). Guessing among the colours present scores the
``chance_floor`` (about 0.2-0.25: every scene has at least 5 objects).
"""

from __future__ import annotations

import numpy as np

from mechmod.data import color as C
from mechmod.data.shortcuts import RULES, ShapeBlindClassifier, color_stats, rule_credits

TRAINING_POLICY = "binding"


def tier_stats(dv: int, n: int, seed: int, policy: str = TRAINING_POLICY) -> tuple[list[dict], list[str]]:
    """Per-colour statistics and answers of ``n`` seeded images at tier ``dv``."""
    rng = np.random.default_rng([seed, 31, dv])
    groups = C.sample_groups(n, seed=seed * 101 + dv)
    stats, answers = [], []
    for g in groups:
        img, _ = C.render_image(g, dv, rng, distractors=policy)
        stats.append(color_stats(np.asarray(img), C.COLORS))
        answers.append(g.vision_color)
    return stats, answers


def tier_rates(dv: int, n_fit: int, n_eval: int, seed: int = 0, policy: str = TRAINING_POLICY) -> dict[str, float]:
    """Each fixed rule's rate and the classifier's held-out accuracy at ``dv``
    (fitted on ``n_fit`` images of seed ``seed``, scored on ``n_eval`` of seed
    ``seed + 1``), plus the chance floor mean 1 / colours present."""
    fit_s, fit_a = tier_stats(dv, n_fit, seed, policy)
    ev_s, ev_a = tier_stats(dv, n_eval, seed + 1, policy)
    credits = [rule_credits(s, a) for s, a in zip(ev_s, ev_a)]
    out = {rule: float(np.mean([c[rule] for c in credits])) for rule in RULES}
    try:
        out["classifier"] = ShapeBlindClassifier().fit(fit_s, fit_a).accuracy(ev_s, ev_a)
    except ValueError:  # one colour in every image (dv 0): any rule is right
        out["classifier"] = 1.0
    out["chance_floor"] = float(np.mean([1.0 / len(s) for s in ev_s]))
    return out


def training_shortcut_rates(n_fit: int = 200, n_eval: int = 200, seed: int = 0, tiers=range(C.N_DV),
                            policy: str = TRAINING_POLICY) -> dict[int, dict[str, float]]:
    """:func:`tier_rates` for every tier in ``tiers``."""
    return {int(dv): tier_rates(int(dv), n_fit, n_eval, seed, policy) for dv in tiers}
