/*
 * fc_s4_csr4.c - fully connected kernel, csr4 weights with int4 values, for cores with the DSP
 * extension. Parameters and the layout: see mcup_fc_s4_csr_params in mcup_sparse.h;
 * bit-identical to the reference twin in firmware/kernels/reference/fc_s4_csr4.c. The walk
 * (blocks of 8 entries per word of values), shared with fc_s4_csr8.c, is
 * mcup_csr_walk_fc_s4_dsp in mcup_csr_walk_dsp.h.
 */
#include "mcup_csr_walk_dsp.h"

int32_t mcup_fc_s4_csr4_get_buffer_size(const mcup_fc_s4_csr_params *p)
{
    return 4 * ((p->in_features + 1) / 2); /* in_features int16 */
}

void mcup_fc_s4_csr4(const mcup_fc_s4_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch)
{
    mcup_csr_walk_fc_s4_dsp(p, input, output, scratch, MCUP_CSR4);
}
