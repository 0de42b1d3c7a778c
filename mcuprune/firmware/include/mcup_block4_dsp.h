/*
 * mcup_block4_dsp.h - the block4 DSP kernels' walks, written once. Included only by
 * firmware/kernels/dsp/{fc,conv2d}_s{8,4}_block4.c (mcup_dsp.h refuses cores without the DSP
 * extension, where the reference kernels build instead). The layout is in mcup_sparse.h.
 *
 * The activations are converted once (FC: the input; conv: each output pixel's im2col patch) to
 * int16 with input_offset added, in the q15-pair layout of mcup_dsp.h over whole blocks: block b's
 * four values x0..x3 are the words [x0|x2], [x1|x3] at 2b (a last partial block padded with
 * zeros, which meet the zeros stored in the padding columns). A stored block then costs one
 * index load, one address, one LDRD of its two x words, one LDR of its four int8 weights, two
 * sign extensions (__sxtb16 of the weights and of their rotation: [w0|w2], [w1|w3]) and two
 * __smlad; no zero point is folded, the offset is in x. The conv kernels take output pixels two
 * at a time like the csr ones: the two patches are interleaved word by word ([a0|a2], [b0|b2],
 * [a1|a3], [b1|b3] per block), so every block serves both pixels with two LDRD and four __smlad.
 * Inner loops with GCC 12.2 -O2 for Cortex-M4, per block: FC 10 instructions (4 MACs), conv 13 (8
 * MACs), int4 FC 14 (bench/sparse/README.md).
 *
 * int4 values (the _s4_ kernels): a block's 4 nibbles are one halfword, spread to the bytes of a
 * word times 16 ((h | h << 8) & 0x00FF00FF, then (t | t << 4) << 4 & 0xF0F0F0F0: four
 * instructions with both masks in registers); the products come out times 16 into an
 * accumulator of their own, added (>> 4, exact) to the row's at the end of the row and every
 * MCUP_BLOCK4_S4_CHUNK blocks (the bound of mcup_dsp.h's MCUP_S4_CHUNK_GROUPS: 65528 values).
 *
 * Every test of the width (8 or 4), of the block column width (1 or 2 bytes) and of the pixel
 * count (1 for FC, 2 for conv) is on a constant of an always_inline function, so each kernel file
 * compiles to loops written for its own case; a kernel dispatches on the block column width once
 * per call.
 */
#ifndef MCUP_BLOCK4_DSP_H
#define MCUP_BLOCK4_DSP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mcup_dsp.h"
#include "mcup_requant.h"
#include "mcup_sparse.h"

#define MCUP_BLOCK4_S4_CHUNK (2 * MCUP_S4_CHUNK_GROUPS) /* int4 blocks per flush of the x16 sums */

/* The weight matrix of a block4 kernel, whichever its struct (int8 or int4 values). */
typedef struct {
    const void *values; /* int8_t [4 * stored], or int4 nibbles uint8_t [2 * stored] */
    const void *block_cols;
    const void *row_ptr;
    int32_t row_ptr_bytes;
    int32_t rows, cols;
} mcup_block4_matrix;

/* A conv kernel's geometry (the fields of mcup_conv2d_block4_params before its pointers). */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
} mcup_block4_geometry;

/* Blocks of 4 in a row of `cols` values, the last one padded. */
static inline int32_t mcup_block4_blocks(int32_t cols)
{
    return (cols + 3) / 4;
}

/*
 * x + offset, n int8 values, into the q15-pair layout of whole blocks at dst[0], dst[stride], ...
 * (stride 2 interleaves two runs): the groups of 4 as mcup_s8_to_q15_pairs; a last 1..3 values
 * padded with zeros in the same lane order, [t0|t2], [t1|t3] (mcup_s8_to_q15_pairs's own tail
 * layout is another one).
 */
