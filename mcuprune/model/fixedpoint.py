"""Fixed-point requantization, bit-identical to firmware/include/mcup_requant.h.

The TFLite int8 spec expresses a real rescale factor M (e.g. s_in * s_w / s_out) as a Q31
multiplier and a power-of-two shift; the accumulator is scaled with gemmlowp's "double rounding":
the high multiply rounds ties toward +infinity, the power-of-two divide rounds ties away from zero.
Everything here is vectorised over int64 so a whole layer's accumulators requantize in one call.

The same two roundings are TFLite Micro's (its wheel is built without TFLITE_SINGLE_ROUNDING), so
``requantize`` is also its MultiplyByQuantizedMultiplier: with shift <= 0 it is the
"SmallerThanOneExp" form ADD uses, with shift >= 0 the "GreaterThanOne" form SOFTMAX uses. The
gemmlowp primitives at the end (exp, reciprocal) exist for SOFTMAX's fixed-point path; the
integers they start from are derived in int8_params.py.
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


def bias_limit(terms: int, weight_bits: int = 8) -> int:
    """The largest |bias| of an output that sums `terms` products (x - zp) * w so that the kernels'
    int32 accumulator cannot overflow in any order of summation; -1 if no bias can ensure it.

    |x - zp| <= 255 and |w| <= 128 (int4: 8), and a kernel may sum x * w and zp * w apart, so each
    term adds at most 2^15 (int4: 2^11). The C twin is mcup_bind_bias_limit (bind_check.c), which
    refuses a blob whose biases exceed it.

    >>> bias_limit(0)
    2147483647
    >>> bias_limit(65536)
    -1
    """
    limit = INT32_MAX - terms * (1 << (11 if weight_bits == 4 else 15))
    return -1 if limit < 0 else limit


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
    """round(a * b / 2^31), ties toward +infinity, for int32 a, b; saturates INT32_MIN * INT32_MIN.

    gemmlowp nudges the product by +2^30 (or 1 - 2^30 when negative) and truncates toward zero;
    for either sign that equals ``(a * b + 2^30) >> 31`` (an arithmetic shift floors), which is one
    pass instead of several. The only result above INT32_MAX is 2^31, from INT32_MIN * INT32_MIN,
    so the saturation is a minimum.
    """
    ab = np.asarray(a, dtype=np.int64) * np.asarray(b, dtype=np.int64)
    return np.minimum((ab + (1 << 30)) >> 31, INT32_MAX)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """round_half_away(x / 2^exponent) for int32 x and exponent in [0, 31]."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    if exponent.size and exponent.min() > 0:
        # floor((x + 2^(e-1) - [x < 0]) / 2^e): the -1 only moves exact negative ties, away from zero
        return (x + ((np.int64(1) << (exponent - 1)) - (x < 0))) >> exponent
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Apply mcup_requantize() element-wise; multiplier/shift broadcast against acc (int64 out)."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    acc = np.asarray(acc, dtype=np.int64)
    scaled = wrap_int32(acc << left if left.any() else acc)
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


# --- gemmlowp fixed-point arithmetic (TFLite's int8 SOFTMAX) -------------------------------------
#
# A raw int32 with k integer bits holds value = raw / 2^(31 - k) ("Qk.(31-k)"). The product of two
# raws is doubling_high_mult (integer bits add); plain sums wrap like int32. These are the building
# blocks of the softmax's exp and reciprocal, vectorised like the requantization above.


def _trunc_div(num: np.ndarray, den: int) -> np.ndarray:
    """C integer division (quotient truncated toward zero) by a positive constant."""
    q = np.abs(num) // den
    return np.where(num < 0, -q, q)


def saturating_rounding_multiply_by_pot(x: np.ndarray, exponent: int) -> np.ndarray:
    """x * 2^exponent: a saturating left shift for exponent > 0, rounding_divide_by_pot below zero."""
    x = np.asarray(x, dtype=np.int64)
    if exponent == 0:
        return x
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1  # the largest |x| whose shift still fits int32
    out = np.where(x > threshold, INT32_MAX, x << exponent)
    return np.where(x < -threshold, INT32_MIN, out)


