/*
 * conv2d_s4_bitmask.c - reference 2-D convolution kernel, bitmask weights with int4 values
 * (plain C, the readable twin). Parameters and the layout: see mcup_conv2d_s4_bitmask_params in
 * mcup_sparse.h. As conv2d_s8_bitmask.c: each output pixel's patch is copied to scratch as int16
 * (input_offset added, 0 in the padding), then every output channel walks its set bits over it.
 */
#include <stddef.h>

#include "mcup_requant.h"
#include "mcup_s4.h"
#include "mcup_sparse.h"

int32_t mcup_conv2d_s4_bitmask_get_buffer_size(const mcup_conv2d_s4_bitmask_params *p)
{
    return 4 * ((p->k_h * p->k_w * p->in_c + 1) / 2); /* one int16 patch */
}

void mcup_conv2d_s4_bitmask(const mcup_conv2d_s4_bitmask_params *p, const int8_t *input,
                            int8_t *output, void *scratch)
{
    const mcup_quant_params *q = &p->q;
    const int32_t row_bytes = (p->k_h * p->k_w * p->in_c + 7) / 8;
    int16_t *patch = scratch;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                                   oy * p->stride_h - p->pad_top, ox * p->stride_w - p->pad_left,
                                   p->dil_h, p->dil_w, q->input_offset, patch, 1);
            int8_t *out = output + (oy * p->out_w + ox) * p->out_c;
            const uint8_t *mask = p->mask;
            mcup_s4_stream vs = mcup_s4_stream_start(p->values); /* in row-major order */
            for (int32_t oc = 0; oc < p->out_c; oc++, mask += row_bytes) {
                uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[oc] : 0; /* wraps like int32 */
                for (int32_t b = 0; b < row_bytes; b++) {
                    uint32_t bits = mask[b]; /* bit 7 is column 8 * b */
                    while (bits != 0) {
                        const int32_t j = __builtin_clz(bits) - 24; /* leftmost set bit */
                        bits ^= 0x80u >> j;
                        acc += (uint32_t)(patch[8 * b + j] * mcup_s4_next(&vs));
                    }
                }
                out[oc] = mcup_requantize_s8((int32_t)acc, q->multiplier[oc], q->shift[oc],
                                             q->output_offset, q->act_min, q->act_max);
            }
        }
    }
}