static inline void mcup_block4_to_q15(const int8_t *src, int32_t n, int32_t offset, int32_t *dst,
                                      int32_t stride)
{
    dst = mcup_s8_to_q15_pairs(src, n & ~3, offset, dst, stride);
    const int32_t tail = n & 3;
    if (tail > 0) {
        int32_t t[4] = {0, 0, 0, 0};
        for (int32_t i = 0; i < tail; i++) {
            t[i] = src[(n & ~3) + i] + offset;
        }
        dst[0] = mcup_pack16(t[0], t[2]);
        dst[stride] = mcup_pack16(t[1], t[3]);
    }
}

/* The 4 nibbles of an int4 block (halfword h, value 0 lowest) as the bytes of a word, times 16. */
static inline int32_t mcup_block4_s4_spread(uint32_t h, uint32_t bytes02, uint32_t high_nibbles)
{
    const uint32_t t = (h | h << 8) & bytes02;           /* bytes 0, 2: n1 n0, n3 n2 */
    return (int32_t)(((t | t << 4) << 4) & high_nibbles); /* byte i: 16 * n_i */
}

/* A value hidden from the optimizer by an empty asm, so that it stays in a register through a loop. */
static inline uint32_t mcup_block4_reg(uint32_t v)
{
    __asm__("" : "+r"(v));
    return v;
}

/*
 * a (b: the second pixel) + the products of one block, its weights w02 = [w0|w2] and w13 = [w1|w3],
 * with the x words of its block column at xp: [x0|x2], [x1|x3] (one pixel), or [a0|a2], [b0|b2],
 * [a1|a3], [b1|b3] (two). Each pair of words is one LDRD (MCUP_LOAD_PAIR: GCC 12 would load
 * them with an address add and two LDRs).
 */
static inline __attribute__((always_inline)) void
mcup_block4_mac(const int32_t *xp, int32_t pixels, int32_t w02, int32_t w13, int32_t *a, int32_t *b)
{
    int32_t x0, x1;
    MCUP_LOAD_PAIR(xp, 0, x0, x1);
    if (pixels == 1) {
        *a = __smlad(x0, w02, *a);
        *a = __smlad(x1, w13, *a);
        return;
    }
    int32_t x2, x3;
    MCUP_LOAD_PAIR(xp, 2, x2, x3);
    *a = __smlad(x0, w02, *a);
    *b = __smlad(x1, w02, *b);
    *a = __smlad(x2, w13, *a);
    *b = __smlad(x3, w13, *b);
}

/*
 * acc (acc_b: the second pixel) + the products of blocks [k, end) of one row with x, the block
 * columns `col_bytes` wide, the values `bits` wide. int8, per block: one index load, one address,
 * one (two) LDRD of x, one LDR of weights, 2 sign extensions, 2 (4) __smlad, the loop test: FC 10
 * instructions per block with GCC 12.2 -O2 (two blocks per pass: the same 10).
 */
static inline __attribute__((always_inline)) void
mcup_block4_row(const int32_t *x, int32_t pixels, const void *values, const void *block_cols,
                int32_t col_bytes, int32_t k, int32_t end, int32_t bits, int32_t *acc,
                int32_t *acc_b)
{
    const int32_t step = 2 * pixels; /* words of x per block */
    const uint8_t *c8 = (const uint8_t *)block_cols + k;
    const uint16_t *c16 = (const uint16_t *)block_cols + k;
    if (bits == 8) {
        const int8_t *v = (const int8_t *)values + 4 * k;
        int32_t a = *acc, b = *acc_b;
        for (const int8_t *const v_end = (const int8_t *)values + 4 * end; v != v_end;) {
            const uint32_t g = col_bytes == 1 ? *c8++ : *c16++; /* loads with post-increment */
            const int32_t w = mcup_read_s8x4(v);
            v += 4;
            mcup_block4_mac(x + step * g, pixels, __sxtb16(w), mcup_sxtb16_ror8(w), &a, &b);
        }
        *acc = a;
        *acc_b = b;
        return;
    }
    const uint8_t *v = (const uint8_t *)values + 2 * k;
    const uint32_t bytes02 = mcup_block4_reg(0x00FF00FFu);
    const uint32_t high_nibbles = mcup_block4_reg(0xF0F0F0F0u);
    while (k < end) {
        const int32_t chunk_end = end - k < MCUP_BLOCK4_S4_CHUNK ? end : k + MCUP_BLOCK4_S4_CHUNK;
        int32_t a = 0, b = 0; /* times 16 */
        for (; k < chunk_end; k++, v += 2) {
            uint16_t h;
            memcpy(&h, v, sizeof h); /* one LDRH */
            const int32_t w = mcup_block4_s4_spread(h, bytes02, high_nibbles);
            const uint32_t g = col_bytes == 1 ? *c8++ : *c16++;
            mcup_block4_mac(x + step * g, pixels, __sxtb16(w), mcup_sxtb16_ror8(w), &a, &b);
        }
        *acc = (int32_t)((uint32_t)*acc + (uint32_t)(a >> 4)); /* exact; wraps like int32 */
        *acc_b = (int32_t)((uint32_t)*acc_b + (uint32_t)(b >> 4));
    }
}

