/*
 * mcup_csr_walk_dsp.h - the csr8 and csr4 DSP kernels' walks, written once. Included only by
 * firmware/kernels/dsp/{fc,conv2d}_s8_csr{8,4}.c; apart from mcup_csr_walk.h because it needs
 * mcup_dsp.h, which refuses cores without the DSP extension (the reference kernels build there).
 *
 * As in mcup_csr_walk.h, each kernel file passes its delta width as a constant and the walks are
 * always inlined, so the tests of the width fold away and each file gets the code of a walk
 * written for its format alone. The same goes for the number of pixels a row serves (mcup_csr_row,
 * 1 for fc, 2 for conv), so both ops share one row walk.
 *
 * Entries go in blocks: one 32-bit load of deltas covers 4 entries (csr8) or 8 (csr4); each 4 of
 * them take one word of values against four x words regrouped in pairs, two __smlad per pixel.
 * Inner loops with GCC 12.2 -O2 for Cortex-M4, per block: fc csr8 21 instructions (4 MACs), fc
 * csr4 43 (8 MACs), conv csr8 29 (8 MACs: two pixels share every index update and load), conv
 * csr4 68 (16 MACs).
 */
#ifndef MCUP_CSR_WALK_DSP_H
#define MCUP_CSR_WALK_DSP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mcup_csr_walk.h"
#include "mcup_dsp.h"
#include "mcup_requant.h"
#include "mcup_s4.h"
#include "mcup_sparse.h"

static inline uint32_t mcup_csr_read_u8x4(const uint8_t *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w); /* one LDR, any alignment */
    return w;
}

/* Column delta i (0..3) of a word of deltas. */
static inline uint32_t mcup_csr_word_delta(uint32_t dw, int32_t i, mcup_csr_width width)
{
    return (dw >> ((uint32_t)width * (uint32_t)i)) & ((1u << width) - 1u);
}

/*
 * The accumulators of one output channel: one pixel (fc, x is the input as int16; only `a` is
 * used) or two (conv, x holds two patches interleaved as words [a|b]).
 */
typedef struct {
    int32_t a, b;
} mcup_csr_acc;

/* x[col]: the int16 zero-extended (one pixel) or the word [a|b] (two pixels). */
static inline uint32_t mcup_csr_load(const void *x, uint32_t col, int32_t pixels)
{
    return pixels == 1 ? ((const uint16_t *)x)[col] : ((const uint32_t *)x)[col];
}

/*
 * acc + the products of four entries whose deltas are the low 4 * width bits of dw and whose
 * values are the word vw: the x words P0..P3 regrouped as [a0|a2], [a1|a3] (and [b0|b2],
 * [b1|b3], hi = 0xFFFF0000) against __sxtb16 of vw and of its rotation.
 */
static inline void mcup_csr_four(const void *x, int32_t pixels, uint32_t *col, uint32_t dw,
                                 int32_t vw, mcup_csr_acc *acc, uint32_t hi, mcup_csr_width width)
{
    uint32_t c = *col;
    c += mcup_csr_word_delta(dw, 0, width);
    const uint32_t p0 = mcup_csr_load(x, c, pixels);
    c += mcup_csr_word_delta(dw, 1, width);
    const uint32_t p1 = mcup_csr_load(x, c, pixels);
    c += mcup_csr_word_delta(dw, 2, width);
    const uint32_t p2 = mcup_csr_load(x, c, pixels);
    c += mcup_csr_word_delta(dw, 3, width);
    const uint32_t p3 = mcup_csr_load(x, c, pixels);
    *col = c;
    const int32_t w02 = __sxtb16(vw);
    const int32_t w13 = __sxtb16(mcup_ror8(vw));
    acc->a = __smlad((int32_t)((p0 & 0xFFFFu) | p2 << 16), w02, acc->a);
    acc->a = __smlad((int32_t)((p1 & 0xFFFFu) | p3 << 16), w13, acc->a);
    if (pixels == 2) {
        acc->b = __smlad((int32_t)((p0 >> 16) | (p2 & hi)), w02, acc->b);
        acc->b = __smlad((int32_t)((p1 >> 16) | (p3 & hi)), w13, acc->b);
    }
}

