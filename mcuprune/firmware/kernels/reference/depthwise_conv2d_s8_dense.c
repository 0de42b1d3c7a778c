/*
 * depthwise_conv2d_s8_dense.c - reference depthwise 2-D convolution int8 kernel (plain C, the
 * readable twin). Parameters, geometry and layout: see mcup_depthwise_conv2d_params in mcup_nn.h
 * (HWC feature maps, weights [out_c][k_h][k_w], output channel o reads input channel
 * o / depth_multiplier).
 */
#include <stddef.h>

#include "mcup_nn.h"
#include "mcup_requant.h"

int32_t mcup_depthwise_conv2d_s8_dense_get_buffer_size(const mcup_depthwise_conv2d_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_depthwise_conv2d_s8_dense(const mcup_depthwise_conv2d_params *p, const int8_t *input,
                                    int8_t *output, void *scratch)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    const int32_t taps = p->k_h * p->k_w;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t y0 = oy * p->stride_h - p->pad_top; /* input row of tap ky = 0 */
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t x0 = ox * p->stride_w - p->pad_left;
            for (int32_t oc = 0; oc < p->out_c; oc++) {
                const int32_t ic = oc / p->depth_multiplier;
                const int8_t *filter = p->weights + oc * taps;
                /* unsigned: the int32 accumulator wraps, as TFLM's, without undefined behaviour */
                uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[oc] : 0;
                for (int32_t ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = y0 + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h) {
                        continue; /* padding holds the input zero point: contributes 0 */
                    }
                    for (int32_t kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = x0 + kx * p->dil_w;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        const int32_t x = input[(iy * p->in_w + ix) * p->in_c + ic];
                        acc += (uint32_t)((x + q->input_offset) * filter[ky * p->k_w + kx]);
                    }
                }
                output[(oy * p->out_w + ox) * p->out_c + oc] =
                    mcup_requantize_s8((int32_t)acc, q->multiplier[oc], q->shift[oc],
                                       q->output_offset, q->act_min, q->act_max);
            }
        }
    }
}
