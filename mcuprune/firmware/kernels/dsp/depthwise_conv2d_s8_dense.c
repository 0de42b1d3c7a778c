/*
 * depthwise_conv2d_s8_dense.c - depthwise 2-D convolution int8 kernel for cores with the DSP
 * extension. Parameters, geometry and layout: see mcup_depthwise_conv2d_params in mcup_nn.h;
 * bit-identical to the reference twin in firmware/kernels/reference/depthwise_conv2d_s8_dense.c.
 *
 * Depth multiplier 1 (every MLPerf Tiny model): channels are innermost (HWC), so 4 neighbouring
 * channels of an input pixel are one word. Per output pixel and group of 4 channels, each tap
 * inside the image costs one load of the input word, two sign extensions into int16 halves
 * (bytes 0/2, and 1/3 with the rotate folded into the instruction), one double-word load of the
 * weights and four 16x16 multiply-accumulates (__smlabb / __smlatt, one per channel: __smlad
 * would add two channels together). The weights are rearranged once per call into scratch as
 * int16 in that order: per group of 4 channels, per tap, [w0 | w2] and [w1 | w3].
 *
 * A 3x3 window wholly inside the image (most pixels) takes an unrolled loop whose accumulators
 * start at bias + input_offset * (sum of the channel's 9 weights), folded once per call, so its
 * taps skip the offset (__sxtb16 instead of __sxtab16, one register less). Other windows are
 * clipped to the image once per output pixel, so their tap loops carry no bounds tests, and add
 * the offset per tap. Channels past the last multiple of 4, and every channel when the depth
 * multiplier is not 1, go one at a time from the original weights (a multiply-accumulate per tap).
 *
 * Requantization (about 20 instructions per output) costs as much as a 3x3 window's taps, so
 * it is kept lean: when every channel shifts right and act_max is 127 (checked once per call) a
 * second copy of the loops lets GCC drop the left shift, the overflow test and the top clamp.
 * bench/kernels/README.md has the figures (25x5x64, 3x3: 7.2 instructions per MAC, 4.5x the
 * reference kernel). The code is in mcup_depthwise_dsp.h, shared with the int4 kernel.
 */
#include "mcup_depthwise_dsp.h"

int32_t mcup_depthwise_conv2d_s8_dense_get_buffer_size(const mcup_depthwise_conv2d_params *p)
{
    const mcup_dw_geom g = MCUP_DW_GEOM(p);
    return mcup_dw_buffer_size(&g);
}

void mcup_depthwise_conv2d_s8_dense(const mcup_depthwise_conv2d_params *p, const int8_t *input,
                                    int8_t *output, void *scratch)
{
    const mcup_dw_geom g = MCUP_DW_GEOM(p);
    const mcup_dw_weights w = {p->weights, NULL, 0};
    mcup_dw_run(&g, &p->q, &w, input, output, scratch, 8);
}
