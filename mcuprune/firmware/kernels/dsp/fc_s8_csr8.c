/*
 * fc_s8_csr8.c - fully connected int8 kernel, csr8 weights, for cores with the DSP extension.
 * Parameters and the csr8 layout: see mcup_fc_csr_params in mcup_sparse.h; bit-identical to the
 * reference twin in firmware/kernels/reference/fc_s8_csr8.c. The walk (blocks of 4 entries
 * per word of deltas), shared with fc_s8_csr4.c and the conv kernels, is mcup_csr_walk_fc_dsp in
 * mcup_csr_walk_dsp.h.
 */
#include "mcup_csr_walk_dsp.h"

int32_t mcup_fc_s8_csr8_get_buffer_size(const mcup_fc_csr_params *p)
{
    return 4 * ((p->in_features + 1) / 2); /* in_features int16 */
}

void mcup_fc_s8_csr8(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch)
{
    mcup_csr_walk_fc_dsp(p, input, output, scratch, MCUP_CSR8);
}
