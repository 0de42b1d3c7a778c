/*
 * fc_s8_dense.c - fully connected int8 kernel for cores with the DSP extension.
 * Parameters and layout: see mcup_fc_params in mcup_nn.h; bit-identical to the reference twin
 * in firmware/kernels/reference/fc_s8_dense.c.
 *
 * The input (plus input_offset) is converted once to int16 in scratch (q15-pair layout, see
 * mcup_dsp.h). Three weight rows are then walked together so that each pair of input words
 * loaded from scratch feeds six __smlad: per 12 MACs, 1 input load (LDRD) + 3 x (weight load,
 * rotate, 2 sign extensions, 2 __smlad) + 3 loop instructions. Three rows is the most GCC keeps
 * in registers without spilling on Cortex-M4; leftover rows (out_features % 3) go one by one.
 */
#include <stddef.h>

#include "mcup_dsp.h"
#include "mcup_nn.h"
#include "mcup_requant.h"

int32_t mcup_fc_s8_dense_get_buffer_size(const mcup_fc_params *p)
{
    return 4 * ((p->in_features + 1) / 2); /* in_features int16 in q15-pair words */
}

static inline int8_t requant(const mcup_quant_params *q, int32_t acc, int32_t o)
{
    return mcup_requantize_s8(acc, q->multiplier[o], q->shift[o], q->output_offset, q->act_min,
                              q->act_max);
}

static inline int32_t bias_of(const mcup_quant_params *q, int32_t o)
{
    return q->bias != NULL ? q->bias[o] : 0;
}

void mcup_fc_s8_dense(const mcup_fc_params *p, const int8_t *input, int8_t *output,
                      void *scratch)
{
    const mcup_quant_params *q = &p->q;
    const int32_t n = p->in_features;
    int32_t *x = scratch;
    mcup_s8_to_q15_pairs(input, n, q->input_offset, x, 1);

    int32_t o = 0;
    for (; o + 2 < p->out_features; o += 3) {
        const int8_t *w0 = p->weights + o * n;
        const int8_t *w1 = w0 + n;
        const int8_t *w2 = w1 + n;
        const int32_t *xp = x;
        int32_t acc0 = bias_of(q, o);
        int32_t acc1 = bias_of(q, o + 1);
        int32_t acc2 = bias_of(q, o + 2);
        for (int32_t i = n >> 2; i > 0; i--) {
            const int32_t x02 = xp[0];
            const int32_t x13 = xp[1];
            xp += 2;
            acc0 = mcup_mac_group(x02, x13, mcup_read_s8x4(w0), acc0);
            acc1 = mcup_mac_group(x02, x13, mcup_read_s8x4(w1), acc1);
            acc2 = mcup_mac_group(x02, x13, mcup_read_s8x4(w2), acc2);
            w0 += 4;
            w1 += 4;
            w2 += 4;
        }
        output[o] = requant(q, mcup_dot_tail(xp, w0, n & 3, acc0), o);
        output[o + 1] = requant(q, mcup_dot_tail(xp, w1, n & 3, acc1), o + 1);
        output[o + 2] = requant(q, mcup_dot_tail(xp, w2, n & 3, acc2), o + 2);
    }
    for (; o < p->out_features; o++) { /* out_features % 3 leftover rows */
        output[o] = requant(q, mcup_dot_q15_s8(x, p->weights + o * n, n, bias_of(q, o)), o);
    }
}
