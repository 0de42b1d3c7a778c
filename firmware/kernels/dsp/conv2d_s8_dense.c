/*
 * conv2d_s8_dense.c - 2-D convolution int8 kernel for cores with the DSP extension.
 * Parameters and layout: see mcup_conv2d_params in mcup_nn.h; bit-identical to the reference
 * twin in firmware/kernels/reference/conv2d_s8_dense.c.
 *
 * Output pixels are taken two at a time. Both input patches (k = k_h * k_w * in_c values in the
 * weights' [k_h][k_w][in_c] order, padding taps as 0) are copied into scratch as int16 with
 * input_offset added (im2col), in the q15-pair layout of mcup_dsp.h with the two patches
 * interleaved word by word (stride 2): [a02 b02 a13 b13] per group of 4 values. Two output
 * channels are then computed for both pixels at once: per 16 MACs, 4 patch loads, 2 weight
 * loads, 2 rotates, 4 sign extensions and 8 __smlad. An odd pixel count ends with one plain
 * (stride 1) patch; an odd channel count with one row.
 */
#include <stddef.h>
#include <string.h>

#include "mcup_dsp.h"
#include "mcup_nn.h"
#include "mcup_requant.h"

/* Words of one patch in scratch: k int16 values, padded to a word. */
static int32_t patch_words(const mcup_conv2d_params *p)
{
    return (p->k_h * p->k_w * p->in_c + 1) / 2;
}

/* Bytes of the int8 staging patch, used when in_c is not a multiple of 4 (0 otherwise). */
static int32_t stage_bytes(const mcup_conv2d_params *p)
{
    return (p->in_c & 3) != 0 ? (p->k_h * p->k_w * p->in_c + 3) & ~3 : 0;
}

int32_t mcup_conv2d_s8_dense_get_buffer_size(const mcup_conv2d_params *p)
{
    return 2 * 4 * patch_words(p) + stage_bytes(p); /* two int16 patches + int8 staging */
}

/*
 * Writes the patch of output pixel (oy, ox) to dst in the q15-pair layout with `stride`.
 * `stage` (stage_bytes(p)) holds an int8 copy of the patch when in_c is not a multiple of 4.
 */
static void im2col_q15(const mcup_conv2d_params *p, const int8_t *input, int32_t oy, int32_t ox,
                       int32_t *dst, int32_t stride, int8_t *stage)
{
    const int32_t offset = p->q.input_offset;
    const int32_t y0 = oy * p->stride - p->pad;
    const int32_t x0 = ox * p->stride - p->pad;
    if ((p->in_c & 3) == 0) {
        /* Every tap is whole groups of 4: convert pixel by pixel straight into dst. */
        for (int32_t iy = y0; iy < y0 + p->k_h; iy++) {
            for (int32_t ix = x0; ix < x0 + p->k_w; ix++) {
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                    for (int32_t i = 0; i < p->in_c / 2; i++) {
                        *dst = 0; /* padding holds the input zero point: 0 after the offset */
                        dst += stride;
                    }
                } else {
                    dst = mcup_s8_to_q15_pairs(input + (iy * p->in_w + ix) * p->in_c, p->in_c,
                                               offset, dst, stride);
                }
            }
        }
        return;
    }
    /*
     * General case (e.g. in_c == 1): groups of 4 span taps. Copy the patch as int8 first: a
     * kernel row is one contiguous run of k_w * in_c input bytes, clipped at the image border,
     * with padding bytes holding the input zero point. Then convert the whole patch at once.
     */
    const int8_t zero_point = (int8_t)(-offset);
    const int32_t row = p->k_w * p->in_c;
    const int32_t left = x0 < 0 ? (-x0 < p->k_w ? -x0 : p->k_w) : 0; /* taps left of the image */
    const int32_t over = x0 + p->k_w - p->in_w;                       /* taps right of it */
    const int32_t right = over > 0 ? (over < p->k_w - left ? over : p->k_w - left) : 0;
    const int32_t inside = p->k_w - left - right;
    int8_t *s = stage;
    for (int32_t iy = y0; iy < y0 + p->k_h; iy++, s += row) {
        if (iy < 0 || iy >= p->in_h) {
            memset(s, zero_point, (size_t)row);
            continue;
        }
        memset(s, zero_point, (size_t)(left * p->in_c));
        if (inside > 0) {
            memcpy(s + left * p->in_c, input + (iy * p->in_w + x0 + left) * p->in_c,
                   (size_t)(inside * p->in_c));
        }
        memset(s + (left + inside) * p->in_c, zero_point, (size_t)(right * p->in_c));
    }
    mcup_s8_to_q15_pairs(stage, p->k_h * row, offset, dst, stride);
}

static inline int8_t requant(const mcup_quant_params *q, int32_t acc, int32_t c)
{
    return mcup_requantize_s8(acc, q->multiplier[c], q->shift[c], q->output_offset, q->act_min,
                              q->act_max);
}

static inline int32_t bias_of(const mcup_quant_params *q, int32_t c)
{
    return q->bias != NULL ? q->bias[c] : 0;
}

/* Weights w[j], w[j + 1] (0 past the tail) as an int16 pair. */
static int32_t tail_pair(const int8_t *w, int32_t j, int32_t tail)
{
    return mcup_pack16(w[j], j + 1 < tail ? w[j + 1] : 0);
}

