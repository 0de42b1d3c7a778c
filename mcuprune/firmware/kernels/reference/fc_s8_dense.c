/*
 * fc_s8_dense.c - reference fully connected int8 kernel (plain C, the readable twin).
 * Parameters and layout: see mcup_fc_params in mcup_nn.h.
 */
#include <stddef.h>

#include "mcup_nn.h"
#include "mcup_requant.h"

int32_t mcup_fc_s8_dense_get_buffer_size(const mcup_fc_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_fc_s8_dense(const mcup_fc_params *p, const int8_t *input, int8_t *output,
                      void *scratch)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    for (int32_t o = 0; o < p->out_features; o++) {
        const int8_t *row = p->weights + o * p->in_features;
        uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[o] : 0; /* wraps like int32 */
        for (int32_t i = 0; i < p->in_features; i++) {
            acc += (uint32_t)((input[i] + q->input_offset) * row[i]);
        }
        output[o] = mcup_requantize_s8((int32_t)acc, q->multiplier[o], q->shift[o],
                                       q->output_offset, q->act_min, q->act_max);
    }
}
