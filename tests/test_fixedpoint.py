"""Requantization: numpy and C against an independent exact-integer oracle."""

from __future__ import annotations

import ctypes
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from host_c import host_build
from hypothesis import given
from hypothesis import strategies as st

from mcuprune.model.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    count_leading_zeros32,
    doubling_high_mult,
    exp_on_negative_values,
    get_reciprocal,
    one_over_one_plus_x_for_x_in_0_1,
    quantize_multiplier,
    requantize,
    requantize_s8,
    rounding_divide_by_pot,
    rounding_half_sum,
    saturating_rounding_multiply_by_pot,
)
from mcuprune.resources import INCLUDE_DIR

REPO = Path(__file__).resolve().parent.parent


def round_half_away(q: Fraction) -> int:
    """Exact rounding to nearest, ties away from zero."""
    sign = -1 if q < 0 else 1
    a = abs(q)
    whole = a.numerator // a.denominator
    return sign * (whole + (1 if a - whole >= Fraction(1, 2) else 0))


def round_half_up(q: Fraction) -> int:
    """Exact rounding to nearest, ties toward +infinity (gemmlowp's high multiply)."""
    return math.floor(q + Fraction(1, 2))


def oracle_requantize(acc: int, multiplier: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    x = ((acc << left) + 2**31) % 2**32 - 2**31  # int32 wrap
    if x == multiplier == INT32_MIN:
        high = INT32_MAX
    else:
        high = round_half_up(Fraction(x * multiplier, 2**31))
    return round_half_away(Fraction(high, 2**right))


def test_rounding_ties_go_away_from_zero() -> None:
    # 5/2 = 2.5 -> 3, -5/2 -> -3, 3/2 -> 2, -3/2 -> -2, 7/4 = 1.75 -> 2, -7/4 -> -2, -5/4 -> -1
    x = np.array([5, -5, 3, -3, 7, -7, -5])
    e = np.array([1, 1, 1, 1, 2, 2, 2])
    assert rounding_divide_by_pot(x, e).tolist() == [3, -3, 2, -2, 2, -2, -1]


def test_doubling_high_mult_ties_and_saturation() -> None:
    half = 1 << 30  # a * half / 2^31 = a / 2: ties for odd a, which go toward +infinity
    assert doubling_high_mult(np.array([3, -3, 1, -1, -5]), half).tolist() == [2, -1, 1, 0, -2]
    assert doubling_high_mult(np.array([-7]), 1 << 29).tolist() == [-2]  # -1.75 is no tie
    assert doubling_high_mult(INT32_MIN, INT32_MIN).item() == INT32_MAX


def test_requantize_negative_accumulators_are_symmetric() -> None:
    m, s = quantize_multiplier(0.3)
    acc = np.arange(-1000, 1001)
    out = requantize(acc, m, s)
    assert (out == -requantize(-acc, m, s)).all()


def test_requantize_s8_saturates_and_clamps() -> None:
    m, s = quantize_multiplier(1.0)
    out = requantize_s8(np.array([-1000, -129, -128, 0, 127, 128, 1000]), m, s, 0, -128, 127)
    assert out.tolist() == [-128, -128, -128, 0, 127, 127, 127]
    relu = requantize_s8(np.array([-50, -5, 0, 5]), m, s, -10, -10, 127)  # ReLU: clamp at zero point
    assert relu.tolist() == [-10, -10, -10, -5]


@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False))
def test_quantize_multiplier_represents_the_scale(real: float) -> None:
    m, s = quantize_multiplier(real)
    assert 2**30 <= m < 2**31
    assert abs(m * 2.0 ** (s - 31) - real) <= real * 2**-30


def test_quantize_multiplier_rejects_bad_scales() -> None:
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError):
            quantize_multiplier(bad)
    assert quantize_multiplier(1e-12) == (0, 0)  # below 2^-31: flushed like TFLite