/* acc + the product of one entry: column delta `delta`, value w. */
static inline void mcup_csr_one(const void *x, int32_t pixels, uint32_t *col, uint32_t delta,
                                int32_t w, mcup_csr_acc *acc)
{
    *col += delta;
    const int32_t pw = (int32_t)mcup_csr_load(x, *col, pixels);
    acc->a = __smlabb(pw, w, acc->a); /* low half times w, wrapping like int32 */
    if (pixels == 2) {
        acc->b = __smlatb(pw, w, acc->b); /* high half */
    }
}

/*
 * acc + the products of one row, its n entries from entry `start` on, with x. A csr4 row may
 * start in the high nibble of a byte (the nibble stream runs across rows): it takes that entry
 * alone first, so that its blocks read whole bytes; after its blocks of 8, one block of 4 (two
 * bytes of deltas) if left. Every row ends with its last 0..3 entries one by one.
 */
static inline __attribute__((always_inline)) void
mcup_csr_row(const int8_t *values, const uint8_t *deltas, int32_t start, int32_t n,
             const void *x, int32_t pixels, mcup_csr_acc *acc, mcup_csr_width width)
{
    const uint32_t block = 32u / width; /* entries per word of deltas */
    const int8_t *v = values + start;
    uint32_t col = 0;
    if (width == MCUP_CSR4 && (start & 1) != 0 && n > 0) {
        mcup_csr_one(x, pixels, &col, deltas[start >> 1] >> 4, *v++, acc);
        start++;
        n--;
    }
    const uint8_t *d = deltas + (width == MCUP_CSR4 ? start >> 1 : start);
    const int8_t *const v_end = v + n;
    /*
     * The high-halves mask of the two-pixel regrouping, hidden from the optimizer by an empty asm
     * so that it stays in a register through the block loop. Left a constant, GCC 12 rebuilds it
     * with two shifts per use when the loop runs short of registers (conv csr8: 31 instead of 29
     * instructions per block). The asm emits nothing.
     */
    uint32_t hi = 0xFFFF0000u;
    __asm__("" : "+r"(hi));
    for (uint32_t i = (uint32_t)n / block; i > 0; i--) {
        const uint32_t dw = mcup_csr_read_u8x4(d);
        d += 4;
        mcup_csr_four(x, pixels, &col, dw, mcup_read_s8x4(v), acc, hi, width);
        if (width == MCUP_CSR4) {
            mcup_csr_four(x, pixels, &col, dw >> 16, mcup_read_s8x4(v + 4), acc, hi, width);
        }
        v += block;
    }
    if (width == MCUP_CSR4 && v_end - v >= 4) {
        const uint32_t dw = (uint32_t)d[0] | (uint32_t)d[1] << 8;
        mcup_csr_four(x, pixels, &col, dw, mcup_read_s8x4(v), acc, hi, width);
        d += 2;
        v += 4;
    }
    for (int32_t j = 0; v + j < v_end; j++) { /* the row's last 0..3 entries */
        mcup_csr_one(x, pixels, &col, (uint32_t)mcup_csr_delta(d, j, width), v[j], acc);
    }
}

static inline int8_t mcup_csr_requant(const mcup_quant_params *q, int32_t acc, int32_t c)
{
    return mcup_requantize_s8(acc, q->multiplier[c], q->shift[c], q->output_offset, q->act_min,
                              q->act_max);
}

/*
 * Fully connected: the input (plus input_offset) is converted once to int16 in scratch, so a
 * non-zero costs an index update and one load (LDRH).
 */
static inline __attribute__((always_inline)) void
mcup_csr_walk_fc_dsp(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch, mcup_csr_width width)
{
    const mcup_quant_params *q = &p->q;
    mcup_sparse_to_s16(input, p->in_features, q->input_offset, scratch, 1);
    int32_t start = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t o = 0; o < p->out_features; o++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, o + 1);
        mcup_csr_acc acc = {q->bias != NULL ? q->bias[o] : 0, 0};
        mcup_csr_row(p->values, p->deltas, start, end - start, scratch, 1, &acc, width);
        start = end;
        output[o] = mcup_csr_requant(q, acc.a, o);
    }
}

/*
 * im2col of output pixel `pix` into lane `lane` (0 = low halves, 1 = high) of the words. Out of
 * line: it runs twice per pair of pixels, and a copy at each call would only grow the code (the
 * time goes in the row walks). `unused`: the fc kernels include it too.
 */
