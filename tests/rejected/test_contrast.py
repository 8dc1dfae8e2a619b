"""Rejected-image strategies: specs parse to what they say, each draw is deterministic for
its seed and honours its documented ranges, and the noise follows the BPO schedule."""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mdpo_data.rejected.crop import crop_box
from mdpo_data.rejected.noise import diffusion_noise, noise_schedule
from mdpo_data.rejected.registry import SpecError, parse_spec
from mdpo_data.rejected.swap import pick_partner
from mdpo_data.rejected.crop import Crop
from mdpo_data.rejected.moco import Moco, shift_hue
from mdpo_data.rejected.model_input import CLIP_MEAN, CLIP_STD, LLAVA_15_INPUT, ModelInput
from mdpo_data.rejected.noise import Noise, normalized_diffusion_noise
from mdpo_data.rejected.swap import Swap
from mdpo_data.build.images import encode


def coordinates(width: int = 120, height: int = 90) -> Image.Image:
    """Red = x, green = y (scaled to 0-255), blue = a texture: where a pixel came from."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / (width - 1), y * 255 / (height - 1), (x * 7 + y * 13) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


# ------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    ("spec", "resolved", "kind"),
    [
        ("crop:0-0.2", "crop:0.01-0.2", Crop),
        ("crop:0.2-0.5", "crop:0.2-0.5", Crop),
        (" Crop: .2 - .5 ", "crop:0.2-0.5", Crop),
        ("crop:0.05-1", "crop:0.05-1", Crop),
        ("crop", "crop:0.01-0.2", Crop),
        ("swap", "swap", Swap),
        ("moco", "moco", Moco),
        ("noise:900", "noise:900", Noise),
        ("noise:1", "noise:1", Noise),
        ("noise:1000", "noise:1000", Noise),
        ("noise", "noise:900", Noise),
    ],
)
def test_valid_specs(spec, resolved, kind):
    strategy = parse_spec(spec)
    assert isinstance(strategy, kind)
    assert strategy.spec == spec and strategy.resolved == resolved
    assert strategy.needs_partner is (kind is Swap)
    assert parse_spec(strategy.resolved) == dataclasses.replace(strategy, spec=strategy.resolved)


def test_crop_zero_means_one_percent():
    strategy = parse_spec("crop:0-0.2")
    assert (strategy.lo, strategy.hi) == (0.01, 0.2)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "unknown strategy"),
        ("blur", "unknown strategy"),
        ("crop:0.5-0.2", "LO < HI"),
        ("crop:0.2-0.2", "LO < HI"),
        ("crop:0-20", "not percents"),
        ("crop:0-1.5", "HI <= 1"),
        ("crop:-0.1-0.2", "LO-HI"),
        ("crop:0.2", "LO-HI"),
        ("crop:a-b", "LO-HI"),
        ("crop:0-0.005", "HI must be above"),
        ("noise:0", "1..1000"),
        ("noise:1001", "1..1000"),
        ("noise:9.5", "1..1000"),
        ("noise:abc", "1..1000"),
        ("swap:2", "no argument"),
        ("moco:v3", "no argument"),
    ],
)
def test_invalid_specs_name_the_problem_and_the_valid_forms(spec, problem):
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    message = str(caught.value)
    assert repr(spec) in message and problem in message
    for form in ("crop:LO-HI", "swap", "moco", "noise:T"):
        assert form in message
    assert isinstance(caught.value, ValueError)


def test_describe_is_one_sentence_per_strategy():
    assert parse_spec("crop:0-0.2").describe() == (
        "random resized crop keeping 1%-20% of the image area (aspect ratio 3/4-4/3), "
        "resized back to the original size (bilinear)"
    )
    assert "20%-50%" in parse_spec("crop:0.2-0.5").describe()
    assert "another example" in parse_spec("swap").describe()
    assert "MoCo v2" in parse_spec("moco").describe()
    noise = parse_spec("noise:900").describe()
    assert "step 900 of 1000" in noise and "0.366 x_0 + 0.931 eps" in noise
    assert "shortest_edge 336" in noise and "normalized input" in noise


def test_strategies_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_spec("crop").hi = 0.5


# ------------------------------------------------------------------ crop


SIZES = [(500, 375), (375, 500), (64, 48), (31, 17), (1000, 40), (12, 900)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("lo", "hi"), [(0.01, 0.2), (0.2, 0.5), (0.2, 1.0)])
def test_crop_area_always_in_range(size, lo, hi):
    width, height = size
    area = width * height
    for seed in range(300):
        left, top, w, h = crop_box(width, height, lo, hi, np.random.default_rng(seed))
        assert lo * area <= w * h <= hi * area, (seed, w, h)
        assert 0 <= left and left + w <= width and 0 <= top and top + h <= height


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (64, 48)])
def test_crop_aspect_ratio_in_range_up_to_rounding(size):
    ratios = []
    for seed in range(300):
        _, _, w, h = crop_box(*size, 0.01, 0.2, np.random.default_rng(seed))
        # w and h are rounded to whole pixels: allow half a pixel either way
        assert (w - 0.5) / (h + 0.5) <= 4 / 3 and (w + 0.5) / (h - 0.5) >= 3 / 4, (seed, w, h)
        ratios.append(w / h)
    assert min(ratios) < 0.85 and max(ratios) > 1.2  # the range is actually explored


def test_elongated_image_keeps_the_area_and_the_closest_aspect():
    # 1000x40: crops of 20%-50% of the area cannot have an aspect in 3/4-4/3 (torchvision's
    # fallback would return a 53x40 center crop, 5% of the area). Keep the area in range and
    # take the least elongated crop that has it.
    for seed in range(50):
        left, top, w, h = crop_box(1000, 40, 0.2, 0.5, np.random.default_rng(seed))
        assert 0.2 * 40_000 <= w * h <= 0.5 * 40_000
        assert h == 40 and w == math.ceil(0.2 * 40_000 / 40)


def test_crop_too_small_image_is_a_counted_row():
    from mdpo_data.sources.records import BadRow

    with pytest.raises(BadRow) as caught:
        parse_spec("crop:0-0.2").apply(Image.new("RGB", (2, 2)), 1)
    assert caught.value.reason == "image_too_small"


def test_crop_output_is_the_drawn_region_at_the_original_size():
    image = coordinates()
    strategy = parse_spec("crop:0-0.2")
    for seed in range(20):
        out = strategy.apply(image, seed)
        assert out.size == image.size and out.mode == "RGB"
        rng = np.random.Generator(np.random.PCG64(seed))  # what apply draws from
        left, top, w, h = crop_box(*image.size, 0.01, 0.2, rng)
        red, green = np.asarray(out)[..., 0].astype(int), np.asarray(out)[..., 1].astype(int)
        # red encodes x: the output only spans the crop's columns (bilinear stays inside)
        x_lo, x_hi = left * 255 / 119, (left + w - 1) * 255 / 119
        assert x_lo - 3 <= red.min() and red.max() <= x_hi + 3
        y_lo, y_hi = top * 255 / 89, (top + h - 1) * 255 / 89
        assert y_lo - 3 <= green.min() and green.max() <= y_hi + 3
        assert red.max() - red.min() < 0.6 * 255  # at most ~52% of the width survives


@pytest.mark.parametrize("spec", ["crop:0-0.2", "crop:0.2-0.5", "moco", "noise:900"])
def test_deterministic_for_a_seed_and_different_across_seeds(spec):
    image = coordinates()
    strategy = parse_spec(spec)
    first = encode(strategy.apply(image, 1234), "JPEG")
    assert first == encode(strategy.apply(image.copy(), 1234), "JPEG")
    others = {encode(strategy.apply(image, seed), "PNG") for seed in range(1, 9)}
    assert len(others) == 8


@pytest.mark.parametrize("spec", ["crop:0-0.2", "moco"])
def test_same_size_rgb_and_input_untouched(spec):
    image = coordinates(77, 41)
    before = np.asarray(image).copy()
    out = parse_spec(spec).apply(image, 7)
    assert out.size == (77, 41) and out.mode == "RGB"
    assert np.array_equal(np.asarray(image), before)


def test_global_random_state_is_untouched():
    np_state, py_state = np.random.get_state(), random.getstate()
    image = coordinates()
    for spec in ("crop", "moco", "noise:900"):
        parse_spec(spec).apply(image, 3)
    pick_partner(0, ["a", "b", "c"], 3)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(np_state[1:2], after[1:2]))
    assert np_state[2:] == after[2:]


def test_no_torch_import_for_image_work():
    code = (
        "import sys, mdpo_data.rejected, mdpo_data.build.images; "
        "print(any(m in sys.modules for m in ('torch', 'torchvision', 'cv2', 'albumentations')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# ------------------------------------------------------------------ moco


def test_moco_recipe_probabilities_show_up():
    image = coordinates(48, 40)
    strategy = parse_spec("moco")
    outputs = [np.asarray(strategy.apply(image, seed)).astype(int) for seed in range(200)]
    gray = sum(bool((o == o[..., :1]).all()) for o in outputs)
    assert 20 <= gray <= 65  # grayscale p = 0.2 of 200
    # red encodes x: after a flip red decreases left to right
    flipped = sum(o[:, :8, 0].mean() > o[:, -8:, 0].mean() for o in outputs)
    assert 70 <= flipped <= 130  # flip p = 0.5 (grayscale/jitter keep the gradient's sign)


def test_hue_shift_matches_a_known_rotation():
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    assert shift_hue(red, 0.0).getpixel((0, 0)) == (255, 0, 0)
    r, g, b = shift_hue(red, 1 / 3).getpixel((0, 0))  # a third of a turn: green
    assert g > 240 and r < 15 and b < 15


# ------------------------------------------------------------------ noise


def test_noise_schedule_against_the_formula_by_hand():
    abar = noise_schedule()
    assert abar.shape == (1000,) and abar.dtype == np.float64

    def beta(i: int) -> float:  # i = 0..999, x = linspace(-6, 6, 1000)[i]
        x = -6 + 12 * i / 999
        return 1 / (1 + math.exp(-x)) * (5e-3 - 1e-5) + 1e-5

    assert abar[0] == pytest.approx(1 - beta(0), rel=1e-15)
    assert abar[0] == pytest.approx(0.99997766161, rel=1e-10)  # 1 - (sigmoid(-6) * 4.99e-3 + 1e-5)
    assert abar[899] == pytest.approx(math.prod(1 - beta(i) for i in range(900)), rel=1e-12)
    assert abar[899] == pytest.approx(0.133806804, rel=1e-8)  # BPO's t = 900
    assert abar[-1] == pytest.approx(math.prod(1 - beta(i) for i in range(1000)), rel=1e-12)
    assert abar[-1] == pytest.approx(0.081249194, rel=1e-8)
    assert np.all(np.diff(abar) < 0)


def test_noise_is_the_formula_on_pixels_in_minus_one_one():
    image = coordinates()
    t, seed = 500, 99
    out = np.asarray(diffusion_noise(image, t, seed)).astype(np.float64)
    eps = np.random.Generator(np.random.PCG64(seed)).standard_normal((90, 120, 3), dtype=np.float32)
    abar = noise_schedule()[t - 1]
    x0 = np.asarray(image, dtype=np.float64) / 127.5 - 1
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    expected = np.clip(np.rint((x_t + 1) * 127.5), 0, 255)
    assert np.abs(out - expected).max() <= 1  # float32 arithmetic, rounding ties


def test_noise_statistics_at_the_ends():
    image = coordinates(200, 150)
    x = np.asarray(image, dtype=np.float64).ravel()
    nearly_clean = np.asarray(diffusion_noise(image, 1, 5), dtype=np.float64).ravel()
    assert np.abs(nearly_clean - x).mean() < 1.0  # noise std 127.5 * sqrt(1 - abar_1) = 0.6
    nearly_noise = np.asarray(diffusion_noise(image, 1000, 5), dtype=np.float64).ravel()
    assert np.corrcoef(x, nearly_noise)[0, 1] < 0.3
    at_900 = np.asarray(diffusion_noise(image, 900, 5), dtype=np.float64).ravel()
    assert np.corrcoef(x, nearly_noise)[0, 1] < np.corrcoef(x, at_900)[0, 1] < 0.5


def test_noise_spread_on_a_flat_gray_image():
    gray = Image.new("RGB", (200, 200), (128, 128, 128))
    for t in (100, 300):
        out = np.asarray(diffusion_noise(gray, t, 1), dtype=np.float64)
        abar = noise_schedule()[t - 1]
        assert out.std() == pytest.approx(127.5 * math.sqrt(1 - abar), rel=0.03)
        assert out.mean() == pytest.approx(127.5 + math.sqrt(abar) * 0.5, abs=0.5)


@pytest.mark.parametrize("t", [0, 1001, 1.5, True, "900"])
def test_noise_step_validated(t):
    with pytest.raises(ValueError, match="1..1000"):
        diffusion_noise(coordinates(), t, 1)


def test_noise_needs_rgb():
    with pytest.raises(ValueError, match="RGB"):
        diffusion_noise(Image.new("L", (4, 4)), 10, 1)


# ------------------------------------------------------------------ swap


def test_swap_apply_returns_the_partner_image_as_given():
    partner = coordinates()
    assert parse_spec("swap").apply(partner, 1) is partner


def test_pick_partner_never_picks_the_same_image():
    keys = ["a", "a", "b", "c", "a", "c", "d"] * 5
    for seed in range(40):
        for index in range(len(keys)):
            j = pick_partner(index, keys, seed)
            assert keys[j] != keys[index]
            assert j == pick_partner(index, keys, seed)  # deterministic


def test_pick_partner_finds_the_lone_other_image():
    keys = ["same"] * 500 + ["other"]
    assert pick_partner(3, keys, 11) == 500
    assert keys[pick_partner(500, keys, 11)] == "same"


def test_pick_partner_spreads_over_the_sample():
    keys = [f"k{i}" for i in range(10)]
    picks = {pick_partner(0, keys, seed) for seed in range(200)}
    assert picks == set(range(1, 10))


def test_pick_partner_respects_exclude():
    keys = ["a", "b", "c"]
    for seed in range(20):
        assert pick_partner(0, keys, seed, exclude={1}) == 2


def test_pick_partner_all_same_image_is_a_clear_error():
    with pytest.raises(SpecError, match="at least two different images"):
        pick_partner(0, ["x"] * 5, 1)
    with pytest.raises(ValueError):
        pick_partner(0, ["x", "y"], 1, exclude={1})
    with pytest.raises(IndexError):
        pick_partner(5, ["x", "y"], 1)


# ------------------------------------------------------------------ noise:T at BPO's level


def photo(width=640, height=480, seed=0):
    """A photo-like test image: a coloured background with 30 random filled ellipses."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse([x, y, x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def test_noise_is_added_at_the_models_input_size_and_stored_lossless():
    strategy = parse_spec("noise:900")
    assert strategy.lossless and strategy.space == LLAVA_15_INPUT
    assert strategy.apply(photo(640, 480), 1).size == (448, 336)  # LLaVA-1.5: short side 336
    assert strategy.apply(coordinates(77, 41), 1).size == (631, 336)  # up too, as the processor
    qwen = ModelInput((("max_pixels", 112 * 112), ("min_pixels", 56 * 56)), factor=28)
    assert parse_spec("noise:900", qwen).apply(photo(640, 480), 1).size == (112, 84)


