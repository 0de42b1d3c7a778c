/*
 * mcup_requant.h - the one requantization routine every kernel ends in.
 *
 * Same arithmetic as the TFLite reference kernels (gemmlowp "double rounding"):
 *   1. x <<= max(shift, 0)                      (wraps like int32, never UB)
 *   2. x = round(x * multiplier / 2^31), ties toward +infinity, saturating the one overflow case
 *   3. x = round_half_away(x / 2^max(-shift, 0))
 * mcuprune/model/fixedpoint.py implements the same steps in numpy; tests pin both to each other.
 *
 * The second half holds the fixed-point arithmetic of the int8 SOFTMAX (exp and reciprocal on
 * raw int32 values with a fixed number of integer bits), the twins of the gemmlowp-style
 * functions at the end of fixedpoint.py. Every function here is free of undefined behaviour for
 * any int32 arguments in the documented ranges: overflowing sums wrap (computed unsigned).
 */
#ifndef MCUP_REQUANT_H
#define MCUP_REQUANT_H

#include <stdint.h>

static inline int32_t mcup_doubling_high_mult(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX; /* the only product that overflows */
    }
    /* gemmlowp adds a sign-dependent nudge and truncates toward zero; that equals adding 2^30 and
     * shifting arithmetically (floor), which compiles to SMLAL + shifts instead of a 64-bit divide. */
    int64_t ab = (int64_t)a * (int64_t)b + (1LL << 30);
    return (int32_t)(ab >> 31);
}

static inline int32_t mcup_rounding_divide_by_pot(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)((1UL << exponent) - 1U);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

static inline int32_t mcup_requantize(int32_t acc, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    const int32_t scaled = (int32_t)((uint32_t)acc << left);
    return mcup_rounding_divide_by_pot(mcup_doubling_high_mult(scaled, multiplier), right);
}

/*
 * Requantize, add the output zero point and clamp: the common tail of every kernel.
 * The clamp comes first, against the limits moved by the zero point: mcup_requantize can return
 * values up to INT32_MAX (a multiplier near 2^31 with a left shift), where adding the zero point
 * would overflow. clamp(v + z, lo, hi) == clamp(v, lo - z, hi - z) + z, so the result is the
 * exact one the reference computes in int64 (fixedpoint.requantize_s8); lo - z and hi - z lie
 * in [-255, 255].
 */
static inline int8_t mcup_requantize_s8(int32_t acc, int32_t multiplier, int32_t shift,
                                        int32_t output_offset, int32_t act_min, int32_t act_max)
{
    int32_t v = mcup_requantize(acc, multiplier, shift);
    const int32_t lo = act_min - output_offset;
    const int32_t hi = act_max - output_offset;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    return (int8_t)(v + output_offset);
}

/* --- fixed-point arithmetic of the int8 softmax -------------------------------------------------
 *
 * A raw int32 with k integer bits stands for raw / 2^(31 - k) ("Qk.(31-k)"). A product of two raws
 * is mcup_doubling_high_mult (the integer bits add up); sums wrap like int32 (mcup_wrap_add).
 */

/* a + b and a - b modulo 2^32 (int32 overflow would be undefined). */
static inline int32_t mcup_wrap_add(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a + (uint32_t)b);
}

static inline int32_t mcup_wrap_sub(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a - (uint32_t)b);
}

/* x * 2^exponent for exponent in [-31, 31]: saturating for exponent > 0, rounding (half away
 * from zero) for exponent < 0. */
static inline int32_t mcup_saturating_rounding_mul_pot(int32_t x, int32_t exponent)
{
    if (exponent < 0) {
        return mcup_rounding_divide_by_pot(x, -exponent);
    }
    const int32_t threshold = (int32_t)((1UL << (31 - exponent)) - 1U); /* largest |x| that fits */
    if (x > threshold) {
        return INT32_MAX;
    }
    if (x < -threshold) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << exponent);
}

