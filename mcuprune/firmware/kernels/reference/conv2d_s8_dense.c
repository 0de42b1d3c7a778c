/*
 * conv2d_s8_dense.c - reference 2-D convolution int8 kernel (plain C, the readable twin).
 * Parameters and layout: see mcup_conv2d_params in mcup_nn.h (HWC feature maps,
 * weights [out_c][k_h][k_w][in_c]).
 */
#include <stddef.h>

#include "mcup_nn.h"
#include "mcup_requant.h"

int32_t mcup_conv2d_s8_dense_get_buffer_size(const mcup_conv2d_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_conv2d_s8_dense(const mcup_conv2d_params *p, const int8_t *input, int8_t *output,
                          void *scratch)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            for (int32_t oc = 0; oc < p->out_c; oc++) {
                const int8_t *filter = p->weights + oc * p->k_h * p->k_w * p->in_c;
                int32_t acc = q->bias != NULL ? q->bias[oc] : 0;
                for (int32_t ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = oy * p->stride - p->pad + ky;
                    for (int32_t kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ox * p->stride - p->pad + kx;
                        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                            continue; /* padding holds the input zero point: contributes 0 */
                        }
                        const int8_t *pixel = input + (iy * p->in_w + ix) * p->in_c;
                        const int8_t *taps = filter + (ky * p->k_w + kx) * p->in_c;
                        for (int32_t ic = 0; ic < p->in_c; ic++) {
                            acc += (pixel[ic] + q->input_offset) * taps[ic];
                        }
                    }
                }
                output[(oy * p->out_w + ox) * p->out_c + oc] =
                    mcup_requantize_s8(acc, q->multiplier[oc], q->shift[oc], q->output_offset,
                                       q->act_min, q->act_max);
            }
        }
    }
}
