/*
 * add_s8.c - element-wise addition int8 kernel for cores with the DSP extension. Parameters:
 * see mcup_add_params in mcup_nn.h; bit-identical to the reference twin in
 * firmware/kernels/reference/add_s8.c.
 *
 * Each element costs three requantizations and nothing else worth a SIMD instruction, so this
 * twin only tells the compiler what TFLM's ADD guarantees: every multiplier below 1 (shifts
 * <= 0, checked once per call). mcup_requantize then loses its left shift and overflow test, about
 * 7 instructions each; the inputs' shift left by left_shift stays exact (|x + offset| <= 255,
 * left_shift <= 22). Other parameters take the general loop.
 */
#include "mcup_nn.h"
#include "mcup_requant.h"

static inline __attribute__((always_inline)) void add_loop(const mcup_add_params *p,
                                                          const int8_t *input1,
                                                          const int8_t *input2, int8_t *output,
                                                          const int right_only)
{
    /* Local copies: stores through the int8 output may alias *p, which would reload every field. */
    const mcup_add_params k = *p;
    if (right_only && (k.input1_shift > 0 || k.input2_shift > 0 || k.output_shift > 0 ||
                       k.input1_multiplier == INT32_MIN || k.input2_multiplier == INT32_MIN ||
                       k.output_multiplier == INT32_MIN)) {
        __builtin_unreachable(); /* the caller checked */
    }
    for (int32_t i = 0; i < k.size; i++) {
        const int32_t a = (int32_t)((uint32_t)(input1[i] + k.input1_offset) << k.left_shift);
        const int32_t b = (int32_t)((uint32_t)(input2[i] + k.input2_offset) << k.left_shift);
        const int32_t sum = mcup_wrap_add(mcup_requantize(a, k.input1_multiplier, k.input1_shift),
                                          mcup_requantize(b, k.input2_multiplier, k.input2_shift));
        output[i] = mcup_requantize_s8(sum, k.output_multiplier, k.output_shift, k.output_offset,
                                       k.act_min, k.act_max);
    }
}

void mcup_add_s8(const mcup_add_params *p, const int8_t *input1, const int8_t *input2,
                 int8_t *output)
{
    if (p->input1_shift <= 0 && p->input2_shift <= 0 && p->output_shift <= 0 &&
        p->input1_multiplier != INT32_MIN && p->input2_multiplier != INT32_MIN &&
        p->output_multiplier != INT32_MIN) {
        add_loop(p, input1, input2, output, 1);
    } else {
        add_loop(p, input1, input2, output, 0);
    }
}