static __attribute__((noinline, unused)) void
mcup_csr_im2col_lane(const mcup_conv2d_csr_params *p, const int8_t *input, int32_t pix,
                     int16_t *lanes, int32_t lane)
{
    const int32_t oy = pix / p->out_w;
    const int32_t ox = pix - oy * p->out_w;
    mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                           oy * p->stride_h - p->pad_top, ox * p->stride_w - p->pad_left,
                           p->dil_h, p->dil_w, p->q.input_offset, lanes + lane, 2);
}

/*
 * 2-D convolution, output pixels two at a time: their im2col patches (int16, input_offset added,
 * 0 in the padding) are interleaved in scratch, one word [a|b] per patch position, so every
 * non-zero serves both pixels. An odd last pixel is paired with itself.
 */
static inline __attribute__((always_inline)) void
mcup_csr_walk_conv2d_dsp(const mcup_conv2d_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch, mcup_csr_width width)
{
    const mcup_quant_params *q = &p->q;
    const int32_t out_pixels = p->out_h * p->out_w;
    for (int32_t pix = 0; pix < out_pixels; pix += 2) {
        const int32_t pix_b = pix + 1 < out_pixels ? pix + 1 : pix; /* odd last pixel: itself */
        mcup_csr_im2col_lane(p, input, pix, scratch, 0);
        mcup_csr_im2col_lane(p, input, pix_b, scratch, 1);
        int8_t *out_a = output + pix * p->out_c;
        int8_t *out_b = pix_b != pix ? output + pix_b * p->out_c : NULL;
        int32_t start = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
        for (int32_t oc = 0; oc < p->out_c; oc++) {
            const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, oc + 1);
            const int32_t bias = q->bias != NULL ? q->bias[oc] : 0;
            mcup_csr_acc acc = {bias, bias};
            mcup_csr_row(p->values, p->deltas, start, end - start, scratch, 2, &acc, width);
            start = end;
            out_a[oc] = mcup_csr_requant(q, acc.a, oc);
            if (out_b != NULL) {
                out_b[oc] = mcup_csr_requant(q, acc.b, oc);
            }
        }
    }
}

/* --- int4 values (the _s4_csr8 / _s4_csr4 DSP kernels) ------------------------------------------
 *
 * The same walks with entry k's value the nibble k of `values` (mcup_sparse.h). Entries go in
 * blocks of 8: one word of values (8 nibbles, unpacked as in mcup_dsp.h: two ANDs, four sign
 * extensions), one (csr4) or two (csr8) words of deltas, eight x loads regrouped into the s4-pair
 * lanes [p0|p4], [p1|p5], [p2|p6], [p3|p7] (entry i + 4 met with entry i as soon as it is loaded,
 * so that at most four x words are live), four __smlad per pixel. The blocks' products come
 * out times 16: they go to an accumulator of their own, added (>> 4, exact) to the row's
 * accumulator after every MCUP_S4_CHUNK_GROUPS blocks and at the row's end. A row starting in a
 * high nibble (values and csr4 deltas share the parity of k) takes that entry alone first; after
 * the blocks of 8, one block of 4 if left (the int8 walk's mcup_csr_four, its 4 values spread from
 * a halfword to the bytes of a word, times 16, in 5 instructions); the row's last 0..3 entries go
 * one by one, two per byte of values (SBFX gives the value itself, no scaling).
 */

/*
 * acc16 + 16 * the products of 8 entries: deltas d0 (entries 0..3) and d1 (4..7) packed as
 * mcup_csr_word_delta reads them, values the word vw (8 nibbles).
 */