@given(
    st.integers(INT32_MIN, INT32_MAX),
    st.integers(2**30, 2**31 - 1),
    st.integers(-31, 7),
)
def test_numpy_matches_exact_oracle(acc: int, multiplier: int, shift: int) -> None:
    assert requantize(np.array([acc]), multiplier, shift)[0] == oracle_requantize(acc, multiplier, shift)


def int32_samples(seed: int, n: int = 3000) -> np.ndarray:
    """The int32 edge values and seeded random ones."""
    edges = [INT32_MIN, INT32_MIN + 1, -(2**30), -(2**30) - 1, -3, -2, -1, 0, 1, 2, 3, 2**30, 2**30 + 1, INT32_MAX]
    return np.concatenate([edges, np.random.default_rng(seed).integers(INT32_MIN, INT32_MAX, n, endpoint=True)])


def test_high_mult_and_divide_match_the_oracle_on_arrays() -> None:
    """The vectorised shortcuts (one shift for the high multiply, a nudge for the divide) against the
    exact definitions, with per-element exponents mixing 0 (the general path) and > 0."""
    a, b = int32_samples(1), int32_samples(2)[::-1]
    expected = [INT32_MAX if x == y == INT32_MIN else round_half_up(Fraction(int(x) * int(y), 2**31))
                for x, y in zip(a, b, strict=True)]
    assert doubling_high_mult(a, b).tolist() == expected
    exponents = np.random.default_rng(3).integers(0, 32, a.size)
    for e in (exponents, np.maximum(exponents, 1), 1, 31):
        es = np.broadcast_to(e, a.shape)
        assert rounding_divide_by_pot(a, e).tolist() == [round_half_away(Fraction(int(x), 2 ** int(k)))
                                                          for x, k in zip(a, es, strict=True)]


def test_gemmlowp_helpers_match_their_definitions() -> None:
    x = int32_samples(4)
    for exponent in (-31, -5, -1, 0, 1, 5, 30):
        want = [round_half_away(Fraction(int(v), 2**-exponent)) if exponent < 0
                else min(max(int(v) * 2**exponent, INT32_MIN), INT32_MAX) for v in x]
        assert saturating_rounding_multiply_by_pot(x, exponent).tolist() == want
    y = int32_samples(5)
    assert rounding_half_sum(x, y).tolist() == [round_half_away(Fraction(int(u) + int(v), 2))
                                                for u, v in zip(x, y, strict=True)]
    assert count_leading_zeros32(x).tolist() == [32 - (int(v) & 0xFFFFFFFF).bit_length() for v in x]


def test_softmax_fixed_point_functions_approximate_exp_and_reciprocal() -> None:
    """exp on Q5.26 arguments and 1/x on Q12.19 values, against float64 (TFLM bit-exactness of the
    whole softmax is in tests/test_reference_tflm.py)."""
    rng = np.random.default_rng(6)
    arg = np.concatenate([[0, -1, -(2**26), -(31 * 2**26)], -rng.integers(0, 32 * 2**26, 2000)])
    got = exp_on_negative_values(arg, 5) / 2.0**31
    np.testing.assert_allclose(got, np.exp(arg / 2.0**26), rtol=0, atol=3e-7)  # the Q0.31 polynomial: ~2e-7
    a = rng.integers(0, 2**31, 2000)
    np.testing.assert_allclose(one_over_one_plus_x_for_x_in_0_1(a) / 2.0**31, 1 / (1 + a / 2.0**31), atol=5e-9)
    total = rng.integers(2**19, 2**31 - 1, 2000)  # sums of exps in Q12.19: 1 .. 4096
    reciprocal, bits_over_unit = get_reciprocal(total, 12)
    np.testing.assert_allclose(reciprocal * 2.0 ** -(31 + bits_over_unit), 2.0**19 / total, rtol=1e-8)


