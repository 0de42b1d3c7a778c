/*
 * fc_s8_block4.c - fully connected int8 kernel, block4 weights, for cores with the DSP extension.
 * Parameters and the block4 layout: see mcup_fc_block4_params in mcup_sparse.h; bit-identical to
 * the reference twin in firmware/kernels/reference/fc_s8_block4.c. The walk (the input as int16
 * pairs, then per stored block one LDRD of inputs, one LDR of 4 weights and two __smlad) is
 * mcup_block4_fc_dsp in mcup_block4_dsp.h.
 */
#include "mcup_block4_dsp.h"

int32_t mcup_fc_s8_block4_get_buffer_size(const mcup_fc_block4_params *p)
{
    return 8 * mcup_block4_blocks(p->in_features); /* the input in q15 pairs of whole blocks */
}

void mcup_fc_s8_block4(const mcup_fc_block4_params *p, const int8_t *input, int8_t *output,
                       void *scratch)
{
    const mcup_block4_matrix m = {p->values, p->block_cols, p->row_ptr, p->row_ptr_bytes,
                                  p->out_features, p->in_features};
    mcup_block4_fc_dsp(&m, &p->q, input, output, scratch, 8);
}
