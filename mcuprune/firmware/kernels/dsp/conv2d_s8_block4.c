/*
 * conv2d_s8_block4.c - 2-D convolution int8 kernel, block4 weights, for cores with the DSP
 * extension. Parameters and the block4 layout: see mcup_conv2d_block4_params in mcup_sparse.h;
 * bit-identical to the reference twin in firmware/kernels/reference/conv2d_s8_block4.c. The walk
 * (output pixels in pairs, their patches interleaved as int16 pairs, every stored block serving
 * both) is mcup_block4_conv_dsp in mcup_block4_dsp.h.
 */
#include "mcup_block4_dsp.h"

int32_t mcup_conv2d_s8_block4_get_buffer_size(const mcup_conv2d_block4_params *p)
{
    return 20 * mcup_block4_blocks(p->k_h * p->k_w * p->in_c); /* two patches + an int8 stage */
}

void mcup_conv2d_s8_block4(const mcup_conv2d_block4_params *p, const int8_t *input,
                           int8_t *output, void *scratch)
{
    const mcup_block4_geometry g = {p->in_h,     p->in_w,     p->in_c,    p->out_h,  p->out_w,
                                    p->out_c,    p->k_h,      p->k_w,     p->stride_h,
                                    p->stride_w, p->pad_top,  p->pad_left, p->dil_h, p->dil_w};
    const mcup_block4_matrix m = {p->values, p->block_cols, p->row_ptr, p->row_ptr_bytes,
                                  p->out_c, p->k_h * p->k_w * p->in_c};
    mcup_block4_conv_dsp(&g, &m, &p->q, input, output, scratch, 8);
}
