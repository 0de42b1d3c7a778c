/*
 * conv2d_s8_dense.c - 2-D convolution int8 kernel for cores with the DSP extension.
 * Parameters and layout: see mcup_conv2d_params in mcup_nn.h; bit-identical to the reference
 * twin in firmware/kernels/reference/conv2d_s8_dense.c.
 *
 * Three paths, chosen from the shape alone (so _get_buffer_size knows which one runs), in this
 * order; all take any stride, padding (top/left given, bottom/right implied by out_h/out_w) and,
 * except the strip path, dilation:
 *
 * Pointwise path, for a 1x1 kernel at stride 1 without padding (MobileNet's and DS-CNN's 1x1
 * layers): a matrix product, no im2col. PW_PIXELS = 4 input pixels at a time are converted to
 * int16 pairs (input_offset added) with each pixel's two words of a group side by side, so one
 * LDRD loads them; every output channel's weight row is then walked once for the 4 pixels: per
 * group of 4 values 1 weight load, 2 sign extensions, 4 LDRD and 8 __smlad (18 instructions per
 * 16 MACs with the loop), the channel's requantization constants loaded once for 4 outputs.
 *
 * Strip path, for small patches (first layers: in_c = 1..3 with 3x3 kernels; 10x4x1 up to 16
 * output channels; see use_strips; no dilation). With K = k_h * k_w * in_c around 9,
 * requantization (~23 instructions per output at best with mcup_requantize_s8, ~50 with its
 * parameters loaded per output) costs more than the MACs, so this path works channel by
 * channel over a segment of up to
 * STRIP_PIXELS output pixels (whole output rows when they fit): the channel's weights and
 * requantization constants are loaded once per segment, not once per output.
 *   - Kernel rows are paired vertically: a strip position pos (a value index along the input
 *     row, x * in_c + c) holds one word [row 2i | row 2i+1] per pair i, plus, when k_h is odd,
 *     one word [last row at pos | last row at pos + 1]. With S such words per position, the
 *     patch of an output pixel is the contiguous window of S * k_w * in_c words starting at
 *     its first position: no per-pixel im2col. The last row's words at odd offsets of the
 *     window are unused and meet zero weights. Values are int16 with input_offset added; the
 *     padding holds the input zero point, so it becomes 0.
 *   - The weights are rearranged once per call into the same window order (scratch).
 *   - Per channel: the window dot products of the segment go to an int32 buffer (__smlad,
 *     unrolled for short windows, weights in registers; at 3x3x1 stride 1 two neighbouring
 *     windows per pass share their overlapping loads), then one loop requantizes them with the
 *     channel's constants hoisted, storing with stride out_c. Keeping the two loops apart keeps
 *     each within the 14 registers; fused, GCC spills.
 * 3x3x1 at stride 1 costs per output ~12 instructions of MACs (5 __smlad), ~23 of
 * requantization and ~2 to build the strip (bench/kernels/README.md).
 *
 * im2col path, for everything else (3x3 at stride 1 or 2 with in_c a multiple of 4, dilated
 * kernels, ...). Output pixels are taken two at a time. Both input patches (k values in the
 * weights' [k_h][k_w][in_c] order, padding taps as 0) are copied into scratch as int16 with
 * input_offset added, in the q15-pair layout of mcup_dsp.h with the two patches interleaved word
 * by word (stride 2): [a02 b02 a13 b13] per group of 4 values. Two output channels are then
 * computed for both pixels at once: per 16 MACs, 2 LDRD of patch words, 2 weight loads, 4 sign
 * extensions (the rotate folded into SXTB16) and 8 __smlad. The four results are requantized
 * before any is stored (an int8 store may alias the parameters, which GCC would reload). An odd
 * pixel count ends with one plain (stride 1) patch; an odd channel count with one row. A stride
 * of 2 costs nothing extra here: the patches are copied per pixel whatever the stride (3x3 at
 * stride 2 on 32x32x16 -> 32 runs at 1.68 instructions per MAC, as stride 1).
 */
#include <stddef.h>
#include <string.h>

#include "mcup_dsp.h"
#include "mcup_nn.h"
#include "mcup_requant.h"

/*
 * Which shapes take the strip path (measured in QEMU, bench/kernels/README.md): windows of up to
 * STRIP_UNROLL_WORDS words (unrolled, weights in registers), and windows of up to
 * STRIP_MAX_WORDS when in_c is not a multiple of 4 (the im2col path then stages every patch
 * byte by byte) and out_c is at most STRIP_MAX_OUT_C. 3x3x1: 6 words, 3x3x3: 18. Past that, the
 * im2col path's 2x2 blocking wins.
 */