def rounding_half_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a + b) / 2 rounded to nearest, ties away from zero, on int32 values (the sum is exact in int64)."""
    s = np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64)
    return _trunc_div(s + np.where(s >= 0, 1, -1), 2)


def count_leading_zeros32(x: np.ndarray) -> np.ndarray:
    """Leading zero bits of each value seen as a uint32 (32 for zero)."""
    u = np.asarray(x, dtype=np.int64) & 0xFFFFFFFF
    _, bit_length = np.frexp(u.astype(np.float64))  # exact: u < 2^32 is a float64 integer
    return np.where(u == 0, 32, 32 - bit_length).astype(np.int64)


# exp(-2^k) in Q0.31 for k = -2 .. 4: the factors for each whole quarter bit of a negative argument.
_EXP_OF_MINUS_POT = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535),
                     (3, 720401), (4, 242))


def _exp_on_interval_minus_quarter_to_zero(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: a 4th-order Taylor polynomial around -1/8."""
    mul = doubling_high_mult
    exp_minus_eighth = 1895147668  # exp(-1/8) in Q0.31
    one_third = 715827883  # 1/3 in Q0.31
    x = wrap_int32(a + (1 << 28))  # a + 1/8
    x2 = mul(x, x)
    x3 = mul(x2, x)
    x4_over_4 = rounding_divide_by_pot(mul(x2, x2), 2)
    poly = rounding_divide_by_pot(wrap_int32(mul(wrap_int32(x4_over_4 + x3), one_third) + x2), 1)
    return wrap_int32(exp_minus_eighth + mul(exp_minus_eighth, wrap_int32(x + poly)))


def exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """exp(a) for raw a <= 0 with `integer_bits` integer bits; the result is Q0.31.

    The argument splits into a remainder in [-1/4, 0) (the polynomial) and a whole number of
    quarters, applied one set bit at a time as a product with exp(-2^k). exp(0) = 1 does not fit
    Q0.31, so a == 0 gives the largest raw value, as gemmlowp does.
    """
    a = np.asarray(a, dtype=np.int64)
    frac_bits = 31 - integer_bits
    one_quarter = 1 << (frac_bits - 2)
    a_mod = wrap_int32((a & (one_quarter - 1)) - one_quarter)  # in [-1/4, 0)
    result = _exp_on_interval_minus_quarter_to_zero(saturating_rounding_multiply_by_pot(a_mod, integer_bits))
    remainder = wrap_int32(a_mod - a)  # the whole quarters, as a non-negative raw
    for k, exp_minus_two_pow_k in _EXP_OF_MINUS_POT:
        if integer_bits > k:
            bit = np.int64(1) << (frac_bits + k)
            result = np.where((remainder & bit) != 0, doubling_high_mult(result, exp_minus_two_pow_k), result)
    if integer_bits > 5:  # below -32 the true value underflows Q0.31
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a: np.ndarray) -> np.ndarray:
    """1 / (1 + a) for a in [0, 1), Q0.31 in and out: three Newton-Raphson steps in Q2.29."""
    mul = doubling_high_mult
    half_denominator = rounding_half_sum(a, INT32_MAX)  # (1 + a) / 2 in Q0.31
    x = wrap_int32(1515870810 + mul(half_denominator, -1010580540))  # 48/17 - 32/17 * d, Q2.29
    for _ in range(3):
        one_minus = wrap_int32((1 << 29) - mul(half_denominator, x))  # 1 - d * x, Q2.29
        x = wrap_int32(x + saturating_rounding_multiply_by_pot(mul(x, one_minus), 2))
    return saturating_rounding_multiply_by_pot(x, 1)  # 1/(2d) in Q2.29 -> 1/(1+a) in Q0.31


def get_reciprocal(x: np.ndarray, x_integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """1/x for positive raw x with `x_integer_digits` integer bits, as (Q0.31 raw, bits over unit).

    x is normalised into [1, 2) by its leading zeros, so 1/x = raw * 2^-(31 + bits_over_unit)
    with bits_over_unit = x_integer_digits - leading zeros.
    """
    x = np.asarray(x, dtype=np.int64)
    headroom_plus_one = count_leading_zeros32(x)
    bits_over_unit = x_integer_digits - headroom_plus_one
    shifted_minus_one = wrap_int32((((x & 0xFFFFFFFF) << headroom_plus_one) - (1 << 31)) & 0xFFFFFFFF)
    return one_over_one_plus_x_for_x_in_0_1(shifted_minus_one), bits_over_unit
