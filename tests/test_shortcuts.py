"""Shape-blind shortcut rates on hand-drawn pixels with known answers."""

import numpy as np
import pytest

from mechmod.data.shortcuts import ShapeBlindClassifier, color_stats, rule_credits, shortcut_rates

PALETTE = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 128, 0)}


def canvas(*rects):
    """White 40x40 image with filled rectangles (colour, y0, y1, x0, x1)."""
    img = np.full((40, 40, 3), 255, dtype=np.uint8)
    for name, y0, y1, x0, x1 in rects:
        img[y0:y1, x0:x1] = PALETTE[name]
    return img


def test_color_stats_by_hand():
    img = canvas(("red", 0, 10, 0, 10), ("red", 20, 22, 20, 22), ("blue", 30, 35, 30, 35))
    s = color_stats(img, PALETTE)
    assert set(s) == {"red", "blue"}
    assert s["red"].pixels == 104 and s["red"].n_components == 2 and s["red"].largest == 100
    assert s["red"].concentration == pytest.approx(100 / 104)
    assert s["blue"].share == pytest.approx(25 / 129)
    assert s["blue"].concentration == 1.0


def test_rules_and_ties():
    img = canvas(("red", 0, 10, 0, 10), ("red", 20, 22, 20, 22), ("blue", 30, 35, 30, 35),
                 ("green", 30, 35, 0, 5))
    credits = rule_credits(color_stats(img, PALETTE), "red")
    assert credits["largest"] == 1.0
    assert credits["fewest_components"] == 0.0  # blue and green have one component each
    assert rule_credits(color_stats(img, PALETTE), "blue")["fewest_components"] == 0.5  # tie of two
    assert rule_credits(color_stats(img, PALETTE), "blue")["most_concentrated"] == 0.5


def test_shortcut_rates_mean_over_images():
    big_red = canvas(("red", 0, 10, 0, 10), ("blue", 30, 33, 30, 33))
    rates = shortcut_rates([big_red, big_red], ["red", "blue"], PALETTE)
    assert rates["largest"] == 0.5


def test_shape_blind_classifier_learns_a_size_rule_and_fails_without_one():
    rng = np.random.default_rng(0)
    imgs, answers = [], []
    for _ in range(40):  # the answer is always the larger square
        a, b = rng.choice(list(PALETTE), 2, replace=False)
        big, small = int(rng.integers(8, 12)), int(rng.integers(2, 6))
        imgs.append(canvas((a, 0, big, 0, big), (b, 25, 25 + small, 25, 25 + small)))
        answers.append(str(a))
    stats = [color_stats(i, PALETTE) for i in imgs]
    clf = ShapeBlindClassifier().fit(stats[:20], answers[:20])
    assert clf.accuracy(stats[20:], answers[20:]) == 1.0
    # same images, answers drawn at random: no statistic predicts them
    coin = [str(rng.choice([a, next(c for c in s if c != a)])) for s, a in zip(stats, answers)]
    clf = ShapeBlindClassifier().fit(stats[:20], coin[:20])
    assert clf.accuracy(stats[20:], coin[20:]) < 0.8
