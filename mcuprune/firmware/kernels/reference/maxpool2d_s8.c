/*
 * maxpool2d_s8.c - max pooling int8 kernel (window == stride == pool, no padding).
 * Parameters and layout: see mcup_maxpool2d_params in mcup_nn.h. Trailing rows and columns
 * that do not fill a window are dropped (out_h = in_h / pool). The DSP twin
 * (firmware/kernels/dsp/maxpool2d_s8.c) compares four channels per word.
 */
#include "mcup_nn.h"

void mcup_maxpool2d_s8(const mcup_maxpool2d_params *p, const int8_t *input, int8_t *output)
{
    const int32_t out_h = p->in_h / p->pool;
    const int32_t out_w = p->in_w / p->pool;
    for (int32_t oy = 0; oy < out_h; oy++) {
        for (int32_t ox = 0; ox < out_w; ox++) {
            int8_t *out = output + (oy * out_w + ox) * p->c;
            for (int32_t ch = 0; ch < p->c; ch++) {
                int8_t best = INT8_MIN;
                for (int32_t ky = 0; ky < p->pool; ky++) {
                    const int32_t iy = oy * p->pool + ky;
                    for (int32_t kx = 0; kx < p->pool; kx++) {
                        const int32_t ix = ox * p->pool + kx;
                        const int8_t v = input[(iy * p->in_w + ix) * p->c + ch];
                        best = v > best ? v : best;
                    }
                }
                out[ch] = best;
            }
        }
    }
}
