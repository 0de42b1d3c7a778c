/*
 * conv2d_s4_csr4.c - 2-D convolution kernel, csr4 weights with int4 values, for cores with the DSP
 * extension. Parameters and the layout: see mcup_conv2d_s4_csr_params in mcup_sparse.h;
 * bit-identical to the reference twin in firmware/kernels/reference/conv2d_s4_csr4.c. The walk
 * (blocks of 8 entries per word of values), shared with conv2d_s4_csr8.c, is
 * mcup_csr_walk_conv2d_s4_dsp in mcup_csr_walk_dsp.h.
 */
#include "mcup_csr_walk_dsp.h"

int32_t mcup_conv2d_s4_csr4_get_buffer_size(const mcup_conv2d_s4_csr_params *p)
{
    return 4 * p->k_h * p->k_w * p->in_c; /* two int16 patches, interleaved */
}

void mcup_conv2d_s4_csr4(const mcup_conv2d_s4_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch)
{
    mcup_csr_walk_conv2d_s4_dsp(p, input, output, scratch, MCUP_CSR4);
}
