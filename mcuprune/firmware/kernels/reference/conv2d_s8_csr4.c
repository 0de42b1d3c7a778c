/*
 * conv2d_s8_csr4.c - reference 2-D convolution int8 kernel, csr4 weights (plain C, the readable
 * twin). Parameters and the csr4 layout: see mcup_conv2d_csr_params in mcup_sparse.h; the walk
 * (im2col of each output pixel, then every channel's non-zeros over it), shared with
 * conv2d_s8_csr8.c, is mcup_csr_walk_conv2d in mcup_csr_walk.h.
 */
#include "mcup_csr_walk.h"

int32_t mcup_conv2d_s8_csr4_get_buffer_size(const mcup_conv2d_csr_params *p)
{
    return 4 * ((p->k_h * p->k_w * p->in_c + 1) / 2); /* one int16 patch */
}

void mcup_conv2d_s8_csr4(const mcup_conv2d_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch)
{
    mcup_csr_walk_conv2d(p, input, output, scratch, MCUP_CSR4);
}
