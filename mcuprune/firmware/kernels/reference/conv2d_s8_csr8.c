/*
 * conv2d_s8_csr8.c - reference 2-D convolution int8 kernel, csr8 weights (plain C, the readable
 * twin). Parameters and the csr8 layout: see mcup_conv2d_csr_params in mcup_sparse.h.
 *
 * Column indices run over the flattened [k_h][k_w][in_c] patch, so each output pixel's patch is
 * first copied to scratch as int16 (input_offset added, 0 in the padding); every output channel
 * then walks its non-zeros over that patch with no bounds checks.
 */
#include <stddef.h>

#include "mcup_requant.h"
#include "mcup_sparse.h"

int32_t mcup_conv2d_s8_csr8_get_buffer_size(const mcup_conv2d_csr_params *p)
{
    return 4 * ((p->k_h * p->k_w * p->in_c + 1) / 2); /* one int16 patch */
}

void mcup_conv2d_s8_csr8(const mcup_conv2d_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch)
{
    const mcup_quant_params *q = &p->q;
    int16_t *patch = scratch;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                                   oy * p->stride - p->pad, ox * p->stride - p->pad,
                                   q->input_offset, patch, 1);
            int8_t *out = output + (oy * p->out_w + ox) * p->out_c;
            int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
            for (int32_t oc = 0; oc < p->out_c; oc++) {
                const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, oc + 1);
                int32_t acc = q->bias != NULL ? q->bias[oc] : 0;
                int32_t col = 0;
                for (; k < end; k++) {
                    col += p->deltas[k]; /* fillers (value 0) only move col */
                    acc += patch[col] * p->values[k];
                }
                out[oc] = mcup_requantize_s8(acc, q->multiplier[oc], q->shift[oc],
                                             q->output_offset, q->act_min, q->act_max);
            }
        }
    }
}
