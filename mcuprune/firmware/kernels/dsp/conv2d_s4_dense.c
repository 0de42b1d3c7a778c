/*
 * conv2d_s4_dense.c - 2-D convolution kernel, int4 weights, for cores with the DSP extension.
 * Parameters and layout: see mcup_conv2d_s4_params in mcup_nn.h; bit-identical to the reference
 * twin in firmware/kernels/reference/conv2d_s4_dense.c (and to mcup_conv2d_s8_dense on the same
 * integers). Any stride, padding and dilation.
 *
 * One path (the int8 kernel's im2col path, for int4 weights). Output pixels go two at a time:
 * both input patches (k = k_h * k_w * in_c values in the weights' [k_h][k_w][in_c] order,
 * padding taps 0) are copied into scratch as int16 with input_offset added, in the s4-pair layout
 * of mcup_dsp.h (groups of 8 values as four words), the two patches interleaved word by word:
 * [a b] per word of a group. When in_c is a multiple of 8 every tap converts straight into
 * scratch; otherwise each patch is first staged as int8 (the input zero point in the padding and
 * past k, up to a whole group), then converted at once. An odd last pixel is paired with itself.
 *
 * Two output channels are then computed for both pixels at once: per group of 8 values, 4 weight
 * loads (each row's word, read twice to free registers), 4 LDRD of patch words, 4 AND, 8 SXTB16
 * and 16 __smlad: 36 instructions per 32 MACs, one asm block on the target (in C, GCC 12 hoists
 * the sign extensions and runs out of registers); two groups per pass of the loop (76
 * instructions per 64 MACs). The sums come out times 16 and are flushed into
 * the int32 accumulators every MCUP_S4_CHUNK_GROUPS groups; a row's last 1..7 values are one more
 * group whose weight words are assembled from the row's last bytes. Requantization as in the int8
 * kernel: every result before the first store, the right-shift-only case apart.
 */
#include <stddef.h>
#include <string.h>

#include "mcup_dsp.h"
#include "mcup_nn.h"
#include "mcup_requant.h"
#include "mcup_s4.h"

/* Words of one patch in the s4-pair layout. */
static int32_t patch_words(const mcup_conv2d_s4_params *p)
{
    return 4 * ((p->k_h * p->k_w * p->in_c + 7) / 8);
}

/* Bytes of the int8 staging patch (whole groups), used when in_c is not a multiple of 8. */
static int32_t stage_bytes(const mcup_conv2d_s4_params *p)
{
    return (p->in_c & 7) != 0 ? (p->k_h * p->k_w * p->in_c + 7) & ~7 : 0;
}

int32_t mcup_conv2d_s4_dense_get_buffer_size(const mcup_conv2d_s4_params *p)
{
    return 2 * 4 * patch_words(p) + stage_bytes(p); /* two interleaved patches + int8 staging */
}

/*
 * The patch of output pixel (oy, ox) into every second word from dst (stride 2) in the s4-pair
 * layout; `stage` (stage_bytes) holds an int8 copy of it when in_c is not a multiple of 8.
 */
static void im2col_s4(const mcup_conv2d_s4_params *p, const int8_t *input, int32_t oy, int32_t ox,
                      int32_t *dst, int8_t *stage)
{
    const int32_t offset = p->q.input_offset;
    const int32_t y0 = oy * p->stride_h - p->pad_top;
    const int32_t x0 = ox * p->stride_w - p->pad_left;
    if ((p->in_c & 7) == 0) { /* every tap is whole groups of 8 */
        for (int32_t ky = 0, iy = y0; ky < p->k_h; ky++, iy += p->dil_h) {
            for (int32_t kx = 0, ix = x0; kx < p->k_w; kx++, ix += p->dil_w) {
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                    for (int32_t i = 0; i < p->in_c / 2; i++, dst += 2) {
                        *dst = 0; /* padding holds the input zero point: 0 after the offset */
                    }
                } else {
                    dst = mcup_s8_to_s4_pairs(input + (iy * p->in_w + ix) * p->in_c, p->in_c, offset,
                                              dst, 2);
                }
            }
        }
        return;
    }
    const int8_t zero_point = (int8_t)(-offset);
    const int32_t k = p->k_h * p->k_w * p->in_c;
    int8_t *s = stage;
    for (int32_t ky = 0, iy = y0; ky < p->k_h; ky++, iy += p->dil_h) {
        for (int32_t kx = 0, ix = x0; kx < p->k_w; kx++, ix += p->dil_w, s += p->in_c) {
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                memset(s, zero_point, (size_t)p->in_c);
            } else {
                memcpy(s, input + (iy * p->in_w + ix) * p->in_c, (size_t)p->in_c);
            }
        }
    }
    memset(stage + k, zero_point, (size_t)(stage_bytes(p) - k)); /* the last group's padding: 0 */
    mcup_s8_to_s4_pairs(stage, stage_bytes(p), offset, dst, 2);
}

