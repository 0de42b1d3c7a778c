/*
 * avgpool2d_s8.c - average pooling int8 kernel (plain C; no DSP twin, see
 * bench/kernels/README.md). Parameters, geometry and layout: see mcup_pool2d_params in mcup_nn.h:
 * the raw int8 values of a window's in-image taps are summed and divided by their count (padding
 * is not counted), rounding to nearest with ties away from zero, then clamped.
 */
#include "mcup_nn.h"

void mcup_avgpool2d_s8(const mcup_avgpool2d_params *p, const int8_t *input, int8_t *output)
{
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        /* the window's rows inside the image: [y_begin, y_end) */
        const int32_t y0 = oy * p->stride_h - p->pad_top;
        const int32_t y_begin = y0 > 0 ? y0 : 0;
        const int32_t y_end = y0 + p->k_h < p->in_h ? y0 + p->k_h : p->in_h;
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t x0 = ox * p->stride_w - p->pad_left;
            const int32_t x_begin = x0 > 0 ? x0 : 0;
            const int32_t x_end = x0 + p->k_w < p->in_w ? x0 + p->k_w : p->in_w;
            const int32_t rows = y_end > y_begin ? y_end - y_begin : 0;
            const int32_t count = rows * (x_end > x_begin ? x_end - x_begin : 0);
            int8_t *out = output + (oy * p->out_w + ox) * p->c;
            for (int32_t ch = 0; ch < p->c; ch++) {
                int32_t sum = 0;
                for (int32_t iy = y_begin; iy < y_end; iy++) {
                    for (int32_t ix = x_begin; ix < x_end; ix++) {
                        sum += input[(iy * p->in_w + ix) * p->c + ch];
                    }
                }
                int32_t average = 0; /* a window wholly in the padding (out of range) */
                if (count > 0) {     /* C division truncates: move ties away from zero first */
                    average = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
                }
                average = average < p->act_min ? p->act_min : average;
                average = average > p->act_max ? p->act_max : average;
                out[ch] = (int8_t)average;
            }
        }
    }
}
