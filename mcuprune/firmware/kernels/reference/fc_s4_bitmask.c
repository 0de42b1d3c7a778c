/*
 * fc_s4_bitmask.c - reference fully connected kernel, bitmask weights with int4 values (plain C,
 * the readable twin). Parameters and the layout: see mcup_fc_s4_bitmask_params in mcup_sparse.h.
 * Bit-identical to mcup_fc_s8_bitmask on the same integers.
 */
#include <stddef.h>

#include "mcup_requant.h"
#include "mcup_s4.h"
#include "mcup_sparse.h"

int32_t mcup_fc_s4_bitmask_get_buffer_size(const mcup_fc_s4_bitmask_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_fc_s4_bitmask(const mcup_fc_s4_bitmask_params *p, const int8_t *input,
                        int8_t *output, void *scratch)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    const int32_t row_bytes = (p->in_features + 7) / 8;
    const uint8_t *mask = p->mask;
    mcup_s4_stream vs = mcup_s4_stream_start(p->values); /* consumed in row-major order */
    for (int32_t o = 0; o < p->out_features; o++, mask += row_bytes) {
        uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[o] : 0; /* wraps like int32 */
        for (int32_t b = 0; b < row_bytes; b++) {
            uint32_t bits = mask[b]; /* bit 7 is column 8 * b */
            while (bits != 0) {
                const int32_t j = __builtin_clz(bits) - 24; /* leftmost set bit: next column */
                bits ^= 0x80u >> j;
                acc += (uint32_t)((input[8 * b + j] + q->input_offset) * mcup_s4_next(&vs));
            }
        }
        output[o] = mcup_requantize_s8((int32_t)acc, q->multiplier[o], q->shift[o],
                                       q->output_offset, q->act_min, q->act_max);
    }
}