/*
 * One group of 8 values, two channels (weight rows at *w0, *w1, advanced by a word), two pixels
 * (the group's 8 words at x: [a b] for [x0|x4], [x2|x6], [x1|x5], [x3|x7]): 16 * the products
 * added to a0/b0 (channel 0, pixels a and b) and a1/b1. On the target one asm block of 36
 * instructions in 13 registers.
 */
static inline __attribute__((always_inline)) void group_2x2(const int32_t *x, const uint8_t **w0,
                                                            const uint8_t **w1, uint32_t mask,
                                                            int32_t acc[4])
{
#if defined(__ARM_FEATURE_DSP)
    uint32_t v0, v1, s;
    int32_t xa, xb;
    __asm__("ldr    %[v0], [%[w0]]\n\t"
            "ldr    %[v1], [%[w1]]\n\t"
            "and    %[v0], %[m], %[v0], lsl #4\n\t" /* values 0 2 4 6 of channel 0, times 16 */
            "and    %[v1], %[m], %[v1], lsl #4\n\t" /* ... of channel 1 */
            "ldrd   %[xa], %[xb], [%[x]]\n\t"        /* [x0|x4] of pixels a and b */
            "sxtb16 %[s], %[v0]\n\t"
            "smlad  %[a0], %[xa], %[s], %[a0]\n\t"
            "smlad  %[b0], %[xb], %[s], %[b0]\n\t"
            "sxtb16 %[s], %[v1]\n\t"
            "smlad  %[a1], %[xa], %[s], %[a1]\n\t"
            "smlad  %[b1], %[xb], %[s], %[b1]\n\t"
            "ldrd   %[xa], %[xb], [%[x], #8]\n\t" /* [x2|x6] */
            "sxtb16 %[s], %[v0], ror #8\n\t"
            "smlad  %[a0], %[xa], %[s], %[a0]\n\t"
            "smlad  %[b0], %[xb], %[s], %[b0]\n\t"
            "sxtb16 %[s], %[v1], ror #8\n\t"
            "smlad  %[a1], %[xa], %[s], %[a1]\n\t"
            "smlad  %[b1], %[xb], %[s], %[b1]\n\t"
            "ldr    %[v0], [%[w0]], #4\n\t" /* the words again: values 1 3 5 7 */
            "ldr    %[v1], [%[w1]], #4\n\t"
            "and    %[v0], %[v0], %[m]\n\t"
            "and    %[v1], %[v1], %[m]\n\t"
            "ldrd   %[xa], %[xb], [%[x], #16]\n\t" /* [x1|x5] */
            "sxtb16 %[s], %[v0]\n\t"
            "smlad  %[a0], %[xa], %[s], %[a0]\n\t"
            "smlad  %[b0], %[xb], %[s], %[b0]\n\t"
            "sxtb16 %[s], %[v1]\n\t"
            "smlad  %[a1], %[xa], %[s], %[a1]\n\t"
            "smlad  %[b1], %[xb], %[s], %[b1]\n\t"
            "ldrd   %[xa], %[xb], [%[x], #24]\n\t" /* [x3|x7] */
            "sxtb16 %[s], %[v0], ror #8\n\t"
            "smlad  %[a0], %[xa], %[s], %[a0]\n\t"
            "smlad  %[b0], %[xb], %[s], %[b0]\n\t"
            "sxtb16 %[s], %[v1], ror #8\n\t"
            "smlad  %[a1], %[xa], %[s], %[a1]\n\t"
            "smlad  %[b1], %[xb], %[s], %[b1]"
            : [a0] "+r"(acc[0]), [b0] "+r"(acc[1]), [a1] "+r"(acc[2]), [b1] "+r"(acc[3]),
              [w0] "+r"(*w0), [w1] "+r"(*w1), [v0] "=&r"(v0), [v1] "=&r"(v1), [xa] "=&r"(xa),
              [xb] "=&r"(xb), [s] "=&r"(s)
            : [x] "r"(x), [m] "r"(mask)
            : "memory");
#else
    (void)mask;
    const uint32_t v0 = mcup_read_u8x4(*w0), v1 = mcup_read_u8x4(*w1);
    *w0 += 4;
    *w1 += 4;
    acc[0] = mcup_s4_mac_group(x, 2, v0, acc[0]);
    acc[1] = mcup_s4_mac_group(x + 1, 2, v0, acc[1]);
    acc[2] = mcup_s4_mac_group(x, 2, v1, acc[2]);
    acc[3] = mcup_s4_mac_group(x + 1, 2, v1, acc[3]);
#endif
}