static inline __attribute__((always_inline)) void
mcup_csr_s4_eight(const void *x, int32_t pixels, uint32_t *col, uint32_t d0, uint32_t d1,
                  uint32_t vw, mcup_csr_acc *acc16, uint32_t mask, mcup_csr_width width)
{
    uint32_t c = *col;
    uint32_t p[4];
#pragma GCC unroll 4
    for (int32_t i = 0; i < 4; i++) { /* entries 0..3 */
        c += mcup_csr_word_delta(d0, i, width);
        p[i] = mcup_csr_load(x, c, pixels);
    }
    const int32_t even = (int32_t)((vw << 4) & mask), odd = (int32_t)(vw & mask);
    /* entries 4..7, each met with entry i - 4 as soon as it is loaded: lanes [w0|w4], [w1|w5], ... */
#pragma GCC unroll 4
    for (int32_t i = 0; i < 4; i++) {
        c += mcup_csr_word_delta(d1, i, width);
        const uint32_t pi = mcup_csr_load(x, c, pixels);
        const int32_t half = (i & 1) == 0 ? even : odd; /* i = 0, 2: even values; 1, 3: odd */
        const int32_t w = i < 2 ? __sxtb16(half) : mcup_sxtb16_ror8(half);
        acc16->a = __smlad(mcup_pack_lo16((int32_t)p[i], (int32_t)pi), w, acc16->a);
        if (pixels == 2) {
            acc16->b = __smlad(mcup_pack_hi16((int32_t)p[i], (int32_t)pi), w, acc16->b);
        }
    }
    *col = c;
}

/*
 * acc + the products of one row, its n entries from entry `start` on, with x (acc holds the bias).
 * See the section comment.
 */
static inline __attribute__((always_inline)) void
mcup_csr_row_s4(const uint8_t *values, const uint8_t *deltas, int32_t start, int32_t n,
                const void *x, int32_t pixels, mcup_csr_acc *acc, mcup_csr_width width)
{
    uint32_t col = 0;
    if ((start & 1) != 0 && n > 0) { /* a row starting in a high nibble: that entry alone */
        const uint32_t delta = (uint32_t)mcup_csr_delta(deltas, start, width);
        mcup_csr_one(x, pixels, &col, delta, mcup_s4_at(values, start), acc);
        start++;
        n--;
    }
    const uint32_t mask = 0xF0F0F0F0u; /* an immediate: a register is worth more in this loop */
    int32_t k = start;
    for (int32_t blocks = n >> 3; blocks > 0;) { /* chunks of blocks, flushed (mcup_dsp.h) */
        const int32_t m = blocks < MCUP_S4_CHUNK_GROUPS ? blocks : MCUP_S4_CHUNK_GROUPS;
        blocks -= m;
        mcup_csr_acc acc16 = {0, 0};
        const uint8_t *v = values + (k >> 1);
        const uint8_t *d = deltas + (width == MCUP_CSR4 ? k >> 1 : k);
        for (int32_t i = m; i > 0; i--) {
            const uint32_t d0 = mcup_csr_read_u8x4(d);
            const uint32_t d1 = width == MCUP_CSR4 ? d0 >> 16 : mcup_csr_read_u8x4(d + 4);
            d += width == MCUP_CSR4 ? 4 : 8;
            mcup_csr_s4_eight(x, pixels, &col, d0, d1, mcup_read_u8x4(v), &acc16, mask, width);
            v += 4;
        }
        k += 8 * m;
        acc->a = (int32_t)((uint32_t)acc->a + (uint32_t)(acc16.a >> 4)); /* exact; wraps like int32 */
        if (pixels == 2) {
            acc->b = (int32_t)((uint32_t)acc->b + (uint32_t)(acc16.b >> 4));
        }
    }
    const int32_t end = start + n;
    if (end - k >= 4) { /* one block of 4: the int8 walk's, on the values spread to bytes */
        const uint32_t h = (uint32_t)values[k >> 1] | (uint32_t)values[(k >> 1) + 1] << 8;
        const uint32_t t = (h | h << 8) & 0x00FF00FFu;          /* bytes 0, 2: n1 n0, n3 n2 */
        const uint32_t vw = ((t | t << 4) << 4) & 0xF0F0F0F0u; /* byte i: 16 * n_i */
        const uint8_t *d = deltas + (width == MCUP_CSR4 ? k >> 1 : k);
        const uint32_t dw = width == MCUP_CSR4 ? (uint32_t)d[0] | (uint32_t)d[1] << 8
                                               : mcup_csr_read_u8x4(d);
        uint32_t hi = 0xFFFF0000u;
        __asm__("" : "+r"(hi)); /* as in mcup_csr_row: kept in a register */
        mcup_csr_acc acc16 = {0, 0};
        mcup_csr_four(x, pixels, &col, dw, (int32_t)vw, &acc16, hi, width);
        acc->a = (int32_t)((uint32_t)acc->a + (uint32_t)(acc16.a >> 4));
        if (pixels == 2) {
            acc->b = (int32_t)((uint32_t)acc->b + (uint32_t)(acc16.b >> 4));
        }
        k += 4;
    }
    for (; k + 1 < end; k += 2) { /* the row's last 0..3 entries: k is even, a byte of values per two */
        const uint32_t v = values[k >> 1];
        const uint32_t d = width == MCUP_CSR4 ? deltas[k >> 1] : 0;
        mcup_csr_one(x, pixels, &col, width == MCUP_CSR4 ? d & 0xFu : deltas[k], mcup_s4_lo(v), acc);
        mcup_csr_one(x, pixels, &col, width == MCUP_CSR4 ? d >> 4 : deltas[k + 1], mcup_s4_hi(v), acc);
    }
    if (k < end) {
        const uint32_t delta = width == MCUP_CSR4 ? deltas[k >> 1] & 0xFu : deltas[k];
        mcup_csr_one(x, pixels, &col, delta, mcup_s4_lo(values[k >> 1]), acc);
    }
}