#define STRIP_MAX_WORDS 24
/* ... and those longer windows only up to this many output channels: the strip path's cost per
 * output does not shrink with out_c, the im2col path's patch copies do (DS-CNN's 10x4x1 first
 * layer, 64 channels: 2.66 instructions per MAC on the im2col path, 3.30 on strips). */
#define STRIP_MAX_OUT_C 16
/* Output pixels per segment: whole output rows when they fit, else part of one row. */
#define STRIP_PIXELS 128
/* Windows of at most this many words get a fully unrolled dot product (weights in registers). */
#define STRIP_UNROLL_WORDS 8

/* Geometry of the strip path, all derived from the shape (see the file comment). */
typedef struct {
    int32_t slots;      /* words per strip position: k_h / 2 vertical pairs (+1 if k_h is odd) */
    int32_t run;        /* values per kernel row: k_w * in_c */
    int32_t words;      /* words of one window: slots * run */
    int32_t cols;       /* output pixels per segment row: min(out_w, STRIP_PIXELS) */
    int32_t rows;       /* output rows per segment: STRIP_PIXELS / out_w (1..out_h), else 1 */
    int32_t positions;  /* positions of one row's strip: ((cols - 1) * stride + k_w) * in_c */
    int32_t line_bytes; /* one int8 input line (positions + 1 bytes) + 3 bytes, rounded to words */
} strip_geom;

static strip_geom strip_geometry(const mcup_conv2d_params *p)
{
    strip_geom g;
    g.slots = (p->k_h + 1) / 2;
    g.run = p->k_w * p->in_c;
    g.words = g.slots * g.run;
    g.cols = p->out_w < STRIP_PIXELS ? p->out_w : STRIP_PIXELS;
    const int32_t fit = STRIP_PIXELS / (g.cols > 0 ? g.cols : 1); /* output rows that fit */
    g.rows = fit < p->out_h ? fit : p->out_h;
    g.positions = ((g.cols - 1) * p->stride_w + p->k_w) * p->in_c;
    g.line_bytes = (g.positions + 4 + 3) & ~3;
    return g;
}

static int use_strips(const mcup_conv2d_params *p, const strip_geom *g)
{
    if (p->dil_h != 1 || p->dil_w != 1) {
        return 0; /* a window is contiguous in the strip only without dilation */
    }
    return g->words <= STRIP_UNROLL_WORDS ||
           ((p->in_c & 3) != 0 && g->words <= STRIP_MAX_WORDS && p->out_c <= STRIP_MAX_OUT_C);
}

/* Scratch of the strip path, in this order: window-ordered weights (out_c * words), the
 * accumulators of one segment (rows * cols), one strip per segment row (positions * slots
 * words each), k_h int8 input lines. */
static int32_t strip_scratch_bytes(const mcup_conv2d_params *p, const strip_geom *g)
{
    return 4 * (p->out_c * g->words + g->rows * g->cols + g->rows * g->positions * g->slots) +
           p->k_h * g->line_bytes;
}

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

/*
 * Writes the patch of output pixel (oy, ox) to dst in the q15-pair layout with `stride`.
 * `stage` (stage_bytes(p)) holds an int8 copy of the patch when in_c is not a multiple of 4.
 */