/* (a + b) / 2 rounded to nearest, ties away from zero (the sum taken in 64 bits). */
static inline int32_t mcup_rounding_half_sum(int32_t a, int32_t b)
{
    const int64_t sum = (int64_t)a + (int64_t)b;
    return (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
}

/* exp(a) for a in [-1/4, 0), Q0.31 in and out: a 4th-order Taylor polynomial around -1/8. */
static inline int32_t mcup_exp_on_interval_minus_quarter_to_zero(int32_t a)
{
    const int32_t exp_minus_eighth = 1895147668; /* exp(-1/8), Q0.31 */
    const int32_t one_third = 715827883;         /* 1/3, Q0.31 */
    const int32_t x = mcup_wrap_add(a, 1 << 28); /* a + 1/8 */
    const int32_t x2 = mcup_doubling_high_mult(x, x);
    const int32_t x3 = mcup_doubling_high_mult(x2, x);
    const int32_t x4_over_4 = mcup_rounding_divide_by_pot(mcup_doubling_high_mult(x2, x2), 2);
    const int32_t poly = mcup_rounding_divide_by_pot(
        mcup_wrap_add(mcup_doubling_high_mult(mcup_wrap_add(x4_over_4, x3), one_third), x2), 1);
    return mcup_wrap_add(exp_minus_eighth,
                         mcup_doubling_high_mult(exp_minus_eighth, mcup_wrap_add(x, poly)));
}

/*
 * exp(a) for a raw a <= 0 with `integer_bits` integer bits (1..5, the softmax uses 5); the result
 * is Q0.31. a splits into a remainder in [-1/4, 0) (the polynomial) and whole quarters, applied
 * one set bit at a time as products with exp(-2^k), k = -2 .. integer_bits - 1. exp(0) = 1 does
 * not fit Q0.31: a == 0 gives INT32_MAX.
 */
static inline int32_t mcup_exp_on_negative_values(int32_t a, int32_t integer_bits)
{
    static const int32_t exp_of_minus_pot[7] = {
        /* exp(-2^k) in Q0.31 for k = -2 .. 4 */
        1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242,
    };
    const int32_t frac_bits = 31 - integer_bits;
    const int32_t one_quarter = 1 << (frac_bits - 2);
    const int32_t a_mod = mcup_wrap_sub(a & (one_quarter - 1), one_quarter); /* [-1/4, 0) */
    int32_t result = mcup_exp_on_interval_minus_quarter_to_zero(
        mcup_saturating_rounding_mul_pot(a_mod, integer_bits));
    const uint32_t remainder = (uint32_t)mcup_wrap_sub(a_mod, a); /* whole quarters, >= 0 */
    for (int32_t k = -2; k < integer_bits && k <= 4; k++) {
        if ((remainder & (1UL << (frac_bits + k))) != 0) {
            result = mcup_doubling_high_mult(result, exp_of_minus_pot[k + 2]);
        }
    }
    return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + a) for a in [0, 1), Q0.31 in and out: three Newton-Raphson steps in Q2.29. */
static inline int32_t mcup_one_over_one_plus_x_for_x_in_0_1(int32_t a)
{
    const int32_t half_denominator = mcup_rounding_half_sum(a, INT32_MAX); /* (1 + a) / 2 */
    /* 48/17 - 32/17 * d, Q2.29: the starting point of the iteration */
    int32_t x = mcup_wrap_add(1515870810, mcup_doubling_high_mult(half_denominator, -1010580540));
    for (int32_t i = 0; i < 3; i++) {
        const int32_t d_x = mcup_doubling_high_mult(half_denominator, x);
        const int32_t one_minus = mcup_wrap_sub(1 << 29, d_x); /* 1 - d * x, Q2.29 */
        const int32_t step = mcup_doubling_high_mult(x, one_minus);
        x = mcup_wrap_add(x, mcup_saturating_rounding_mul_pot(step, 2));
    }
    return mcup_saturating_rounding_mul_pot(x, 1); /* 1 / (2d) in Q2.29 is 1 / (1 + a) in Q0.31 */
}

/*
 * 1 / x for a raw x > 0 with `x_integer_digits` integer bits: returns the Q0.31 raw r and sets
 * *bits_over_unit so that 1 / x = r * 2^-(31 + *bits_over_unit). x is normalised into [1, 2) by
 * its leading zeros.
 */
static inline int32_t mcup_reciprocal(int32_t x, int32_t x_integer_digits, int32_t *bits_over_unit)
{
    const int32_t headroom_plus_one = x != 0 ? __builtin_clz((uint32_t)x) : 32;
    *bits_over_unit = x_integer_digits - headroom_plus_one;
    const uint32_t shifted = headroom_plus_one < 32 ? (uint32_t)x << headroom_plus_one : 0;
    return mcup_one_over_one_plus_x_for_x_in_0_1((int32_t)(shifted - 0x80000000u));
}

#endif /* MCUP_REQUANT_H */
