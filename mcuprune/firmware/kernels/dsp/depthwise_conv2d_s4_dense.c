/*
 * depthwise_conv2d_s4_dense.c - depthwise 2-D convolution kernel, int4 weights, for cores with the
 * DSP extension. Parameters, geometry and layout: see mcup_depthwise_conv2d_s4_params in mcup_nn.h;
 * bit-identical to the reference twin in firmware/kernels/reference/depthwise_conv2d_s4_dense.c
 * (and to mcup_depthwise_conv2d_s8_dense on the same integers).
 *
 * The int8 DSP kernel (depthwise_conv2d_s8_dense.c has the description), its code shared through
 * mcup_depthwise_dsp.h: the weights of whole groups of 4 channels are rearranged once per call into
 * scratch as int16, unpacked from their nibbles there, so the per-pixel loops are the int8
 * kernel's; the channels taken one at a time read their nibbles tap by tap. Same scratch.
 */
#include "mcup_depthwise_dsp.h"

int32_t mcup_depthwise_conv2d_s4_dense_get_buffer_size(const mcup_depthwise_conv2d_s4_params *p)
{
    const mcup_dw_geom g = MCUP_DW_GEOM(p);
    return mcup_dw_buffer_size(&g);
}

void mcup_depthwise_conv2d_s4_dense(const mcup_depthwise_conv2d_s4_params *p,
                                    const int8_t *input, int8_t *output, void *scratch)
{
    const mcup_dw_geom g = MCUP_DW_GEOM(p);
    const mcup_dw_weights w = {NULL, p->weights, mcup_s4_row_bytes(p->k_h * p->k_w)};
    mcup_dw_run(&g, &p->q, &w, input, output, scratch, 4);
}
