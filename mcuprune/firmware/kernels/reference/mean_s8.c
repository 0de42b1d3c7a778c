/*
 * mean_s8.c - mean over H and W int8 kernel (global average pooling; plain C). Parameters and
 * layout: see mcup_mean_params in mcup_nn.h. The raw int8 sum of each channel, minus the input
 * zero point times the count, is requantized with the host-folded multiplier/shift.
 */
#include "mcup_nn.h"
#include "mcup_requant.h"

/* Channels summed per pass over the map: the running sums stay in registers or on the stack. */
#define MEAN_BLOCK 16

void mcup_mean_s8(const mcup_mean_params *p, const int8_t *input, int8_t *output)
{
    const int32_t pixels = p->in_h * p->in_w;
    const int32_t offset = p->input_offset * pixels; /* |.| < 2^31: pixels < 2^23 */
    for (int32_t c0 = 0; c0 < p->c; c0 += MEAN_BLOCK) {
        const int32_t n = p->c - c0 < MEAN_BLOCK ? p->c - c0 : MEAN_BLOCK;
        int32_t sum[MEAN_BLOCK] = {0};
        const int8_t *in = input + c0;
        for (int32_t i = 0; i < pixels; i++, in += p->c) {
            for (int32_t j = 0; j < n; j++) {
                sum[j] += in[j];
            }
        }
        for (int32_t j = 0; j < n; j++) {
            output[c0 + j] = mcup_requantize_s8(sum[j] + offset, p->multiplier, p->shift,
                                                p->output_offset, INT8_MIN, INT8_MAX);
        }
    }
}
