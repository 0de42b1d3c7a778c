"""Input-drift scenarios: pure, seeded functions on uint8 image batches (N, H, W, C), and streams.

* ``brightness_contrast``: x' = clip(round(contrast * x + brightness), 0, 255) — contrast scales
  about black (0), brightness adds a constant; (0, 1) is the identity.
* ``gaussian_noise``: x' = clip(round(x + sigma * N(0, 1)), 0, 255), independent per pixel;
  sigma = 0 is the identity.
* ``rotation``: every image rotated by `degrees` (counter-clockwise) about its centre, bilinear,
  zero (black) fill, same size (scipy.ndimage.rotate); 0 (or 360) is the identity.
* ``class_prior``: not a transform but a resampling — after the shift the labels follow a prior
  that gives the `classes` together the probability `weight` (split evenly) and the other classes
  the rest (split evenly); the images themselves are untouched.

``make_stream`` builds a deployment stream: `length` images drawn without replacement from the
test split (a fresh permutation when it runs out), clean before `shift_at`, under the scenario from
`shift_at` on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import rotate

from mcuprune.train.datasets import Dataset

KINDS = ("none", "brightness_contrast", "gaussian_noise", "rotation", "class_prior")


def _check_images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"scenarios take uint8 images (N, H, W, C), got {x.dtype} {x.shape}")
    return x


def brightness_contrast(x: np.ndarray, brightness: float = 0.0, contrast: float = 1.0) -> np.ndarray:
    """clip(round(contrast * x + brightness), 0, 255) (brightness in pixel units)."""
    x = _check_images(x)
    if brightness == 0.0 and contrast == 1.0:
        return x.copy()
    return np.clip(np.rint(contrast * x.astype(np.float64) + brightness), 0, 255).astype(np.uint8)


def gaussian_noise(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Add N(0, sigma^2) per pixel (pixel units), round and clip; seeded."""
    x = _check_images(x)
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x.copy()
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=x.shape)
    return np.clip(np.rint(x + noise), 0, 255).astype(np.uint8)


def rotation(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every image by `degrees` about its centre: bilinear, black fill, same size."""
    x = _check_images(x)
    out = rotate(x.astype(np.float64), float(degrees), axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def class_prior(num_classes: int, classes: tuple[int, ...], weight: float) -> np.ndarray:
    """The shifted label distribution: `weight` spread over `classes`, 1 - weight over the others."""
    classes = tuple(sorted(set(int(c) for c in classes)))
    if not classes or min(classes) < 0 or max(classes) >= num_classes or len(classes) == num_classes:
        raise ValueError(f"favoured classes {classes} must be a non-empty proper subset of 0..{num_classes - 1}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"prior weight must lie in [0, 1], got {weight}")
    p = np.full(num_classes, (1.0 - weight) / (num_classes - len(classes)))
    p[list(classes)] = weight / len(classes)
    return p


@dataclass(frozen=True)
class Scenario:
    """A named drift: `kind` is one of KINDS, `params` its keyword arguments (JSON-able)."""
    name: str
    kind: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scenario kind '{self.kind}': choose one of {', '.join(KINDS)}")

    def transform(self, x: np.ndarray, seed: int) -> np.ndarray:
        """The image transform of this scenario (identity for 'none' and 'class_prior')."""
        if self.kind == "brightness_contrast":
            return brightness_contrast(x, **self.params)
        if self.kind == "gaussian_noise":
            return gaussian_noise(x, seed=seed, **self.params)
        if self.kind == "rotation":
            return rotation(x, **self.params)
        return _check_images(x).copy()

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "params": dict(self.params)}


# The drift demo's scenarios. Severities are moderate: each costs the Fashion-MNIST CNN accuracy
# (bench/drift/README.md), except the class-prior change, which changes what is seen, not how.
SCENARIOS = {
    s.name: s
    for s in (
        Scenario("brightness_contrast", "brightness_contrast", {"brightness": 30.0, "contrast": 0.8}),
        Scenario("gaussian_noise", "gaussian_noise", {"sigma": 25.0}),
        Scenario("rotation", "rotation", {"degrees": 15.0}),
        Scenario("class_prior", "class_prior", {"classes": (5, 7, 9), "weight": 0.8}),
        # Half the stream is shirts, the class the CNN confuses most (with T-shirts, pullovers, coats).
        # Beside the footwear change above, whose confusions lie among three equally likely classes,
        # so that even the true prior gains nothing there (bench/drift/README.md).
        Scenario("class_prior_shirts", "class_prior", {"classes": (6,), "weight": 0.5}),
    )
}


def _draw_by_class(y: np.ndarray, labels: np.ndarray, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each wanted label, an index of that class: the `available` ones first (in random order,
    without replacement), then, if the class needs more, fresh permutations of all its images."""
    out = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        want = np.flatnonzero(labels == c)
        everything = np.flatnonzero(y == c)
        if len(everything) == 0:
            raise ValueError(f"class {c} has no images to draw from")
        picks = [rng.permutation(available[y[available] == c])]
        while sum(len(p) for p in picks) < len(want):
            picks.append(rng.permutation(everything))
        out[want] = np.concatenate(picks)[: len(want)]
    return out


def stream_indices(y: np.ndarray, num_classes: int, scenario: Scenario, shift_at: int, length: int,
                   seed: int) -> np.ndarray:
    """Indices into (x, y) for make_stream: a seeded permutation, resampled by class after the shift
    when the scenario is a class-prior change."""
    if not 0 <= shift_at <= length:
        raise ValueError(f"shift_at must lie in 0..length ({length}), got {shift_at}")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(y)) for _ in range(-(-length // len(y)))])[:length]
    if scenario.kind == "class_prior":
        prior = class_prior(num_classes, **scenario.params)
        labels = rng.choice(num_classes, size=length - shift_at, p=prior)
        unused = np.setdiff1d(np.arange(len(y)), order[:shift_at])
        order[shift_at:] = _draw_by_class(y, labels, unused, rng)
    return order


def make_stream(dataset: Dataset, scenario: Scenario, shift_at: int, length: int,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stream of `length` test images: (x_uint8 (length, H, W, C), y (length,), shifted_mask (length,)).

    Samples shift_at.. are under the scenario (their mask is True); the stream is a seeded
    permutation of the test split, so no image repeats within the first len(test) samples."""
    order = stream_indices(dataset.y_test, dataset.num_classes, scenario, shift_at, length, seed)
    x = dataset.x_test[order].copy()
    y = dataset.y_test[order].copy()
    mask = np.arange(length) >= shift_at
    if mask.any():
        x[mask] = scenario.transform(x[mask], seed=seed + 1)
    return x, y, mask