@pytest.fixture(scope="module")
def c_requant(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    source = ('#include "mcup_requant.h"\n'
              "int32_t requant(int32_t a, int32_t m, int32_t s) { return mcup_requantize(a, m, s); }\n")
    lib = host_build(tmp_path_factory.mktemp("requant") / "librequant.so", [], [INCLUDE_DIR], shared=True, text=source)
    dll = ctypes.CDLL(str(lib))
    dll.requant.restype = ctypes.c_int32
    dll.requant.argtypes = [ctypes.c_int32] * 3
    return dll


def test_c_matches_numpy_on_edge_and_random_values(c_requant: ctypes.CDLL) -> None:
    rng = np.random.default_rng(0)
    accs = np.concatenate([[0, 1, -1, INT32_MAX, INT32_MIN, 2**20 + 1, -(2**20) - 1],
                           rng.integers(INT32_MIN, INT32_MAX, 3000)])
    for shift in (-31, -12, -9, -1, 0, 1, 3):
        for m in (2**30, 2**31 - 1, 1518500250):
            expected = requantize(accs, m, shift)
            got = [c_requant.requant(int(a), m, shift) for a in accs]
            assert got == expected.tolist(), (m, shift)


@pytest.fixture(scope="module")
def c_softmax_math(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The fixed-point helpers mcup_softmax_s8 is built from (mcup_requant.h), callable from Python."""
    source = ('#include "mcup_requant.h"\n'
              "int32_t exp_neg(int32_t a, int32_t bits) { return mcup_exp_on_negative_values(a, bits); }\n"
              "int32_t recip(int32_t x, int32_t digits, int32_t *over) { return mcup_reciprocal(x, digits, over); }\n"
              "int32_t half_sum(int32_t a, int32_t b) { return mcup_rounding_half_sum(a, b); }\n"
              "int32_t mul_pot(int32_t x, int32_t e) { return mcup_saturating_rounding_mul_pot(x, e); }\n")
    lib = host_build(tmp_path_factory.mktemp("softmax") / "libsoftmax.so", [], [INCLUDE_DIR], shared=True, text=source)
    dll = ctypes.CDLL(str(lib))
    for name, n in (("exp_neg", 2), ("half_sum", 2), ("mul_pot", 2)):
        getattr(dll, name).restype = ctypes.c_int32
        getattr(dll, name).argtypes = [ctypes.c_int32] * n
    dll.recip.restype = ctypes.c_int32
    dll.recip.argtypes = [ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)]
    return dll


def test_c_softmax_helpers_match_numpy(c_softmax_math: ctypes.CDLL) -> None:
    """exp on negative values (Q5.26 in, Q0.31 out), the reciprocal of a Q12.19 sum, and the small
    helpers, on edge and random values: C and numpy bit for bit."""
    rng = np.random.default_rng(0)
    negatives = np.concatenate([[0, -1, -(2**26), -(2**31) + 1, INT32_MIN], -rng.integers(0, 2**31, 3000)])
    got = [c_softmax_math.exp_neg(int(a), 5) for a in negatives]
    assert got == exp_on_negative_values(negatives, 5).tolist()
    sums = np.concatenate([[1, 2**19, 2**31 - 1], rng.integers(1, 2**31 - 1, 3000)])
    expected, expected_over = get_reciprocal(sums, 12)
    over = ctypes.c_int32()
    for x, want, want_over in zip(sums, expected, expected_over, strict=True):
        assert c_softmax_math.recip(int(x), 12, ctypes.byref(over)) == want and over.value == want_over
    a, b = rng.integers(INT32_MIN, INT32_MAX, (2, 3000))
    assert [c_softmax_math.half_sum(int(x), int(y)) for x, y in zip(a, b, strict=True)] == \
        rounding_half_sum(a, b).tolist()
    for exponent in (-5, -1, 0, 1, 2, 7):
        assert [c_softmax_math.mul_pot(int(x), exponent) for x in a] == \
            saturating_rounding_multiply_by_pot(a, exponent).tolist()
