"""The built-in demo source: deterministic scenes whose right answer depends on the image."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mdpo_data.sources.records import BadRow, ImageRef
from mdpo_data.sources import SourceError, open_source
from mdpo_data.sources.demo import COLORS, NUMBERS, render_image


def demo(n=200, seed=0):
    return list(open_source("demo", seed=seed, demo_size=n))


def pixels(candidate):
    return np.asarray(Image.open(io.BytesIO(candidate.image.load())).convert("RGB")).reshape(-1, 3)


def has_color(candidate, name):
    return bool((pixels(candidate) == np.array(COLORS[name])).all(axis=1).any())


def test_same_seed_same_candidates_and_bytes_other_seed_differs():
    a, b, c = demo(50, seed=1), demo(50, seed=1), demo(50, seed=2)
    text = lambda cs: [(x.question, x.chosen, x.rejected, x.meta) for x in cs]  # noqa: E731
    assert text(a) == text(b) and text(a) != text(c)
    assert [x.image.load() for x in a] == [x.image.load() for x in b]
    assert [x.image.load() for x in a] != [x.image.load() for x in c]
    assert render_image(a[3].image) == render_image(ImageRef("demo", index=3, data=a[3].image.data))


def test_rows_ids_and_images_are_well_formed():
    candidates = demo(30)
    assert [c.row for c in candidates] == list(range(30))
    assert len({c.example_id for c in candidates}) == 30
    image = Image.open(io.BytesIO(candidates[0].image.load()))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 128))
    background = pixels(candidates[0]).min(axis=1).max()
    assert background >= 232  # a light background


def test_chosen_is_right_and_rejected_is_wrong_for_the_image():
    candidates = demo(300)
    tasks = Counter(c.meta["task"] for c in candidates)
    assert set(tasks) == {"count", "color", "shape", "position", "presence"}
    for c in candidates:
        answer, wrong = c.meta["answer"], c.meta["wrong"]
        assert answer != wrong and c.chosen != c.rejected
        scene = json.loads(c.image.data)
        target_shape, target_color = scene["items"][0][:2]
        if c.meta["task"] == "count":
            true_count = sum(item[0] == target_shape for item in scene["items"])
            assert int(answer) == true_count
            spoken = lambda n: (NUMBERS[n], str(n))  # noqa: E731
            assert any(f" {w} " in c.chosen for w in spoken(true_count))
            assert any(f" {w} " in c.rejected for w in spoken(int(wrong)))
        elif c.meta["task"] == "color":
            assert answer == target_color and answer in c.chosen and wrong in c.rejected
        elif c.meta["task"] == "shape":
            assert answer == target_shape and answer in c.chosen and wrong in c.rejected


def test_the_colour_in_the_answer_is_drawn_in_the_pixels():
    for c in [c for c in demo(120) if c.meta["task"] == "color"][:10]:
        assert has_color(c, c.meta["answer"])


def test_exact_duplicate_pairs_are_rare():
    candidates = demo(2000)
    unique = {(c.question, c.chosen, c.rejected) for c in candidates}
    assert len(unique) > 0.95 * len(candidates)


def test_demo_size_is_validated_and_other_options_warn():
    with pytest.raises(SourceError, match="--demo-size must be a positive integer"):
        open_source("demo", demo_size=0)
    with pytest.warns(UserWarning, match="ignores option.*path"):
        open_source("demo", path="somewhere", demo_size=3)


def test_a_broken_spec_is_a_bad_row_not_a_crash():
    with pytest.raises(BadRow, match="bad_demo_spec"):
        render_image(ImageRef("demo", index=0, data=b'{"size": 128}'))
