/*
 * fc_s8_block4.c - reference fully connected int8 kernel, block4 weights (plain C, the readable
 * twin). Parameters and the block4 layout: see mcup_fc_block4_params in mcup_sparse.h.
 */
#include <stddef.h>

#include "mcup_requant.h"
#include "mcup_sparse.h"

int32_t mcup_fc_s8_block4_get_buffer_size(const mcup_fc_block4_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_fc_s8_block4(const mcup_fc_block4_params *p, const int8_t *input, int8_t *output,
                       void *scratch)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    const int32_t off = q->input_offset;
    const int32_t col_bytes = mcup_block4_col_bytes(p->in_features);
    int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t o = 0; o < p->out_features; o++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, o + 1);
        uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[o] : 0; /* wraps like int32 */
        for (; k < end; k++) {
            const int32_t c = 4 * mcup_block4_col(p->block_cols, col_bytes, k);
            const int8_t *x = input + c;
            const int8_t *w = p->values + 4 * k;
            if (p->in_features - c >= 4) { /* a whole block */
                acc += (uint32_t)((x[0] + off) * w[0] + (x[1] + off) * w[1] + (x[2] + off) * w[2] +
                                  (x[3] + off) * w[3]);
            } else { /* the last block of a row: its padding columns are not read */
                for (int32_t j = 0; j < p->in_features - c; j++) {
                    acc += (uint32_t)((x[j] + off) * w[j]);
                }
            }
        }
        output[o] = mcup_requantize_s8((int32_t)acc, q->multiplier[o], q->shift[o],
                                       q->output_offset, q->act_min, q->act_max);
    }
}
