/*
 * softmax_s8.c - softmax int8 kernel (plain C; no DSP twin, see bench/kernels/README.md).
 * Parameters: see mcup_softmax_params in mcup_nn.h. The fixed-point exp and reciprocal are in
 * mcup_requant.h (twins of mcuprune/model/fixedpoint.py); mcuprune/model/reference.py
 * softmax_s8 is the same computation in numpy.
 */
#include "mcup_nn.h"
#include "mcup_requant.h"

#define SOFTMAX_INPUT_INTEGER_BITS 5 /* the rescaled difference x - max(x) is Q5.26 */
#define SOFTMAX_SUM_INTEGER_BITS 12  /* the sum of exponentials is Q12.19 */

/* exp(d) in Q0.31 of a difference d = x - max(x) in [diff_min, 0]. */
static int32_t exp_of_difference(const mcup_softmax_params *p, int32_t d)
{
    const int32_t rescaled = mcup_requantize(d, p->input_multiplier, p->input_left_shift);
    return mcup_exp_on_negative_values(rescaled, SOFTMAX_INPUT_INTEGER_BITS);
}

void mcup_softmax_s8(const mcup_softmax_params *p, const int8_t *input, int8_t *output)
{
    for (int32_t r = 0; r < p->rows; r++, input += p->depth, output += p->depth) {
        int32_t max = INT8_MIN;
        for (int32_t i = 0; i < p->depth; i++) {
            max = input[i] > max ? input[i] : max;
        }
        /* Q12.19 sum of the exponentials that count (the row's maximum gives exactly 1.0) */
        int32_t sum = 0;
        for (int32_t i = 0; i < p->depth; i++) {
            const int32_t d = input[i] - max;
            if (d >= p->diff_min) {
                const int32_t e = exp_of_difference(p, d);
                sum = mcup_wrap_add(sum, mcup_rounding_divide_by_pot(e, SOFTMAX_SUM_INTEGER_BITS));
            }
        }
        int32_t bits_over_unit;
        const int32_t reciprocal = mcup_reciprocal(sum, SOFTMAX_SUM_INTEGER_BITS, &bits_over_unit);
        /* exp * (1 / sum) in Q0.31 times 256: a right shift by bits_over_unit + 31 - 8, in
         * [23, 31] for depth <= 511 (clamped otherwise, where TFLM aborts) */
        int32_t exponent = bits_over_unit + 31 - 8;
        exponent = exponent < 0 ? 0 : (exponent > 31 ? 31 : exponent);
        for (int32_t i = 0; i < p->depth; i++) {
            const int32_t d = input[i] - max;
            int32_t y = INT8_MIN; /* below diff_min: probability 0 */
            if (d >= p->diff_min) {
                const int32_t e = exp_of_difference(p, d);
                y = mcup_rounding_divide_by_pot(mcup_doubling_high_mult(reciprocal, e), exponent) +
                    INT8_MIN;
                y = y < INT8_MIN ? INT8_MIN : (y > INT8_MAX ? INT8_MAX : y);
            }
            output[i] = (int8_t)y;
        }
    }
}
