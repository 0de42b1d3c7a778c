/*
 * add_s8.c - element-wise addition int8 kernel (plain C; no DSP twin, see
 * bench/kernels/README.md). Parameters: see mcup_add_params in mcup_nn.h (TFLite's int8 ADD).
 */
#include "mcup_nn.h"
#include "mcup_requant.h"

void mcup_add_s8(const mcup_add_params *p, const int8_t *input1, const int8_t *input2,
                 int8_t *output)
{
    /* Local copies: stores through the int8 output may alias *p, which would reload every field. */
    const mcup_add_params k = *p;
    for (int32_t i = 0; i < k.size; i++) {
        const int32_t a = (int32_t)((uint32_t)(input1[i] + k.input1_offset) << k.left_shift);
        const int32_t b = (int32_t)((uint32_t)(input2[i] + k.input2_offset) << k.left_shift);
        const int32_t sum = mcup_wrap_add(mcup_requantize(a, k.input1_multiplier, k.input1_shift),
                                          mcup_requantize(b, k.input2_multiplier, k.input2_shift));
        output[i] = mcup_requantize_s8(sum, k.output_multiplier, k.output_shift, k.output_offset,
                                       k.act_min, k.act_max);
    }
}
