/*
 * conv2d_s4_csr8.c - reference 2-D convolution kernel, csr8 weights with int4 values (plain C,
 * the readable twin). Parameters and the layout: see mcup_conv2d_s4_csr_params in mcup_sparse.h;
 * the walk, shared with conv2d_s4_csr4.c, is mcup_csr_walk_conv2d_s4 in mcup_csr_walk.h.
 */
#include "mcup_csr_walk.h"

int32_t mcup_conv2d_s4_csr8_get_buffer_size(const mcup_conv2d_s4_csr_params *p)
{
    return 4 * ((p->k_h * p->k_w * p->in_c + 1) / 2); /* one int16 patch */
}

void mcup_conv2d_s4_csr8(const mcup_conv2d_s4_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch)
{
    mcup_csr_walk_conv2d_s4(p, input, output, scratch, MCUP_CSR8);
}
