"""Fixed-point requantization, bit-identical to firmware/include/mcup_requant.h.

The TFLite int8 spec expresses a real rescale factor M (e.g. s_in * s_w / s_out) as a Q31
multiplier and a power-of-two shift; the accumulator is scaled with gemmlowp's "double rounding":
the high multiply rounds ties toward +infinity, the power-of-two divide rounds ties away from zero.
Everything here is vectorised over int64 so a whole layer's accumulators requantize in one call.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Return (multiplier, shift) with real ~= multiplier * 2^(shift - 31), multiplier in [2^30, 2^31).

    >>> quantize_multiplier(0.5)
    (1073741824, 0)
    >>> quantize_multiplier(0.0)
    (0, 0)
    """
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"rescale factor must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)  # real = fraction * 2^shift, fraction in [0.5, 1)
    q = math.floor(fraction * (1 << 31) + 0.5)  # round half away from zero (positive)
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:  # too small to represent: flush to zero like TFLite
        return 0, 0
    if shift > 30:
        raise ValueError(f"rescale factor {real} is too large for int32 requantization")
    return int(q), int(shift)


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel version of quantize_multiplier; returns two int32 arrays."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, dtype=np.float64).ravel()]
    mult = np.array([m for m, _ in pairs], dtype=np.int32)
    shift = np.array([s for _, s in pairs], dtype=np.int32)
    return mult, shift


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values into the int32 range (kept as int64)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def doubling_high_mult(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """round(a * b / 2^31), ties toward +infinity, for int32 a, b; saturates INT32_MIN * INT32_MIN."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))  # truncate toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """round_half_away(x / 2^exponent) for int32 x and exponent in [0, 31]."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Apply mcup_requantize() element-wise; multiplier/shift broadcast against acc (int64 out)."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = wrap_int32(np.asarray(acc, dtype=np.int64) << left)
    return rounding_divide_by_pot(doubling_high_mult(scaled, multiplier), right)


def requantize_s8(
    acc: np.ndarray,
    multiplier: np.ndarray,
    shift: np.ndarray,
    output_offset: int,
    act_min: int,
    act_max: int,
) -> np.ndarray:
    """Requantize, add the output zero point and clamp: mcup_requantize_s8()."""
    out = requantize(acc, multiplier, shift) + output_offset
    return np.clip(out, act_min, act_max).astype(np.int8)
