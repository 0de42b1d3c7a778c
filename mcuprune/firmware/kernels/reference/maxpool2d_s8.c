/*
 * maxpool2d_s8.c - reference max pooling int8 kernel (plain C, the readable twin). Parameters,
 * geometry and layout: see mcup_pool2d_params in mcup_nn.h: the maximum over each window's
 * in-image taps (the padding never wins), clamped to [act_min, act_max].
 */
#include "mcup_nn.h"

void mcup_maxpool2d_s8(const mcup_maxpool2d_params *params, const int8_t *input, int8_t *output)
{
    const mcup_pool2d_params k = *params; /* a copy: the int8 stores could alias *params */
    const mcup_pool2d_params *p = &k;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        /* the window's rows inside the image: [y_begin, y_end) */
        const int32_t y0 = oy * p->stride_h - p->pad_top;
        const int32_t y_begin = y0 > 0 ? y0 : 0;
        const int32_t y_end = y0 + p->k_h < p->in_h ? y0 + p->k_h : p->in_h;
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t x0 = ox * p->stride_w - p->pad_left;
            const int32_t x_begin = x0 > 0 ? x0 : 0;
            const int32_t x_end = x0 + p->k_w < p->in_w ? x0 + p->k_w : p->in_w;
            int8_t *out = output + (oy * p->out_w + ox) * p->c;
            for (int32_t ch = 0; ch < p->c; ch++) {
                int32_t best = INT8_MIN; /* also the result of a window wholly in the padding */
                for (int32_t iy = y_begin; iy < y_end; iy++) {
                    for (int32_t ix = x_begin; ix < x_end; ix++) {
                        const int32_t v = input[(iy * p->in_w + ix) * p->c + ch];
                        best = v > best ? v : best;
                    }
                }
                best = best < p->act_min ? p->act_min : best;
                best = best > p->act_max ? p->act_max : best;
                out[ch] = (int8_t)best;
            }
        }
    }
}