/* One group of one channel (weight word v) for both pixels: 16 * the products into a, b. */
static inline void group_1x2(const int32_t *x, uint32_t v, int32_t *a, int32_t *b)
{
    *a = mcup_s4_mac_group(x, 2, v, *a);
    *b = mcup_s4_mac_group(x + 1, 2, v, *b);
}

/*
 * out[i][c] = requantized acc[i] for the two pixels, the channel's constants loaded once, both
 * results computed before the first store (an int8 store may alias anything). `right_only`, a
 * constant: the caller checked shift <= 0, a multiplier other than INT32_MIN and act_max == 127,
 * which lets GCC drop the left shift, the overflow test and the top clamp.
 */
static inline __attribute__((always_inline)) void requant_pair(const int32_t acc[2],
                                                               int8_t *const out[2], int32_t c,
                                                               const mcup_quant_params *q,
                                                               const int right_only)
{
    int32_t multiplier = q->multiplier[c];
    int32_t shift = q->shift[c];
    int32_t act_max = q->act_max;
    if (right_only) {
        if (shift > 0 || multiplier == INT32_MIN) {
            __builtin_unreachable(); /* the caller checked */
        }
        act_max = 127;
    }
    const int8_t y0 = mcup_requantize_s8(acc[0], multiplier, shift, q->output_offset, q->act_min,
                                         act_max);
    const int8_t y1 = mcup_requantize_s8(acc[1], multiplier, shift, q->output_offset, q->act_min,
                                         act_max);
    out[0][c] = y0;
    if (out[1] != NULL) {
        out[1][c] = y1;
    }
}

static inline void requant_channel(const int32_t acc[2], int8_t *const out[2], int32_t c,
                                   const mcup_quant_params *q)
{
    if (q->shift[c] <= 0 && q->multiplier[c] != INT32_MIN && q->act_max == 127) {
        requant_pair(acc, out, c, q, 1);
    } else {
        requant_pair(acc, out, c, q, 0);
    }
}

