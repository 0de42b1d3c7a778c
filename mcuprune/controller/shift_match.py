"""Recognising a known kind of input corruption in the captured inputs, and its strength.

    identify_shift(model, captured_uint8, source_uint8) -> (ShiftMatch | None, report)

Without labels the captured inputs cannot teach a network what a rotated shirt is. But when the field's
shift is a *known physical corruption* (sensor noise, a camera mounted at an angle) of unknown
strength, the host can estimate the strength from the captured inputs alone and apply the same
corruption to its own labeled training images: labeled data from the shifted domain, as much as it
likes (adapt.py's ``match`` step tunes on it as replay). This module does the recognition.

Every candidate (each family in CORRUPTIONS at each strength, plus "none" and "affine": a pixel gain
and offset, which the ``input`` step corrects on its own) is applied to a sample of training images,
and the candidate's *signature* is compared with the capture's: the per-channel mean and standard
deviation of the first weighted layer's outputs (the network's own edge and blob detectors: noise
raises their spread, a rotation moves energy between orientations), plus the mean and standard deviation
of the pixels over a coarse 7 × 7 grid (where the garment is: a rotation turns it, and tells its
sign). Each element is compared relative to its size under "none". A corruption is taken only when
its distance is below MATCH_RATIO of the best of "none" and "affine": a change of class mix also
moves the signature (a capture of 80 % footwear has another mean image), but no corruption explains
it much better than no corruption does (measured: ratios 0.77–0.96 for class-prior changes against
0.09–0.13 for noise and rotation, bench/drift/README.md).

What this cannot do: recognise a corruption outside CORRUPTIONS, or two at once (noise on top of a
lighting change is explained by neither). The drift demo's noise and rotation scenarios are in the
table, so its unlabeled results for them are what this gives when the field's corruption family is
known and only its strength is not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mcuprune.controller.scenarios import gaussian_noise, rotation
from mcuprune.model.interpreter import run_layer_f32
from mcuprune.model.ir import FloatModel
from mcuprune.quantize import input_floats

# family -> (corrupt(x_uint8, strength, seed), the strengths tried). Strengths: noise sigma in pixel
# units, rotation in degrees counter-clockwise.
CORRUPTIONS: dict[str, tuple[Callable[[np.ndarray, float, int], np.ndarray], tuple[float, ...]]] = {
    "gaussian_noise": (lambda x, s, seed: gaussian_noise(x, s, seed), (5, 10, 15, 20, 25, 30, 40, 50)),
    "rotation": (lambda x, d, seed: rotation(x, d), (-30, -25, -20, -15, -10, -5, 5, 10, 15, 20, 25, 30)),
}
MATCH_RATIO = 0.3
MATCH_SAMPLES = 1000  # training images each candidate is applied to
GRID = 7  # cells per side of the coarse pixel grid
SIGNATURE_FLOOR = 0.05  # added to each element's size under "none", so near-zero elements do not dominate


@dataclass(frozen=True)
class ShiftMatch:
    """A recognised corruption: `family` (a key of CORRUPTIONS) at `strength`."""
    family: str
    strength: float
    distance: float  # of the capture's signature from the corrupted training images'
    baseline: float  # the same for the better of "none" and "affine"

    def apply(self, x_uint8: np.ndarray, seed: int) -> np.ndarray:
        """The corruption applied to uint8 images (N, H, W, C)."""
        return CORRUPTIONS[self.family][0](np.asarray(x_uint8), self.strength, seed)


def signature(model: FloatModel, x_uint8: np.ndarray) -> np.ndarray:
    """The statistics a candidate is compared by (module docstring), as one vector."""
    x = np.asarray(x_uint8)
    parts = []
    first = model.layers[0]
    if first.weights is not None:
        h = run_layer_f32(first, input_floats(x))
        h = h.reshape(len(h), -1, h.shape[-1]).astype(np.float64)
        parts += [h.mean(axis=(0, 1)), h.std(axis=(0, 1))]
    n, height, width = x.shape[:3]
    bh, bw = max(1, height // GRID), max(1, width // GRID)
    cells = (x[:, : bh * (height // bh), : bw * (width // bw)].astype(np.float64).mean(axis=3) / 255.0)
    cells = cells.reshape(n, height // bh, bh, width // bw, bw).mean(axis=(2, 4)).reshape(n, -1)
    parts += [cells.mean(axis=0), cells.std(axis=0)]
    pixels = x.astype(np.int64)
    steps = np.concatenate([np.abs(np.diff(pixels, axis=1)).ravel(), np.abs(np.diff(pixels, axis=2)).ravel()])
    parts += [np.bincount(pixels.ravel() // 16, minlength=16) / pixels.size,
              np.bincount(np.minimum(steps // 8, 15), minlength=16) / steps.size]
    return np.concatenate(parts)


def _affine_inverse(source: np.ndarray, captured: np.ndarray) -> np.ndarray:
    """The training images under the pixel gain and offset that matches their mean and standard
    deviation to the capture's: what the capture would look like after a pure lighting change."""
    s, c = source.astype(np.float64), captured.astype(np.float64)
    gain = c.std() / max(s.std(), 1e-9)
    return np.clip(np.rint(gain * (s - s.mean()) + c.mean()), 0, 255).astype(np.uint8)


def identify_shift(model: FloatModel, captured_uint8: np.ndarray, source_uint8: np.ndarray, seed: int = 0,
                   ratio: float = MATCH_RATIO) -> tuple[ShiftMatch | None, dict]:
    """The corruption in CORRUPTIONS that explains the captured inputs, or None (module docstring);
    and a report with the distances of the best candidates."""
    rng = np.random.default_rng(seed + 17)
    source = np.asarray(source_uint8)
    source = source[rng.permutation(len(source))[: min(MATCH_SAMPLES, len(source))]]
    captured = signature(model, captured_uint8)
    plain = signature(model, source)
    size = np.abs(plain) + SIGNATURE_FLOOR

    def distance(sig: np.ndarray) -> float:
        return float(np.mean(((captured - sig) / size) ** 2))

    baselines = {"none": distance(plain), "affine": distance(signature(model, _affine_inverse(source, captured_uint8)))}
    scored = sorted((distance(signature(model, corrupt(source, strength, seed + 23))), family, float(strength))
                    for family, (corrupt, strengths) in CORRUPTIONS.items() for strength in strengths)
    best, family, strength = scored[0]
    baseline = min(baselines.values())
    match = ShiftMatch(family, strength, best, baseline) if best < ratio * baseline else None
    report = {"recognised": None if match is None else {"family": family, "strength": strength},
              "distance": round(best, 5), "baseline": round(baseline, 5),
              "ratio": round(best / max(baseline, 1e-12), 4), "threshold": ratio,
              "baselines": {k: round(v, 5) for k, v in baselines.items()},
              "candidates": [{"family": f, "strength": s, "distance": round(d, 5)} for d, f, s in scored[:3]]}
    return match, report
