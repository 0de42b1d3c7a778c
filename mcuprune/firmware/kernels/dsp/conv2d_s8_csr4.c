/*
 * conv2d_s8_csr4.c - 2-D convolution int8 kernel, csr4 weights, for cores with the DSP
 * extension. Parameters and the csr4 layout: see mcup_conv2d_csr_params in mcup_sparse.h;
 * bit-identical to the reference twin in firmware/kernels/reference/conv2d_s8_csr4.c. The walk
 * (two output pixels at a time, blocks of 8 entries per word of deltas), shared with
 * conv2d_s8_csr8.c and the fc kernels, is mcup_csr_walk_conv2d_dsp in mcup_csr_walk_dsp.h.
 */
#include "mcup_csr_walk_dsp.h"

int32_t mcup_conv2d_s8_csr4_get_buffer_size(const mcup_conv2d_csr_params *p)
{
    return 4 * p->k_h * p->k_w * p->in_c; /* two int16 patches, interleaved */
}

void mcup_conv2d_s8_csr4(const mcup_conv2d_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch)
{
    mcup_csr_walk_conv2d_dsp(p, input, output, scratch, MCUP_CSR4);
}
