"""Drift scenarios: each transform's defining properties, and the streams built from them."""

from __future__ import annotations

import numpy as np
import pytest

from mcuprune.controller.scenarios import (
    SCENARIOS,
    Scenario,
    brightness_contrast,
    class_prior,
    gaussian_noise,
    make_stream,
    rotation,
    stream_indices,
)
from mcuprune.train.datasets import load_digits


def _images(n: int = 6, h: int = 9, w: int = 9, c: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c)).astype(np.uint8)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_brightness_contrast_identity_values_and_clipping() -> None:
    x = _images()
    np.testing.assert_array_equal(brightness_contrast(x), x)
    px = np.array([0, 100, 101, 250], dtype=np.uint8).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(brightness_contrast(px, brightness=10.0, contrast=0.5).ravel(), [10, 60, 60, 135])
    np.testing.assert_array_equal(brightness_contrast(px, brightness=40.0).ravel(), [40, 140, 141, 255])
    np.testing.assert_array_equal(brightness_contrast(px, brightness=-120.0).ravel(), [0, 0, 0, 130])
    assert brightness_contrast(px, 3.0, 1.2).dtype == np.uint8


def test_gaussian_noise_sigma_zero_is_identity_and_noise_is_seeded() -> None:
    x = _images()
    np.testing.assert_array_equal(gaussian_noise(x, 0.0, seed=3), x)
    a, b, c = gaussian_noise(x, 20.0, seed=3), gaussian_noise(x, 20.0, seed=3), gaussian_noise(x, 20.0, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError):
        gaussian_noise(x, -1.0, seed=0)


def test_gaussian_noise_has_the_requested_spread_away_from_the_clip() -> None:
    gray = np.full((200, 16, 16, 1), 128, dtype=np.uint8)
    diff = gaussian_noise(gray, 10.0, seed=0).astype(np.float64) - 128
    assert abs(diff.mean()) < 0.1 and abs(diff.std() - np.sqrt(10.0**2 + 1 / 12)) < 0.1  # + rounding


def test_rotation_by_zero_and_full_turn_is_identity_and_quarter_turn_is_rot90() -> None:
    x = _images(c=3)
    np.testing.assert_array_equal(rotation(x, 0.0), x)
    np.testing.assert_array_equal(rotation(x, 360.0), x)
    np.testing.assert_array_equal(rotation(x, 90.0), np.rot90(x, 1, axes=(1, 2)))  # counter-clockwise
    np.testing.assert_array_equal(rotation(rotation(x, 180.0), 180.0), x)


def test_rotation_moves_content_and_fills_black() -> None:
    x = np.full((1, 9, 9, 1), 200, dtype=np.uint8)
    r = rotation(x, 45.0)
    assert r[0, 4, 4, 0] == 200  # the centre stays
    assert r[0, 0, 0, 0] == 0  # a corner comes from outside the image


def test_class_prior_probabilities() -> None:
    p = class_prior(10, (5, 7, 9), 0.8)
    np.testing.assert_allclose(p[[5, 7, 9]], 0.8 / 3)
    np.testing.assert_allclose(p[[0, 1, 2, 3, 4, 6, 8]], 0.2 / 7)
    assert np.isclose(p.sum(), 1.0)
    for bad in [((), 0.5), ((10,), 0.5), ((1,), 1.5), (tuple(range(10)), 0.5)]:
        with pytest.raises(ValueError):
            class_prior(10, *bad)


def test_scenario_kinds_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown scenario kind"):
        Scenario("x", "snow")
    assert set(SCENARIOS) == {"brightness_contrast", "gaussian_noise", "rotation", "class_prior", "class_prior_shirts"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_make_stream_is_clean_before_the_shift_and_transformed_after(digits, name: str) -> None:
    scenario = SCENARIOS[name]
    x, y, mask = make_stream(digits, scenario, shift_at=100, length=250, seed=5)
    assert x.shape == (250, *digits.x_test.shape[1:]) and x.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.arange(250) >= 100)
    order = stream_indices(digits.y_test, 10, scenario, 100, 250, seed=5)
    np.testing.assert_array_equal(y, digits.y_test[order])
    np.testing.assert_array_equal(x[:100], digits.x_test[order[:100]])  # untouched before the shift
    np.testing.assert_array_equal(x[100:], scenario.transform(digits.x_test[order[100:]], seed=6))
    x2, y2, _ = make_stream(digits, scenario, shift_at=100, length=250, seed=5)
    np.testing.assert_array_equal(x, x2)  # seeded
    np.testing.assert_array_equal(y, y2)


def test_stream_does_not_repeat_images_before_the_split_runs_out(digits) -> None:
    n = len(digits.y_test)
    order = stream_indices(digits.y_test, 10, SCENARIOS["rotation"], 50, n, seed=0)
    assert len(np.unique(order)) == n
    longer = stream_indices(digits.y_test, 10, SCENARIOS["rotation"], 50, n + 20, seed=0)
    assert len(longer) == n + 20


def test_class_prior_stream_follows_the_prior_after_the_shift(digits) -> None:
    scenario = Scenario("cp", "class_prior", {"classes": (1, 4), "weight": 0.7})
    _, y, mask = make_stream(digits, scenario, shift_at=300, length=4300, seed=2)
    after = np.bincount(y[mask], minlength=10) / mask.sum()
    expected = class_prior(10, (1, 4), 0.7)
    assert np.abs(after - expected).max() < 0.02  # 4000 draws: about 4 standard errors
    before = np.bincount(y[~mask], minlength=10) / (~mask).sum()
    natural = np.bincount(digits.y_test, minlength=10) / len(digits.y_test)
    assert np.abs(before - natural).max() < 0.05
    # Before the shift the stream is a permutation: no image repeats. After it, images are drawn
    # from those not shown yet (while the class has any).
    order = stream_indices(digits.y_test, 10, scenario, 100, 150, seed=2)  # ~18 draws per favoured class
    assert len(np.unique(order[:100])) == 100
    assert not set(order[100:]) & set(order[:100])


def test_make_stream_rejects_a_shift_outside_the_stream(digits) -> None:
    with pytest.raises(ValueError):
        make_stream(digits, SCENARIOS["rotation"], shift_at=20, length=10, seed=0)