/* One output channel (weights w) of two pixels whose patches are interleaved at x. */
static void one_channel_two_pixels(const int32_t *x, const int8_t *w, int32_t k, int32_t *acc_a,
                                   int32_t *acc_b)
{
    int32_t a = *acc_a, b = *acc_b;
    for (int32_t i = k >> 2; i > 0; i--) {
        const int32_t wv = mcup_read_s8x4(w);
        w += 4;
        int32_t wx = __sxtb16(wv);
        a = __smlad(x[0], wx, a);
        b = __smlad(x[1], wx, b);
        wx = __sxtb16(mcup_ror8(wv));
        a = __smlad(x[2], wx, a);
        b = __smlad(x[3], wx, b);
        x += 4;
    }
    const int32_t tail = k & 3;
    for (int32_t j = 0; j < tail; j += 2) {
        const int32_t wx = tail_pair(w, j, tail);
        a = __smlad(x[0], wx, a);
        b = __smlad(x[1], wx, b);
        x += 2;
    }
    *acc_a = a;
    *acc_b = b;
}

/* All output channels of two pixels whose patches are interleaved at x. */
static void two_pixels(const mcup_conv2d_params *p, const int32_t *x, int8_t *out_a,
                       int8_t *out_b)
{
    const mcup_quant_params *q = &p->q;
    const int32_t k = p->k_h * p->k_w * p->in_c;
    const int32_t tail = k & 3;
    int32_t c = 0;
    for (; c + 1 < p->out_c; c += 2) {
        const int8_t *w0 = p->weights + c * k;
        const int8_t *w1 = w0 + k;
        const int32_t *xp = x;
        int32_t acc_a0 = bias_of(q, c), acc_a1 = bias_of(q, c + 1);
        int32_t acc_b0 = acc_a0, acc_b1 = acc_a1;
        for (int32_t i = k >> 2; i > 0; i--) {
            const int32_t v0 = mcup_read_s8x4(w0);
            const int32_t v1 = mcup_read_s8x4(w1);
            w0 += 4;
            w1 += 4;
            /* even lanes: values 0 and 2 of the group */
            int32_t xa = xp[0], xb = xp[1];
            int32_t wx = __sxtb16(v0);
            acc_a0 = __smlad(xa, wx, acc_a0);
            acc_b0 = __smlad(xb, wx, acc_b0);
            wx = __sxtb16(v1);
            acc_a1 = __smlad(xa, wx, acc_a1);
            acc_b1 = __smlad(xb, wx, acc_b1);
            /* odd lanes: values 1 and 3 */
            xa = xp[2];
            xb = xp[3];
            xp += 4;
            wx = __sxtb16(mcup_ror8(v0));
            acc_a0 = __smlad(xa, wx, acc_a0);
            acc_b0 = __smlad(xb, wx, acc_b0);
            wx = __sxtb16(mcup_ror8(v1));
            acc_a1 = __smlad(xa, wx, acc_a1);
            acc_b1 = __smlad(xb, wx, acc_b1);
        }
        for (int32_t j = 0; j < tail; j += 2) { /* k % 4 trailing values: words [a b] per pair */
            const int32_t wx0 = tail_pair(w0, j, tail);
            const int32_t wx1 = tail_pair(w1, j, tail);
            acc_a0 = __smlad(xp[0], wx0, acc_a0);
            acc_b0 = __smlad(xp[1], wx0, acc_b0);
            acc_a1 = __smlad(xp[0], wx1, acc_a1);
            acc_b1 = __smlad(xp[1], wx1, acc_b1);
            xp += 2;
        }
        out_a[c] = requant(q, acc_a0, c);
        out_b[c] = requant(q, acc_b0, c);
        out_a[c + 1] = requant(q, acc_a1, c + 1);
        out_b[c + 1] = requant(q, acc_b1, c + 1);
    }
    if (c < p->out_c) { /* odd out_c: the last channel alone */
        int32_t acc_a = bias_of(q, c), acc_b = acc_a;
        one_channel_two_pixels(x, p->weights + c * k, k, &acc_a, &acc_b);
        out_a[c] = requant(q, acc_a, c);
        out_b[c] = requant(q, acc_b, c);
    }
}

/* All output channels of one pixel whose patch is at x (plain layout). */
static void one_pixel(const mcup_conv2d_params *p, const int32_t *x, int8_t *out)
{
    const mcup_quant_params *q = &p->q;
    const int32_t k = p->k_h * p->k_w * p->in_c;
    for (int32_t c = 0; c < p->out_c; c++) {
        out[c] = requant(q, mcup_dot_q15_s8(x, p->weights + c * k, k, bias_of(q, c)), c);
    }
}

void mcup_conv2d_s8_dense(const mcup_conv2d_params *p, const int8_t *input, int8_t *output,
                          void *scratch)
{
    int32_t *cols = scratch;
    int8_t *stage = (int8_t *)(cols + 2 * patch_words(p));
    const int32_t pixels = p->out_h * p->out_w;
    int32_t oy = 0, ox = 0;
    for (int32_t pix = 0; pix < pixels; pix++) {
        if (pix + 1 == pixels && (pixels & 1) != 0) { /* the odd last pixel alone */
            im2col_q15(p, input, oy, ox, cols, 1, stage);
            one_pixel(p, cols, output + pix * p->out_c);
            break;
        }
        im2col_q15(p, input, oy, ox, cols + (pix & 1), 2, stage);
        if ((pix & 1) != 0) {
            two_pixels(p, cols, output + (pix - 1) * p->out_c, output + pix * p->out_c);
        }
        if (++ox == p->out_w) {
            ox = 0;
            oy++;
        }
    }
}
