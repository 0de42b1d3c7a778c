/*
 * fc_s8_csr4.c - reference fully connected int8 kernel, csr4 weights (plain C, the readable
 * twin). Parameters and the csr4 layout: see mcup_fc_csr_params in mcup_sparse.h; the row walk,
 * shared with fc_s8_csr8.c, is mcup_csr_walk_fc in mcup_csr_walk.h.
 */
#include "mcup_csr_walk.h"

int32_t mcup_fc_s8_csr4_get_buffer_size(const mcup_fc_csr_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_fc_s8_csr4(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch)
{
    mcup_csr_walk_fc(p, input, output, scratch, MCUP_CSR4);
}
