/*
 * conv2d_s4_block4.c - reference 2-D convolution kernel, int4 block4 weights (plain C, the
 * readable twin). Parameters and the block4 layout: see mcup_conv2d_s4_block4_params in
 * mcup_sparse.h.
 *
 * Block columns run over the flattened [k_h][k_w][in_c] patch, so each output pixel's patch is
 * first copied to scratch as int16 (input_offset added, 0 in the padding and in the columns that
 * pad the last block); every output channel then walks its blocks over it with no bounds checks.
 */
#include <stddef.h>

#include "mcup_requant.h"
#include "mcup_s4.h"
#include "mcup_sparse.h"

int32_t mcup_conv2d_s4_block4_get_buffer_size(const mcup_conv2d_s4_block4_params *p)
{
    return 8 * ((p->k_h * p->k_w * p->in_c + 3) / 4); /* one int16 patch of whole blocks */
}

void mcup_conv2d_s4_block4(const mcup_conv2d_s4_block4_params *p, const int8_t *input,
                           int8_t *output, void *scratch)
{
    const mcup_quant_params *q = &p->q;
    const int32_t cols = p->k_h * p->k_w * p->in_c;
    const int32_t col_bytes = mcup_block4_col_bytes(cols);
    int16_t *patch = scratch;
    for (int32_t c = cols; c < (cols + 3) / 4 * 4; c++) {
        patch[c] = 0; /* the last block's padding columns (their weights are 0 too) */
    }
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                                   oy * p->stride_h - p->pad_top, ox * p->stride_w - p->pad_left,
                                   p->dil_h, p->dil_w, q->input_offset, patch, 1);
            int8_t *out = output + (oy * p->out_w + ox) * p->out_c;
            int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
            for (int32_t oc = 0; oc < p->out_c; oc++) {
                const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, oc + 1);
                uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[oc] : 0; /* wraps like int32 */
                for (; k < end; k++) {
                    const int16_t *x = patch + 4 * mcup_block4_col(p->block_cols, col_bytes, k);
                    const uint32_t w01 = p->values[2 * k], w23 = p->values[2 * k + 1]; /* nibbles */
                    acc += (uint32_t)(x[0] * mcup_s4_lo(w01) + x[1] * mcup_s4_hi(w01) +
                                      x[2] * mcup_s4_lo(w23) + x[3] * mcup_s4_hi(w23));
                }
                out[oc] = mcup_requantize_s8((int32_t)acc, q->multiplier[oc], q->shift[oc],
                                             q->output_offset, q->act_min, q->act_max);
            }
        }
    }
}