/* All output channels of two pixels whose patches are interleaved at x; out[1] NULL: one pixel. */
static void two_pixels(const mcup_conv2d_s4_params *p, const int32_t *x, int8_t *const out[2])
{
    const mcup_quant_params q = p->q; /* a local: the int8 stores below may alias *p */
    const uint8_t *const weights = p->weights;
    const int32_t out_c = p->out_c;
    const int32_t k = p->k_h * p->k_w * p->in_c;
    const int32_t row_bytes = mcup_s4_row_bytes(k);
    const int32_t groups = k >> 3;                 /* whole groups of 8 */
    const int32_t tail_bytes = ((k & 7) + 1) >> 1; /* bytes of a last partial group, 0 if none */
    const int32_t *x_tail = x + 8 * groups;
    const uint32_t mask = mcup_s4_mask();
    int32_t c = 0;
    for (; c + 1 < out_c; c += 2) {
        const uint8_t *w0 = weights + c * row_bytes;
        const uint8_t *w1 = w0 + row_bytes;
        const int32_t bias0 = q.bias != NULL ? q.bias[c] : 0;
        const int32_t bias1 = q.bias != NULL ? q.bias[c + 1] : 0;
        uint32_t acc0[2] = {(uint32_t)bias0, (uint32_t)bias0};
        uint32_t acc1[2] = {(uint32_t)bias1, (uint32_t)bias1};
        const int32_t *xp = x;
        for (int32_t g = 0; g < groups; g += MCUP_S4_CHUNK_GROUPS) {
            int32_t sum[4] = {0, 0, 0, 0}; /* 16 * (a0, b0, a1, b1) */
            const int32_t n = groups - g < MCUP_S4_CHUNK_GROUPS ? groups - g : MCUP_S4_CHUNK_GROUPS;
            for (int32_t i = n >> 1; i > 0; i--, xp += 16) { /* two groups per pass: 72 + 4 */
                group_2x2(xp, &w0, &w1, mask, sum);
                group_2x2(xp + 8, &w0, &w1, mask, sum);
            }
            if ((n & 1) != 0) {
                group_2x2(xp, &w0, &w1, mask, sum);
                xp += 8;
            }
            acc0[0] += (uint32_t)(sum[0] >> 4); /* exact: multiples of 16 */
            acc0[1] += (uint32_t)(sum[1] >> 4);
            acc1[0] += (uint32_t)(sum[2] >> 4);
            acc1[1] += (uint32_t)(sum[3] >> 4);
        }
        if (tail_bytes > 0) {
            int32_t sum[4] = {0, 0, 0, 0};
            group_1x2(x_tail, mcup_s4_tail_word(w0, tail_bytes), &sum[0], &sum[1]);
            group_1x2(x_tail, mcup_s4_tail_word(w1, tail_bytes), &sum[2], &sum[3]);
            acc0[0] += (uint32_t)(sum[0] >> 4);
            acc0[1] += (uint32_t)(sum[1] >> 4);
            acc1[0] += (uint32_t)(sum[2] >> 4);
            acc1[1] += (uint32_t)(sum[3] >> 4);
        }
        const int32_t r0[2] = {(int32_t)acc0[0], (int32_t)acc0[1]};
        const int32_t r1[2] = {(int32_t)acc1[0], (int32_t)acc1[1]};
        requant_channel(r0, out, c, &q);
        requant_channel(r1, out, c + 1, &q);
    }
    if (c < out_c) { /* odd out_c: the last channel alone */
        const uint8_t *w = weights + c * row_bytes;
        const int32_t bias = q.bias != NULL ? q.bias[c] : 0;
        uint32_t acc[2] = {(uint32_t)bias, (uint32_t)bias};
        const int32_t *xp = x;
        for (int32_t g = 0; g < groups; g += MCUP_S4_CHUNK_GROUPS) {
            int32_t a = 0, b = 0;
            const int32_t n = groups - g < MCUP_S4_CHUNK_GROUPS ? groups - g : MCUP_S4_CHUNK_GROUPS;
            for (int32_t i = n; i > 0; i--, xp += 8, w += 4) {
                group_1x2(xp, mcup_read_u8x4(w), &a, &b);
            }
            acc[0] += (uint32_t)(a >> 4);
            acc[1] += (uint32_t)(b >> 4);
        }
        if (tail_bytes > 0) {
            int32_t a = 0, b = 0;
            group_1x2(x_tail, mcup_s4_tail_word(w, tail_bytes), &a, &b);
            acc[0] += (uint32_t)(a >> 4);
            acc[1] += (uint32_t)(b >> 4);
        }
        const int32_t r[2] = {(int32_t)acc[0], (int32_t)acc[1]};
        requant_channel(r, out, c, &q);
    }
}

void mcup_conv2d_s4_dense(const mcup_conv2d_s4_params *p, const int8_t *input, int8_t *output,
                          void *scratch)
{
    int32_t *cols = scratch;
    int8_t *stage = (int8_t *)(cols + 2 * patch_words(p));
    const int32_t pixels = p->out_h * p->out_w;
    for (int32_t pix = 0; pix < pixels; pix += 2) {
        const int32_t pix_b = pix + 1 < pixels ? pix + 1 : pix; /* odd last pixel: itself */
        const int32_t oy_a = pix / p->out_w, oy_b = pix_b / p->out_w;
        im2col_s4(p, input, oy_a, pix - oy_a * p->out_w, cols, stage);
        im2col_s4(p, input, oy_b, pix_b - oy_b * p->out_w, cols + 1, stage);
        int8_t *const out[2] = {output + pix * p->out_c, pix_b != pix ? output + pix_b * p->out_c : NULL};
        two_pixels(p, cols, out);
    }
}