static void im2col_q15(const mcup_conv2d_params *p, const int8_t *input, int32_t oy, int32_t ox,
                       int32_t *dst, int32_t stride, int8_t *stage)
{
    const int32_t offset = p->q.input_offset;
    const int32_t y0 = oy * p->stride_h - p->pad_top;
    const int32_t x0 = ox * p->stride_w - p->pad_left;
    if ((p->in_c & 3) == 0) {
        /* Every tap is whole groups of 4: convert pixel by pixel straight into dst. */
        for (int32_t ky = 0, iy = y0; ky < p->k_h; ky++, iy += p->dil_h) {
            for (int32_t kx = 0, ix = x0; kx < p->k_w; kx++, ix += p->dil_w) {
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
     * kernel row is one contiguous run of k_w * in_c input bytes (without dilation), clipped at
     * the image border, with padding bytes holding the input zero point. Then convert the whole
     * patch at once.
     */
    const int8_t zero_point = (int8_t)(-offset);
    const int32_t row = p->k_w * p->in_c;
    int8_t *s = stage;
    if (p->dil_w != 1) { /* dilated columns: tap by tap */
        for (int32_t ky = 0, iy = y0; ky < p->k_h; ky++, iy += p->dil_h) {
            for (int32_t kx = 0, ix = x0; kx < p->k_w; kx++, ix += p->dil_w, s += p->in_c) {
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                    memset(s, zero_point, (size_t)p->in_c);
                } else {
                    memcpy(s, input + (iy * p->in_w + ix) * p->in_c, (size_t)p->in_c);
                }
            }
        }
        mcup_s8_to_q15_pairs(stage, p->k_h * row, offset, dst, stride);
        return;
    }
    const int32_t left = x0 < 0 ? (-x0 < p->k_w ? -x0 : p->k_w) : 0; /* taps left of the image */
    const int32_t over = x0 + p->k_w - p->in_w;                       /* taps right of it */
    const int32_t right = over > 0 ? (over < p->k_w - left ? over : p->k_w - left) : 0;
    const int32_t inside = p->k_w - left - right;
    for (int32_t ky = 0, iy = y0; ky < p->k_h; ky++, iy += p->dil_h, s += row) {
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

/* ---- strip path -------------------------------------------------------------------------- */

/*
 * All channels' weights in window order: word j * slots + i of a channel holds
 * [w(2i, j) | w(2i + 1, j)] for a vertical pair i and, for the odd last row (i = k_h / 2),
 * [w(last, j) | w(last, j + 1)] at even j (0 past the row) and 0 at odd j; w(ky, j) is value j
 * of kernel row ky.
 */
static void strip_weights(const mcup_conv2d_params *p, const strip_geom *g, int32_t *dst)
{
    const int32_t pairs = p->k_h / 2;
    const int8_t *w = p->weights;
    for (int32_t c = 0; c < p->out_c; c++, w += p->k_h * g->run, dst += g->words) {
        for (int32_t j = 0; j < g->run; j++) {
            for (int32_t i = 0; i < pairs; i++) {
                const int8_t *top = w + 2 * i * g->run; /* kernel row 2i; row 2i + 1 follows */
                dst[j * g->slots + i] = mcup_pack16(top[j], top[g->run + j]);
            }
            if (pairs < g->slots) {
                const int8_t *last = w + (p->k_h - 1) * g->run;
                const int32_t hi = j + 1 < g->run ? last[j + 1] : 0;
                dst[j * g->slots + pairs] = (j & 1) == 0 ? mcup_pack16(last[j], hi) : 0;
            }
        }
    }
}

/*
 * n bytes of v4's (equal) bytes at dst, written as whole words, so up to 3 bytes past dst + n
 * (a byte loop would become a memset call, costly for the few bytes of a padding run).
 * Returns dst + n.
 */
static int8_t *fill_words(int8_t *dst, int32_t v4, int32_t n)
{
    for (int32_t i = (n + 3) >> 2; i > 0; i--) {
        mcup_write_s8x4(dst + 4 * (i - 1), v4);
    }
    return dst + n;
}

/*
 * Input row iy, columns x0 .. x0 + xs - 1, as int8 with the input zero point wherever the
 * row or column is padding, plus one more zero-point byte (the odd row's last pair reads it).
 * Rows are a few dozen bytes: word copies inline beat memcpy/memset calls. The fills may write
 * up to 3 bytes further (line_bytes leaves room); the copy overwrites the left fill's.
 */
static void strip_line(const mcup_conv2d_params *p, const int8_t *input, int32_t iy, int32_t x0,
                       int32_t xs, int8_t *line)
{
    const int32_t zero_points = (int32_t)(0x01010101u * (uint8_t)(-p->q.input_offset));
    const int32_t c = p->in_c;
    if (iy < 0 || iy >= p->in_h) {
        fill_words(line, zero_points, xs * c + 1);
        return;
    }
    int32_t left = x0 < 0 ? -x0 : 0; /* columns left of the image */
    left = left < xs ? left : xs;
    int32_t end = p->in_w - x0; /* first column right of the image */
    end = end < xs ? end : xs;
    end = end > left ? end : left;
    line = fill_words(line, zero_points, left * c);
    if (end > left) {
        const int8_t *src = input + (iy * p->in_w + x0 + left) * c;
        const int32_t n = (end - left) * c;
        for (int32_t i = n >> 2; i > 0; i--, src += 4, line += 4) {
            mcup_write_s8x4(line, mcup_read_s8x4(src));
        }
        for (int32_t i = n & 3; i > 0; i--) {
            *line++ = *src++;
        }
    }
    fill_words(line, zero_points, (xs - end) * c + 1);
}

/*
 * dst[pos * stride] = [a[pos] + offset | b[pos] + offset] for pos < n (int8 in, int16 pairs
 * out), four positions per pass: per 4 words, 2 loads, 2 rotates, 4 __sxtab16 (which sign-extend
 * bytes 0 and 2 and add the offset to each half), 4 half-word packs and 4 stores.
 */
static void pair_bytes(const int8_t *a, const int8_t *b, int32_t n, int32_t offset2, int32_t *dst,
                       int32_t stride)
{
    for (int32_t i = n >> 2; i > 0; i--) {
        const int32_t va = mcup_read_s8x4(a);
        const int32_t vb = mcup_read_s8x4(b);
        a += 4;
        b += 4;
        const uint32_t a02 = (uint32_t)__sxtab16(offset2, va); /* [a0 | a2] */
        const uint32_t a13 = (uint32_t)mcup_sxtab16_ror8(offset2, va);
        const uint32_t b02 = (uint32_t)__sxtab16(offset2, vb);
        const uint32_t b13 = (uint32_t)mcup_sxtab16_ror8(offset2, vb);
        dst[0] = (int32_t)((a02 & 0xFFFFu) | (b02 << 16));
        dst[stride] = (int32_t)((a13 & 0xFFFFu) | (b13 << 16));
        dst[2 * stride] = (int32_t)((a02 >> 16) | (b02 & 0xFFFF0000u));
        dst[3 * stride] = (int32_t)((a13 >> 16) | (b13 & 0xFFFF0000u));
        dst += 4 * stride;
    }
    for (int32_t i = n & 3; i > 0; i--, dst += stride) {
        *dst = __sxtab16(offset2, (int32_t)((uint8_t)*a++ | ((uint32_t)(uint8_t)*b++ << 16)));
    }
}

/* The strip of the `count` output pixels from (oy, ox0) on: int8 lines first, then pair words. */
static void strip_build(const mcup_conv2d_params *p, const strip_geom *g, const int8_t *input,
                        int32_t oy, int32_t ox0, int32_t count, int32_t *strip, int8_t *lines)
{
    const int32_t xs = (count - 1) * p->stride_w + p->k_w; /* input columns the segment reads */
    const int32_t positions = xs * p->in_c;
    const int32_t y0 = oy * p->stride_h - p->pad_top;
    const int32_t x0 = ox0 * p->stride_w - p->pad_left;
    const int32_t line_bytes = g->line_bytes;
    for (int32_t ky = 0; ky < p->k_h; ky++) {
        strip_line(p, input, y0 + ky, x0, xs, lines + ky * line_bytes);
    }
    const int32_t offset2 = mcup_pack16(p->q.input_offset, p->q.input_offset);
    const int32_t pairs = p->k_h / 2;
    for (int32_t i = 0; i < pairs; i++) { /* rows 2i and 2i + 1 */
        const int8_t *a = lines + 2 * i * line_bytes;
        pair_bytes(a, a + line_bytes, positions, offset2, strip + i, g->slots);
    }
    if (pairs < g->slots) { /* odd k_h: the last row paired with itself one position on */
        const int8_t *h = lines + (p->k_h - 1) * line_bytes;
        pair_bytes(h, h + 1, positions, offset2, strip + pairs, g->slots);
    }
}

/* Whether word j of a window is used: with skip = slots (k_h odd), the odd last row's words
 * at odd positions are not (their weight is 0); skip = 0 uses every word. */
#define STRIP_WORD_USED(j, skip) \
    ((skip) == 0 || (j) % (skip) != (skip) - 1 || ((j) / (skip)) % 2 == 0)

/*
 * acc = bias + dot(window, w) over n words for the windows of `rows` strips `pitch` words apart,
 * `cols` windows `step` words apart in each. Called with constant n and skip (strip_dot below):
 * the loops over n unroll and the weights stay in registers, 1 load + 1 __smlad per used word.
 */
static inline __attribute__((always_inline)) void strip_dot_fixed(
    const int32_t *x, int32_t step, int32_t pitch, const int32_t *w, const int32_t n,
    const int32_t skip, int32_t bias, int32_t *acc, int32_t rows, int32_t cols)
{
    int32_t wr[STRIP_UNROLL_WORDS];
#pragma GCC unroll 8
    for (int32_t j = 0; j < n; j++) {
        wr[j] = w[j];
    }
    for (; rows > 0; rows--, x += pitch) {
        const int32_t *xp = x;
        for (int32_t i = cols; i > 0; i--, xp += step) {
            int32_t a = bias;
#pragma GCC unroll 8
            for (int32_t j = 0; j < n; j++) {
                if (STRIP_WORD_USED(j, skip)) {
                    a = __smlad(xp[j], wr[j], a);
                }
            }
            *acc++ = a;
        }
    }
}

/* bias + dot(x, w) over n words, any n. */
static int32_t __attribute__((noinline)) dot_one(const int32_t *x, const int32_t *w, int32_t n,
                                                 int32_t bias)
{
    for (int32_t j = 0; j < n; j++) {
        bias = __smlad(x[j], w[j], bias);
    }
    return bias;
}

/*
 * strip_dot_fixed for a constant step as well, two neighbouring windows per pass: when step < n
 * they overlap, and each shared word is loaded once (3x3x1 at stride 1: 8 loads for 10 __smlad).
 * An odd last window of a row goes through dot_one.
 */
static inline __attribute__((always_inline)) void strip_dot_pairs(
    const int32_t *x, const int32_t step, int32_t pitch, const int32_t *w, const int32_t n,
    const int32_t skip, int32_t bias, int32_t *acc, int32_t rows, int32_t cols)
{
    int32_t wr[STRIP_UNROLL_WORDS];
#pragma GCC unroll 8
    for (int32_t j = 0; j < n; j++) {
        wr[j] = w[j];
    }
    for (; rows > 0; rows--, x += pitch) {
        const int32_t *xp = x;
        for (int32_t i = cols >> 1; i > 0; i--, xp += 2 * step, acc += 2) {
            int32_t a = bias, b = bias;
#pragma GCC unroll 8
            for (int32_t j = 0; j < n; j++) {
                if (STRIP_WORD_USED(j, skip)) {
                    a = __smlad(xp[j], wr[j], a);
                    b = __smlad(xp[j + step], wr[j], b);
                }
            }
            acc[0] = a;
            acc[1] = b;
        }
        if ((cols & 1) != 0) {
            *acc++ = dot_one(xp, w, n, bias);
        }
    }
}

/* acc[0] = bias + dot(xa, w), acc[1] = bias + dot(xb, w) over n words, any n. */
static inline __attribute__((always_inline)) void dot_two(const int32_t *xa, const int32_t *xb,
                                                          const int32_t *w, int32_t n,
                                                          int32_t bias, int32_t *acc)
{
    int32_t a = bias, b = bias;
    for (int32_t j = n >> 1; j > 0; j--) {
        const int32_t w0 = *w++;
        const int32_t w1 = *w++;
        a = __smlad(*xa++, w0, a);
        b = __smlad(*xb++, w0, b);
        a = __smlad(*xa++, w1, a);
        b = __smlad(*xb++, w1, b);
    }
    if ((n & 1) != 0) {
        a = __smlad(*xa, *w, a);
        b = __smlad(*xb, *w, b);
    }
    acc[0] = a;
    acc[1] = b;
}

/* The same as strip_dot_fixed for any n: two windows per pass share each weight load. */
static void strip_dot_any(const int32_t *x, int32_t step, int32_t pitch, const int32_t *w,
                          int32_t n, int32_t bias, int32_t *acc, int32_t rows, int32_t cols)
{
    for (; rows > 0; rows--, x += pitch) {
        const int32_t *xp = x;
        for (int32_t i = cols >> 1; i > 0; i--, xp += 2 * step, acc += 2) {
            dot_two(xp, xp + step, w, n, bias, acc);
        }
        if ((cols & 1) != 0) {
            *acc++ = dot_one(xp, w, n, bias);
        }
    }
}

static void strip_dot(const mcup_conv2d_params *p, const strip_geom *g, const int32_t *x,
                      int32_t pitch, const int32_t *w, int32_t bias, int32_t *acc, int32_t rows,
                      int32_t cols)
{
    const int32_t step = p->stride_w * p->in_c * g->slots; /* words from one window to the next */
#define DOT(n, skip) strip_dot_fixed(x, step, pitch, w, n, skip, bias, acc, rows, cols)
    /* Unrolled variants for the common small windows only (each costs ~150 bytes of code). */
    if (p->k_h == 3) { /* 3 x k_w x in_c: the last row's odd words are unused */
        switch (g->words) {
        case 4: DOT(4, 2); return;
        case 6:
            if (step == 2) { /* 3x3x1 at stride 1 */
                strip_dot_pairs(x, 2, pitch, w, 6, 2, bias, acc, rows, cols);
            } else {
                DOT(6, 2); /* 3x1x3, or stride 2 */
            }
            return;
        case 8: DOT(8, 2); return;
        default: break;
        }
    } else {
        switch (g->words) {
        case 2: DOT(2, 0); return;
        case 4: DOT(4, 0); return;
        case 6: DOT(6, 0); return;
        case 8: DOT(8, 0); return;
        default: break;
        }
    }
#undef DOT
    strip_dot_any(x, step, pitch, w, g->words, bias, acc, rows, cols);
}

/* out[i * stride] = requantized acc[i] for `count` accumulators of one channel. */
static inline __attribute__((always_inline)) void requant_run_with(
    const int32_t *acc, int32_t count, int8_t *out, int32_t stride, int32_t multiplier,
    int32_t shift, int32_t output_offset, int32_t act_min, int32_t act_max)
{
    for (const int32_t *end = acc + count; acc != end; acc++, out += stride) {
        *out = mcup_requantize_s8(*acc, multiplier, shift, output_offset, act_min, act_max);
    }
}

static void requant_run(const mcup_quant_params *q, int32_t c, const int32_t *acc, int32_t count,
                        int8_t *out, int32_t stride)
{
    const int32_t multiplier = q->multiplier[c];
    const int32_t shift = q->shift[c];
    /*
     * The same routine either way. In the usual case (a right shift, the clamp's top at 127,
     * any multiplier but INT32_MIN, which mcup_nn.h rules out anyway) the compiler sees those
     * facts and drops the left shift, the overflow test and a register: about 7 instructions
     * less per output.
     */
    if (shift <= 0 && multiplier != INT32_MIN && q->act_max == 127) {
        requant_run_with(acc, count, out, stride, multiplier, shift, q->output_offset,
                         q->act_min, 127);
    } else {
        requant_run_with(acc, count, out, stride, multiplier, shift, q->output_offset,
                         q->act_min, q->act_max);
    }
}

static void __attribute__((noinline)) conv_strips(const mcup_conv2d_params *p,
                                                  const strip_geom *g, const int8_t *input,
                                                  int8_t *output, int32_t *scratch)
{
    const mcup_quant_params *q = &p->q;
    const int32_t pitch = g->positions * g->slots; /* words of one row's strip */
    int32_t *weights = scratch;
    int32_t *acc = weights + p->out_c * g->words;
    int32_t *strips = acc + g->rows * g->cols;
    int8_t *lines = (int8_t *)(strips + g->rows * pitch);
    strip_weights(p, g, weights);
    for (int32_t oy = 0; oy < p->out_h; oy += g->rows) {
        const int32_t rows = p->out_h - oy < g->rows ? p->out_h - oy : g->rows;
        for (int32_t ox = 0; ox < p->out_w; ox += g->cols) {
            const int32_t cols = p->out_w - ox < g->cols ? p->out_w - ox : g->cols;
            for (int32_t r = 0; r < rows; r++) {
                strip_build(p, g, input, oy + r, ox, cols, strips + r * pitch, lines);
            }
            /* rows > 1 only when cols == out_w: the segment's outputs are contiguous */
            int8_t *out = output + (oy * p->out_w + ox) * p->out_c;
            const int32_t *w = weights;
            for (int32_t c = 0; c < p->out_c; c++, w += g->words) {
                strip_dot(p, g, strips, pitch, w, bias_of(q, c), acc, rows, cols);
                requant_run(q, c, acc, rows * cols, out + c, p->out_c);
            }
        }
    }
}

/* Weights w[j], w[j + 1] (0 past the tail) as an int16 pair. */
static int32_t tail_pair(const int8_t *w, int32_t j, int32_t tail)
{
    return mcup_pack16(w[j], j + 1 < tail ? w[j + 1] : 0);
}

/* ---- pointwise path ---------------------------------------------------------------------- */

/* Output pixels per pass of the pointwise path. */
#define PW_PIXELS 4

/* 1x1 kernel, stride 1, no padding: each output pixel's patch is its input pixel. */
static int is_pointwise(const mcup_conv2d_params *p)
{
    return p->k_h == 1 && p->k_w == 1 && p->stride_h == 1 && p->stride_w == 1 && p->pad_top == 0 &&
           p->pad_left == 0 && p->out_h == p->in_h && p->out_w == p->in_w;
}

/* Scratch of the pointwise path: PW_PIXELS input pixels as int16, 2 words per group of 4
 * values (the last group padded with zeros), see pointwise_pixels. */
static int32_t pointwise_scratch_bytes(const mcup_conv2d_params *p)
{
    return 4 * PW_PIXELS * 2 * ((p->in_c + 3) / 4);
}

/*
 * The PW_PIXELS pixels at src[i] (n int8 values each, offset added) into dst as int16 pairs:
 * group g (values 4g .. 4g + 3) of pixel i is [x0 | x2], [x1 | x3] at words 8g + 2i, 8g + 2i + 1,
 * so the inner loop reads each pixel's pair with one LDRD. A last partial group holds
 * [t0 | t1], [t2 | 0] (0 for missing values), like the q15-pair layout's tail.
 */
static void pointwise_pixels(const int8_t *const *src, int32_t n, int32_t offset, int32_t *dst)
{
    const int32_t offset2 = mcup_pack16(offset, offset);
    for (int32_t i = 0; i < PW_PIXELS; i++) {
        const int8_t *s = src[i];
        int32_t *d = dst + 2 * i;
        for (int32_t g = n >> 2; g > 0; g--, s += 4, d += 2 * PW_PIXELS) {
            const int32_t w = mcup_read_s8x4(s);
            d[0] = __sxtab16(offset2, w);
            d[1] = mcup_sxtab16_ror8(offset2, w);
        }
        const int32_t tail = n & 3;
        if (tail > 0) {
            d[0] = mcup_pack16(s[0] + offset, tail > 1 ? s[1] + offset : 0);
            d[1] = tail > 2 ? mcup_pack16(s[2] + offset, 0) : 0;
        }
    }
}

/*
 * lo = x[i], hi = x[i + 1] (i a constant) with one LDRD. Left to itself GCC 12 loads the eight
 * words of a group one by one, ordered by the weight word they meet, even from a 64-bit type:
 * 4 instructions more per 16 MACs. The "m" operand tells GCC which words the asm reads.
 */
#if defined(__ARM_FEATURE_DSP)
#define LOAD_PAIR(x, i, lo, hi)                                                              \
    __asm__("ldrd %0, %1, [%2, #" #i " * 4]"                                                 \
            : "=r"(lo), "=r"(hi)                                                             \
            : "r"(x), "m"(*(const int32_t(*)[2])((x) + (i))))
#else
#define LOAD_PAIR(x, i, lo, hi) ((lo) = (x)[i], (hi) = (x)[(i) + 1])
#endif

/*
 * acc[i] += dot(pixel i, w) over n values for the PW_PIXELS pixels laid out by pointwise_pixels.
 * Per group of 4 values: 1 weight load, 2 sign extensions (one with the rotate folded in),
 * 4 LDRD of the pixels' pairs and 8 __smlad: 16 MACs in about 17 instructions, with
 * 4 accumulators, 2 weight words and 2 pixel words live (no spills).
 */
static inline __attribute__((always_inline)) void dot_four_pixels(const int32_t *x, const int8_t *w,
                                                                 int32_t n, int32_t *acc)
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (int32_t i = n >> 2; i > 0; i--) {
        const int32_t wv = mcup_read_s8x4(w);
        w += 4;
        const int32_t w02 = __sxtb16(wv);
        const int32_t w13 = mcup_sxtb16_ror8(wv);
        int32_t x02, x13;
        LOAD_PAIR(x, 0, x02, x13);
        a0 = __smlad(x13, w13, __smlad(x02, w02, a0));
        LOAD_PAIR(x, 2, x02, x13);
        a1 = __smlad(x13, w13, __smlad(x02, w02, a1));
        LOAD_PAIR(x, 4, x02, x13);
        a2 = __smlad(x13, w13, __smlad(x02, w02, a2));
        LOAD_PAIR(x, 6, x02, x13);
        a3 = __smlad(x13, w13, __smlad(x02, w02, a3));
        x += 2 * PW_PIXELS;
    }
    const int32_t tail = n & 3;
    if (tail > 0) { /* words [t0 | t1], [t2 | 0] against [w0 | w1], [w2 | 0] */
        const int32_t w01 = tail_pair(w, 0, tail);
        const int32_t w2 = tail > 2 ? mcup_pack16(w[2], 0) : 0;
        a0 = __smlad(x[1], w2, __smlad(x[0], w01, a0));
        a1 = __smlad(x[3], w2, __smlad(x[2], w01, a1));
        a2 = __smlad(x[5], w2, __smlad(x[4], w01, a2));
        a3 = __smlad(x[7], w2, __smlad(x[6], w01, a3));
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/*
 * out[i][c] = requantized acc[i] for i < n (a constant: the pixels of one channel), the channel's
 * constants loaded once, every result computed before the first store (an int8 store may alias
 * anything, so loads after it would be redone). `right_only`, also a constant: the caller has
 * checked shift <= 0, a multiplier other than INT32_MIN and act_max == 127, which lets GCC drop
 * the left shift, the overflow test and the top clamp (about 7 instructions per output).
 */
static inline __attribute__((always_inline)) void requant_pixels(
    const int32_t *acc, int8_t *const *out, const int32_t n, int32_t c, const mcup_quant_params *q,
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
    int8_t y[PW_PIXELS];
#pragma GCC unroll 4
    for (int32_t i = 0; i < n; i++) {
        y[i] = mcup_requantize_s8(acc[i], multiplier, shift, q->output_offset, q->act_min, act_max);
    }
#pragma GCC unroll 4
    for (int32_t i = 0; i < n; i++) {
        out[i][c] = y[i];
    }
}

/* requant_pixels, the right-shift-only copy when the channel allows it. */
static inline __attribute__((always_inline)) void requant_channel(
    const int32_t *acc, int8_t *const *out, const int32_t n, int32_t c, const mcup_quant_params *q)
{
    if (q->shift[c] <= 0 && q->multiplier[c] != INT32_MIN && q->act_max == 127) {
        requant_pixels(acc, out, n, c, q, 1);
    } else {
        requant_pixels(acc, out, n, c, q, 0);
    }
}

/*
 * The pointwise convolution: a matrix product of the pixels (rows of in_c values) with the
 * weights (out_c rows of in_c), no im2col. PW_PIXELS pixels at a time are converted into scratch
 * (int16 pairs), then every output channel's weight row is walked once for all of them. A last
 * group of fewer pixels repeats its last pixel (and writes that pixel's outputs again, with the
 * same values).
 */
static void __attribute__((noinline)) conv_pointwise(const mcup_conv2d_params *p,
                                                     const int8_t *input, int8_t *output,
                                                     int32_t *x)
{
    const mcup_quant_params q = p->q; /* locals: the int8 stores below may alias *p */
    const int8_t *const weights = p->weights;
    const int32_t in_c = p->in_c;
    const int32_t out_c = p->out_c;
    const int32_t pixels = p->out_h * p->out_w;
    for (int32_t pix = 0; pix < pixels; pix += PW_PIXELS) {
        const int8_t *src[PW_PIXELS];
        int8_t *out[PW_PIXELS];
        for (int32_t i = 0; i < PW_PIXELS; i++) {
            const int32_t at = pix + i < pixels ? pix + i : pixels - 1;
            src[i] = input + at * in_c;
            out[i] = output + at * out_c;
        }
        pointwise_pixels(src, in_c, q.input_offset, x);
        const int8_t *w = weights;
        for (int32_t c = 0; c < out_c; c++, w += in_c) {
            const int32_t bias = q.bias != NULL ? q.bias[c] : 0;
            int32_t acc[PW_PIXELS] = {bias, bias, bias, bias};
            dot_four_pixels(x, w, in_c, acc);
            requant_channel(acc, out, PW_PIXELS, c, &q);
        }
    }
}

/* ---- im2col path ------------------------------------------------------------------------- */

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
        wx = mcup_sxtb16_ror8(wv);
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
    const mcup_quant_params q = p->q; /* locals: the int8 stores below may alias *p */
    const int8_t *const weights = p->weights;
    const int32_t out_c = p->out_c;
    const int32_t k = p->k_h * p->k_w * p->in_c;
    const int32_t tail = k & 3;
    int8_t *const out[2] = {out_a, out_b};
    int32_t c = 0;
    for (; c + 1 < out_c; c += 2) {
        const int8_t *w0 = weights + c * k;
        const int8_t *w1 = w0 + k;
        const int32_t *xp = x;
        int32_t acc_a0 = q.bias != NULL ? q.bias[c] : 0;
        int32_t acc_a1 = q.bias != NULL ? q.bias[c + 1] : 0;
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
            wx = mcup_sxtb16_ror8(v0);
            acc_a0 = __smlad(xa, wx, acc_a0);
            acc_b0 = __smlad(xb, wx, acc_b0);
            wx = mcup_sxtb16_ror8(v1);
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
        const int32_t acc0[2] = {acc_a0, acc_b0};
        const int32_t acc1[2] = {acc_a1, acc_b1};
        requant_channel(acc0, out, 2, c, &q);
        requant_channel(acc1, out, 2, c + 1, &q);
    }
    if (c < out_c) { /* odd out_c: the last channel alone */
        int32_t acc[2] = {q.bias != NULL ? q.bias[c] : 0, 0};
        acc[1] = acc[0];
        one_channel_two_pixels(x, weights + c * k, k, &acc[0], &acc[1]);
        requant_channel(acc, out, 2, c, &q);
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

int32_t mcup_conv2d_s8_dense_get_buffer_size(const mcup_conv2d_params *p)
{
    if (is_pointwise(p)) {
        return pointwise_scratch_bytes(p);
    }
    const strip_geom g = strip_geometry(p);
    if (use_strips(p, &g)) {
        return strip_scratch_bytes(p, &g);
    }
    return 2 * 4 * patch_words(p) + stage_bytes(p); /* two int16 patches + int8 staging */
}

void mcup_conv2d_s8_dense(const mcup_conv2d_params *p, const int8_t *input, int8_t *output,
                          void *scratch)
{
    if (is_pointwise(p)) {
        conv_pointwise(p, input, output, scratch);
        return;
    }
    const strip_geom g = strip_geometry(p);
    if (use_strips(p, &g)) {
        conv_strips(p, &g, input, output, scratch);
        return;
    }
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