static inline int8_t mcup_block4_requant(const mcup_quant_params *q, int32_t acc, int32_t c)
{
    return mcup_requantize_s8(acc, q->multiplier[c], q->shift[c], q->output_offset, q->act_min,
                              q->act_max);
}

/* Every row of m against one input in scratch (FC), block columns col_bytes wide. */
static inline __attribute__((always_inline)) void
mcup_block4_fc_rows(const mcup_block4_matrix *m, const mcup_quant_params *q, const int32_t *x,
                    int8_t *output, int32_t bits, int32_t col_bytes)
{
    int32_t k = mcup_sparse_row_ptr(m->row_ptr, m->row_ptr_bytes, 0);
    for (int32_t o = 0; o < m->rows; o++) {
        const int32_t end = mcup_sparse_row_ptr(m->row_ptr, m->row_ptr_bytes, o + 1);
        int32_t acc = q->bias != NULL ? q->bias[o] : 0;
        int32_t unused = 0;
        mcup_block4_row(x, 1, m->values, m->block_cols, col_bytes, k, end, bits, &acc, &unused);
        k = end;
        output[o] = mcup_block4_requant(q, acc, o);
    }
}

/* Fully connected: the input converted once (8 bytes of scratch per block), then every row. */
static inline __attribute__((always_inline)) void
mcup_block4_fc_dsp(const mcup_block4_matrix *m, const mcup_quant_params *q, const int8_t *input,
                   int8_t *output, void *scratch, int32_t bits)
{
    int32_t *x = scratch;
    mcup_block4_to_q15(input, m->cols, q->input_offset, x, 1);
    if (mcup_block4_col_bytes(m->cols) == 1) {
        mcup_block4_fc_rows(m, q, x, output, bits, 1);
    } else {
        mcup_block4_fc_rows(m, q, x, output, bits, 2);
    }
}

/*
 * The im2col patch of output pixel `pix` as int8, the input's zero point (-offset: 0 once the
 * offset is added) in the padding and in the columns that pad the last block: `padded` bytes.
 * Kernel rows inside the image are copied as runs (dil_w 1) or tap by tap. Out of line: it runs
 * twice per pair of pixels, and the time goes in the row walks.
 */
