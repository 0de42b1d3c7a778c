/*
 * fc_s8_csr8.c - reference fully connected int8 kernel, csr8 weights (plain C, the readable
 * twin). Parameters and the csr8 layout: see mcup_fc_csr_params in mcup_sparse.h.
 */
#include <stddef.h>

#include "mcup_requant.h"
#include "mcup_sparse.h"

int32_t mcup_fc_s8_csr8_get_buffer_size(const mcup_fc_csr_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_fc_s8_csr8(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t o = 0; o < p->out_features; o++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, o + 1);
        int32_t acc = q->bias != NULL ? q->bias[o] : 0;
        int32_t col = 0;
        for (; k < end; k++) {
            col += p->deltas[k]; /* fillers (value 0) only move col */
            acc += (input[col] + q->input_offset) * p->values[k];
        }
        output[o] = mcup_requantize_s8(acc, q->multiplier[o], q->shift[o], q->output_offset,
                                       q->act_min, q->act_max);
    }
}
