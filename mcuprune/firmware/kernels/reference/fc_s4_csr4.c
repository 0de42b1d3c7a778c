/*
 * fc_s4_csr4.c - reference fully connected kernel, csr4 weights with int4 values (plain C,
 * the readable twin). Parameters and the layout: see mcup_fc_s4_csr_params in mcup_sparse.h;
 * the walk, shared with fc_s4_csr8.c, is mcup_csr_walk_fc_s4 in mcup_csr_walk.h.
 */
#include "mcup_csr_walk.h"

int32_t mcup_fc_s4_csr4_get_buffer_size(const mcup_fc_s4_csr_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_fc_s4_csr4(const mcup_fc_s4_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch)
{
    mcup_csr_walk_fc_s4(p, input, output, scratch, MCUP_CSR4);
}