/* Fully connected, int4 values: the input as int16 in scratch, as mcup_csr_walk_fc_dsp. */
static inline __attribute__((always_inline)) void
mcup_csr_walk_fc_s4_dsp(const mcup_fc_s4_csr_params *p, const int8_t *input, int8_t *output,
                        void *scratch, mcup_csr_width width)
{
    const mcup_quant_params *q = &p->q;
    mcup_sparse_to_s16(input, p->in_features, q->input_offset, scratch, 1);
    int32_t start = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t o = 0; o < p->out_features; o++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, o + 1);
        mcup_csr_acc acc = {q->bias != NULL ? q->bias[o] : 0, 0};
        mcup_csr_row_s4(p->values, p->deltas, start, end - start, scratch, 1, &acc, width);
        start = end;
        output[o] = mcup_csr_requant(q, acc.a, o);
    }
}

/* im2col of output pixel `pix` into lane `lane` of the words (mcup_csr_im2col_lane, int4 struct). */
static __attribute__((noinline, unused)) void
mcup_csr_im2col_lane_s4(const mcup_conv2d_s4_csr_params *p, const int8_t *input, int32_t pix,
                        int16_t *lanes, int32_t lane)
{
    const int32_t oy = pix / p->out_w;
    const int32_t ox = pix - oy * p->out_w;
    mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                           oy * p->stride_h - p->pad_top, ox * p->stride_w - p->pad_left,
                           p->dil_h, p->dil_w, p->q.input_offset, lanes + lane, 2);
}

/* 2-D convolution, int4 values, output pixels two at a time (as mcup_csr_walk_conv2d_dsp). */
static inline __attribute__((always_inline)) void
mcup_csr_walk_conv2d_s4_dsp(const mcup_conv2d_s4_csr_params *p, const int8_t *input,
                            int8_t *output, void *scratch, mcup_csr_width width)
{
    const mcup_quant_params *q = &p->q;
    const int32_t out_pixels = p->out_h * p->out_w;
    for (int32_t pix = 0; pix < out_pixels; pix += 2) {
        const int32_t pix_b = pix + 1 < out_pixels ? pix + 1 : pix; /* odd last pixel: itself */
        mcup_csr_im2col_lane_s4(p, input, pix, scratch, 0);
        mcup_csr_im2col_lane_s4(p, input, pix_b, scratch, 1);
        int8_t *out_a = output + pix * p->out_c;
        int8_t *out_b = pix_b != pix ? output + pix_b * p->out_c : NULL;
        int32_t start = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
        for (int32_t oc = 0; oc < p->out_c; oc++) {
            const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, oc + 1);
            const int32_t bias = q->bias != NULL ? q->bias[oc] : 0;
            mcup_csr_acc acc = {bias, bias};
            mcup_csr_row_s4(p->values, p->deltas, start, end - start, scratch, 2, &acc, width);
            start = end;
            out_a[oc] = mcup_csr_requant(q, acc.a, oc);
            if (out_b != NULL) {
                out_b[oc] = mcup_csr_requant(q, acc.b, oc);
            }
        }
    }
}

#endif /* MCUP_CSR_WALK_DSP_H */
