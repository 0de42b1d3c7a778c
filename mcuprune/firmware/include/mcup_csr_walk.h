/*
 * mcup_csr_walk.h - the csr8 and csr4 kernels' row walks, written once (plain C; the DSP
 * kernels' walks are in mcup_csr_walk_dsp.h). Not part of the calling interface: included only
 * by the csr kernel files.
 *
 * The two formats differ in one thing, how entry k's column delta is stored (a byte, or a
 * nibble; see mcup_sparse.h). The int4 kernels (_s4_csr8, _s4_csr4) have walks of their own at
 * the end, the same loops reading two entries per byte of values. Each kernel file keeps its own public function (one kernel per
 * file, so a firmware links only the formats it uses) and calls the walk here with its delta
 * width as a constant. The walks are always_inline (not left to GCC's size heuristics), so every
 * test of the width folds away and each file compiles to the code of a walk written for its
 * format alone: with GCC 12.2 -O2, the same instructions as before the walks were shared.
 */
#ifndef MCUP_CSR_WALK_H
#define MCUP_CSR_WALK_H

#include <stddef.h>
#include <stdint.h>

#include "mcup_requant.h"
#include "mcup_s4.h"
#include "mcup_sparse.h"

/* Bits per column delta: the one difference between a csr8 and a csr4 kernel. */
typedef enum { MCUP_CSR4 = 4, MCUP_CSR8 = 8 } mcup_csr_width;

/*
 * The column delta of entry j of `deltas`, counted from deltas[0]: a byte for csr8; for csr4
 * the low nibble of deltas[j / 2] when j is even, the high one when j is odd.
 */
static inline int32_t mcup_csr_delta(const uint8_t *deltas, int32_t j, mcup_csr_width width)
{
    if (width == MCUP_CSR4) {
        return (deltas[j >> 1] >> (4 * (j & 1))) & 0xF;
    }
    return deltas[j];
}

/* Fully connected. No scratch: the input is read in place, input_offset added per product. */
static inline __attribute__((always_inline)) void
mcup_csr_walk_fc(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output, void *scratch,
                 mcup_csr_width width)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t o = 0; o < p->out_features; o++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, o + 1);
        uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[o] : 0; /* wraps like int32 */
        int32_t col = 0;
        for (; k < end; k++) {
            col += mcup_csr_delta(p->deltas, k, width); /* fillers (value 0) only move col */
            acc += (uint32_t)((input[col] + q->input_offset) * p->values[k]);
        }
        output[o] = mcup_requantize_s8((int32_t)acc, q->multiplier[o], q->shift[o],
                                       q->output_offset, q->act_min, q->act_max);
    }
}

/*
 * 2-D convolution. Column indices run over the flattened [k_h][k_w][in_c] patch, so each output
 * pixel's patch is first copied to scratch as int16 (input_offset added, 0 in the padding);
 * every output channel then walks its non-zeros over it with no bounds checks.
 */
static inline __attribute__((always_inline)) void
mcup_csr_walk_conv2d(const mcup_conv2d_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch, mcup_csr_width width)
{
    const mcup_quant_params *q = &p->q;
    int16_t *patch = scratch;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                                   oy * p->stride_h - p->pad_top, ox * p->stride_w - p->pad_left,
                                   p->dil_h, p->dil_w, q->input_offset, patch, 1);
            int8_t *out = output + (oy * p->out_w + ox) * p->out_c;
            int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
            for (int32_t oc = 0; oc < p->out_c; oc++) {
                const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, oc + 1);
                uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[oc] : 0;
                int32_t col = 0;
                for (; k < end; k++) {
                    col += mcup_csr_delta(p->deltas, k, width);
                    acc += (uint32_t)(patch[col] * p->values[k]);
                }
                out[oc] = mcup_requantize_s8((int32_t)acc, q->multiplier[oc], q->shift[oc],
                                             q->output_offset, q->act_min, q->act_max);
            }
        }
    }
}

/* --- int4 values (the _s4_ kernels): the same walks, entry k's value the nibble k of values ---- */

