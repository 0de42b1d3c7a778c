/*
 * mcup_requant.h - the one requantization routine every kernel ends in.
 *
 * Same arithmetic as the TFLite reference kernels (gemmlowp "double rounding"):
 *   1. x <<= max(shift, 0)                      (wraps like int32, never UB)
 *   2. x = round(x * multiplier / 2^31), ties toward +infinity, saturating the one overflow case
 *   3. x = round_half_away(x / 2^max(-shift, 0))
 * mcuprune/fixedpoint.py implements the same steps in numpy; tests pin both to each other.
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

/* Requantize, add the output zero point and clamp: the common tail of every kernel. */
static inline int8_t mcup_requantize_s8(int32_t acc, int32_t multiplier, int32_t shift,
                                        int32_t output_offset, int32_t act_min, int32_t act_max)
{
    int32_t v = mcup_requantize(acc, multiplier, shift) + output_offset;
    v = v < act_min ? act_min : v;
    v = v > act_max ? act_max : v;
    return (int8_t)v;
}

#endif /* MCUP_REQUANT_H */
