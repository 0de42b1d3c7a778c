/*
 * fc_s4_dense.c - reference fully connected kernel, int4 weights (plain C, the readable twin).
 * Parameters and layout: see mcup_fc_s4_params in mcup_nn.h (rows of (in_features + 1) / 2
 * bytes, the first value of a byte in its low nibble). Bit-identical to mcup_fc_s8_dense on the
 * same integers.
 */
#include <stddef.h>

#include "mcup_nn.h"
#include "mcup_requant.h"
#include "mcup_s4.h"

int32_t mcup_fc_s4_dense_get_buffer_size(const mcup_fc_s4_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_fc_s4_dense(const mcup_fc_s4_params *p, const int8_t *input, int8_t *output,
                      void *scratch)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    const int32_t n = p->in_features;
    const int32_t row_bytes = mcup_s4_row_bytes(n);
    for (int32_t o = 0; o < p->out_features; o++) {
        const uint8_t *row = p->weights + o * row_bytes;
        uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[o] : 0; /* wraps like int32 */
        acc += mcup_s4_dot(input, q->input_offset, row, 0, n); /* a byte (two weights) at a time */
        output[o] = mcup_requantize_s8((int32_t)acc, q->multiplier[o], q->shift[o],
                                       q->output_offset, q->act_min, q->act_max);
    }
}
