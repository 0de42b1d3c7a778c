/*
 * conv2d_s4_dense.c - reference 2-D convolution kernel, int4 weights (plain C, the readable
 * twin). Parameters, geometry and layout: see mcup_conv2d_s4_params in mcup_nn.h (one row of
 * (k_h * k_w * in_c + 1) / 2 bytes per output channel, [k_h][k_w][in_c] nibbles). Bit-identical
 * to mcup_conv2d_s8_dense on the same integers.
 */
#include <stddef.h>

#include "mcup_nn.h"
#include "mcup_requant.h"
#include "mcup_s4.h"

int32_t mcup_conv2d_s4_dense_get_buffer_size(const mcup_conv2d_s4_params *p)
{
    (void)p;
    return 0; /* no scratch */
}

void mcup_conv2d_s4_dense(const mcup_conv2d_s4_params *p, const int8_t *input, int8_t *output,
                          void *scratch)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    const int32_t row_bytes = mcup_s4_row_bytes(p->k_h * p->k_w * p->in_c);
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t y0 = oy * p->stride_h - p->pad_top; /* input row of tap ky = 0 */
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t x0 = ox * p->stride_w - p->pad_left;
            for (int32_t oc = 0; oc < p->out_c; oc++) {
                const uint8_t *filter = p->weights + oc * row_bytes;
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
                        const int8_t *pixel = input + (iy * p->in_w + ix) * p->in_c;
                        const int32_t tap = (ky * p->k_w + kx) * p->in_c; /* value index in the row */
                        acc += mcup_s4_dot(pixel, q->input_offset, filter, tap, p->in_c);
                    }
                }
                output[(oy * p->out_w + ox) * p->out_c + oc] =
                    mcup_requantize_s8((int32_t)acc, q->multiplier[oc], q->shift[oc],
                                       q->output_offset, q->act_min, q->act_max);
            }
        }
    }
}