def test_noise_is_bpos_formula_on_the_normalized_input():
    image, t, seed = photo(336, 336, 3), 700, 11
    out, clipped = normalized_diffusion_noise(image, t, seed, CLIP_MEAN, CLIP_STD)
    mean, std = np.array(CLIP_MEAN), np.array(CLIP_STD)
    abar = noise_schedule()[t - 1]
    eps = np.random.Generator(np.random.PCG64(seed)).standard_normal((336, 336, 3), dtype=np.float32)
    x0 = (np.asarray(image, dtype=np.float64) / 255 - mean) / std
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps  # BPO/VCD on the processed tensor
    pixels = np.rint((x_t * std + mean) * 255)
    assert clipped == int(((pixels < 0) | (pixels > 255)).sum())
    assert np.abs(np.asarray(out) - np.clip(pixels, 0, 255)).max() <= 1  # float32, rounding ties


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_900_reaches_the_model_at_bpos_level(seed):
    """Measured as the issue asks: the stored m_l through a 336 px CLIP processor, minus BPO's
    signal part sqrt(abar) x_0, has a std within 10% of BPO's sqrt(1 - abar_900) = 0.931. The
    old rule (pixel-space noise at the source resolution, JPEG) reached about 0.55."""
    from transformers import CLIPImageProcessor

    from mdpo_data.build import images
    from mdpo_data.scoring.logprobs import decode_image as decode

    processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    image = photo(640, 480, seed)
    x0 = processor(image, return_tensors="np")["pixel_values"][0]
    abar = noise_schedule()[899]
    stored = images.encode(parse_spec("noise:900").apply(image, seed), "PNG")
    x = processor(decode(stored), return_tensors="np")["pixel_values"][0]
    seen = float(np.std(x - math.sqrt(abar) * x0))
    assert seen == pytest.approx(math.sqrt(1 - abar), rel=0.10)
    old = images.encode(diffusion_noise(image, 900, seed), "JPEG")
    old_seen = float(np.std(processor(decode(old), return_tensors="np")["pixel_values"][0]
                            - math.sqrt(abar) * x0))
    assert old_seen < 0.8 * seen


def test_model_input_of_real_processors_predicts_their_resize(tmp_path):
    from transformers import AutoProcessor

    from mdpo_data.demo.tiny import build_tiny_llava, build_tiny_qwen2_vl

    llava = AutoProcessor.from_pretrained(build_tiny_llava(tmp_path / "l")).image_processor
    space = ModelInput.of(llava)
    assert space.resize_to(640, 480) == (42, 32) and space.mean == CLIP_MEAN
    assert ModelInput.from_json(space.to_json()) == space
    qwen = AutoProcessor.from_pretrained(build_tiny_qwen2_vl(tmp_path / "q")).image_processor
    space = ModelInput.of(qwen)
    for size in [(640, 480), (50, 50), (120, 60)]:
        grid = qwen(Image.new("RGB", size), return_tensors="np")["image_grid_thw"][0]
        assert space.resize_to(*size) == (grid[2] * 14, grid[1] * 14)