/*
 * acc + the products of entries [k, end) of one row with x (int8 input plus offset for fc, an
 * int16 patch for conv: `offset` 0), col the row's running column. A row starting at an odd entry
 * takes that one (a high nibble) alone; then two entries per byte of values (and per byte of
 * csr4 deltas), so no entry tests its parity; an odd last entry alone.
 */
static inline __attribute__((always_inline)) uint32_t
mcup_csr_row_s4_ref(const uint8_t *values, const uint8_t *deltas, int32_t k, int32_t end,
                    const void *x, int32_t x_is_s16, int32_t offset, mcup_csr_width width)
{
    uint32_t acc = 0;
    int32_t col = 0;
#define MCUP_CSR_X(c) (x_is_s16 ? (int32_t)((const int16_t *)x)[c] : ((const int8_t *)x)[c] + offset)
    if ((k & 1) != 0 && k < end) {
        col += mcup_csr_delta(deltas, k, width);
        acc += (uint32_t)(MCUP_CSR_X(col) * mcup_s4_hi(values[k >> 1]));
        k++;
    }
    for (; k + 1 < end; k += 2) {
        const uint32_t v = values[k >> 1];
        const uint32_t d = width == MCUP_CSR4 ? deltas[k >> 1] : 0;
        col += width == MCUP_CSR4 ? (int32_t)(d & 15u) : deltas[k]; /* fillers (value 0) only move col */
        acc += (uint32_t)(MCUP_CSR_X(col) * mcup_s4_lo(v));
        col += width == MCUP_CSR4 ? (int32_t)(d >> 4) : deltas[k + 1];
        acc += (uint32_t)(MCUP_CSR_X(col) * mcup_s4_hi(v));
    }
    if (k < end) {
        col += mcup_csr_delta(deltas, k, width);
        acc += (uint32_t)(MCUP_CSR_X(col) * mcup_s4_lo(values[k >> 1]));
    }
#undef MCUP_CSR_X
    return acc;
}

/* Fully connected, int4 values. No scratch: the input is read in place, input_offset added. */
static inline __attribute__((always_inline)) void
mcup_csr_walk_fc_s4(const mcup_fc_s4_csr_params *p, const int8_t *input, int8_t *output,
                    void *scratch, mcup_csr_width width)
{
    (void)scratch;
    const mcup_quant_params *q = &p->q;
    int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t o = 0; o < p->out_features; o++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, o + 1);
        uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[o] : 0; /* wraps like int32 */
        acc += mcup_csr_row_s4_ref(p->values, p->deltas, k, end, input, 0, q->input_offset, width);
        k = end;
        output[o] = mcup_requantize_s8((int32_t)acc, q->multiplier[o], q->shift[o],
                                       q->output_offset, q->act_min, q->act_max);
    }
}

/* 2-D convolution, int4 values: im2col of each output pixel, then every channel's entries. */
static inline __attribute__((always_inline)) void
mcup_csr_walk_conv2d_s4(const mcup_conv2d_s4_csr_params *p, const int8_t *input, int8_t *output,
                        void *scratch, mcup_csr_width width)
{
    const mcup_quant_params *q = &p->q;
    int16_t *patch = scratch;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                                   oy * p->stride_h - p->pad_top, ox * p->stride_w - p->pad_left,
                                   p->dil_h, p->dil_w, q->input_offset, patch, 1);
            int8_t *out = output + (oy * p->out_w + ox) * p->out_c;
            int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
            for (int32_t oc = 0; oc < p->out_c; oc++) {
                const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, oc + 1);
                uint32_t acc = q->bias != NULL ? (uint32_t)q->bias[oc] : 0;
                acc += mcup_csr_row_s4_ref(p->values, p->deltas, k, end, patch, 1, 0, width);
                k = end;
                out[oc] = mcup_requantize_s8((int32_t)acc, q->multiplier[oc], q->shift[oc],
                                             q->output_offset, q->act_min, q->act_max);
            }
        }
    }
}

#endif /* MCUP_CSR_WALK_H */