static __attribute__((noinline, unused)) void
mcup_block4_stage(const mcup_block4_geometry *g, const int8_t *input, int32_t pix, int32_t offset,
                  int8_t *dst, int32_t padded)
{
    const int zp = (int)(int8_t)(-offset); /* input_offset is in [-127, 128] */
    const int32_t oy = pix / g->out_w;
    const int32_t ox = pix - oy * g->out_w;
    const int32_t y0 = oy * g->stride_h - g->pad_top;
    const int32_t x0 = ox * g->stride_w - g->pad_left;
    const int32_t row = g->k_w * g->in_c;
    int8_t *d = dst;
    for (int32_t ky = 0; ky < g->k_h; ky++, d += row) {
        const int32_t iy = y0 + ky * g->dil_h;
        if (iy < 0 || iy >= g->in_h) {
            memset(d, zp, (size_t)row);
            continue;
        }
        const int8_t *line = input + iy * g->in_w * g->in_c;
        if (g->dil_w == 1) {
            const int32_t left = x0 < 0 ? (-x0 < g->k_w ? -x0 : g->k_w) : 0; /* taps left of the image */
            const int32_t over = x0 + g->k_w - g->in_w;                       /* taps right of it */
            const int32_t right = over > 0 ? (over < g->k_w - left ? over : g->k_w - left) : 0;
            const int32_t inside = g->k_w - left - right;
            memset(d, zp, (size_t)(left * g->in_c));
            if (inside > 0) {
                memcpy(d + left * g->in_c, line + (x0 + left) * g->in_c, (size_t)(inside * g->in_c));
            }
            memset(d + (left + inside) * g->in_c, zp, (size_t)(right * g->in_c));
            continue;
        }
        for (int32_t kx = 0; kx < g->k_w; kx++) { /* dilated columns: tap by tap */
            const int32_t ix = x0 + kx * g->dil_w;
            if (ix < 0 || ix >= g->in_w) {
                memset(d + kx * g->in_c, zp, (size_t)g->in_c);
            } else {
                memcpy(d + kx * g->in_c, line + ix * g->in_c, (size_t)g->in_c);
            }
        }
    }
    memset(d, zp, (size_t)(dst + padded - d));
}

/* Every output channel for one pair of pixels (out_b NULL: an odd last pixel paired with itself). */
static inline __attribute__((always_inline)) void
mcup_block4_conv_channels(const mcup_block4_matrix *m, const mcup_quant_params *q, const int32_t *x,
                          int8_t *out_a, int8_t *out_b, int32_t bits, int32_t col_bytes)
{
    int32_t k = mcup_sparse_row_ptr(m->row_ptr, m->row_ptr_bytes, 0);
    for (int32_t oc = 0; oc < m->rows; oc++) {
        const int32_t end = mcup_sparse_row_ptr(m->row_ptr, m->row_ptr_bytes, oc + 1);
        int32_t a = q->bias != NULL ? q->bias[oc] : 0;
        int32_t b = a;
        mcup_block4_row(x, 2, m->values, m->block_cols, col_bytes, k, end, bits, &a, &b);
        k = end;
        out_a[oc] = mcup_block4_requant(q, a, oc);
        if (out_b != NULL) {
            out_b[oc] = mcup_block4_requant(q, b, oc);
        }
    }
}

/*
 * 2-D convolution, output pixels two at a time: each patch staged as int8 (mcup_block4_stage),
 * then converted into its lane of the interleaved q15 pairs; scratch holds the 4 words per block
 * of the two patches, then the int8 stage (4 bytes per block).
 */
static inline __attribute__((always_inline)) void
mcup_block4_conv_dsp(const mcup_block4_geometry *g, const mcup_block4_matrix *m,
                     const mcup_quant_params *q, const int8_t *input, int8_t *output,
                     void *scratch, int32_t bits)
{
    const int32_t padded = 4 * mcup_block4_blocks(m->cols); /* values of a patch, whole blocks */
    int32_t *x = scratch;                                     /* 4 words per block */
    int8_t *stage = (int8_t *)(x + padded);
    const int32_t out_pixels = g->out_h * g->out_w;
    for (int32_t pix = 0; pix < out_pixels; pix += 2) {
        const int32_t pix_b = pix + 1 < out_pixels ? pix + 1 : pix; /* odd last pixel: itself */
        mcup_block4_stage(g, input, pix, q->input_offset, stage, padded);
        mcup_s8_to_q15_pairs(stage, padded, q->input_offset, x, 2);
        mcup_block4_stage(g, input, pix_b, q->input_offset, stage, padded);
        mcup_s8_to_q15_pairs(stage, padded, q->input_offset, x + 1, 2);
        int8_t *out_a = output + pix * g->out_c;
        int8_t *out_b = pix_b != pix ? output + pix_b * g->out_c : NULL;
        if (mcup_block4_col_bytes(m->cols) == 1) {
            mcup_block4_conv_channels(m, q, x, out_a, out_b, bits, 1);
        } else {
            mcup_block4_conv_channels(m, q, x, out_a, out_b, bits, 2);
        }
    }
}

#endif /* MCUP_BLOCK4_DSP_H */
