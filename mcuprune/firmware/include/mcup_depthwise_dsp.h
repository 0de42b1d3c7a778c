/*
 * mcup_depthwise_dsp.h - the depthwise convolution of the DSP kernels, written once for int8 and
 * int4 weights. Included only by firmware/kernels/dsp/depthwise_conv2d_s{8,4}_dense.c (the file
 * comment of depthwise_conv2d_s8_dense.c describes the algorithm); apart from the kernels because
 * it needs mcup_dsp.h. Every function is always_inline with the weight width a constant, so each
 * kernel file compiles to the code of a kernel written for its width alone. The widths differ only
 * where the original weights are read: the rearrangement into int16 groups and the folded biases
 * (once per call) and the channels taken one at a time (past the last group of 4, or a depth
 * multiplier above 1); the int4 kernel then runs exactly the int8 kernel's loops.
 */
#ifndef MCUP_DEPTHWISE_DSP_H
#define MCUP_DEPTHWISE_DSP_H

#include <stddef.h>

#include "mcup_dsp.h"
#include "mcup_nn.h"
#include "mcup_requant.h"
#include "mcup_s4.h"

/* The geometry of a call (the int8 and int4 structs' shared fields), copied once. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    int32_t depth_multiplier;
} mcup_dw_geom;

/* The weights of one call: int8 rows of taps values, or int4 rows of (taps + 1) / 2 bytes. */
typedef struct {
    const int8_t *s8;  /* bits 8: [out_c][taps] */
    const uint8_t *s4; /* bits 4: [out_c][(taps + 1) / 2], nibbles */
    int32_t row_bytes; /* bits 4: (taps + 1) / 2 */
} mcup_dw_weights;

/* Weight t (tap) of output channel c; `bits` a constant. */
static inline __attribute__((always_inline)) int32_t mcup_dw_weight(const mcup_dw_weights *w,
                                                                   int32_t c, int32_t taps,
                                                                   int32_t t, const int bits)
{
    if (bits == 8) {
        return w->s8[c * taps + t];
    }
    return mcup_s4_at(w->s4 + c * w->row_bytes, t);
}

/* Words of the rearranged weights: 2 per tap for every whole group of 4 channels. */
static inline int32_t mcup_dw_group_weight_words(const mcup_dw_geom *p)
{
    return p->depth_multiplier == 1 ? 2 * (p->out_c >> 2) * p->k_h * p->k_w : 0;
}

/* The scratch of both kernels: the rearranged weights, then one folded bias per channel of the
 * groups. */
static inline int32_t mcup_dw_buffer_size(const mcup_dw_geom *p)
{
    return 4 * mcup_dw_group_weight_words(p) + (p->depth_multiplier == 1 ? 4 * (p->out_c & ~3) : 0);
}

/* folded[c] = bias[c] + input_offset * (sum of channel c's weights): the accumulator's start for
 * a window wholly inside the image, whose taps can then skip the offset. Wraps like int32 (the
 * same sum modulo 2^32 as adding the offset tap by tap). */
static inline __attribute__((always_inline)) void fold_bias(const mcup_dw_geom *p,
                                                            const mcup_dw_weights *w,
                                                            const mcup_quant_params *q,
                                                            int32_t *folded, const int bits)
{
    const int32_t taps = p->k_h * p->k_w;
    for (int32_t c = 0; c < (p->out_c & ~3); c++) {
        int32_t sum = 0;
        for (int32_t t = 0; t < taps; t++) {
            sum += mcup_dw_weight(w, c, taps, t, bits); /* |sum| <= 128 * taps */
        }
        const uint32_t bias = q->bias != NULL ? (uint32_t)q->bias[c] : 0;
        folded[c] = (int32_t)(bias + (uint32_t)q->input_offset * (uint32_t)sum);
    }
}

/* Per group of 4 channels and tap t: dst[2t] = [w0 | w2], dst[2t + 1] = [w1 | w3] (int16). */
static inline __attribute__((always_inline)) void rearrange_weights(const mcup_dw_geom *p,
                                                                    const mcup_dw_weights *w,
                                                                    int32_t *dst, const int bits)
{
    const int32_t taps = p->k_h * p->k_w;
    for (int32_t c = 0; c + 3 < p->out_c; c += 4) {
        for (int32_t t = 0; t < taps; t++, dst += 2) {
            dst[0] = mcup_pack16(mcup_dw_weight(w, c, taps, t, bits),
                                 mcup_dw_weight(w, c + 2, taps, t, bits));
            dst[1] = mcup_pack16(mcup_dw_weight(w, c + 1, taps, t, bits),
                                 mcup_dw_weight(w, c + 3, taps, t, bits));
        }
    }
}

/* The taps of a window that fall inside the image along one axis: [begin, end). */
typedef struct {
    int32_t begin, end;
} tap_range;

/* Taps k = 0 .. size - 1 read coordinate start + k * dil; the range of those in [0, limit). */
static inline tap_range inside(int32_t start, int32_t size, int32_t dil, int32_t limit)
{
    tap_range r;
    r.begin = start < 0 ? (-start + dil - 1) / dil : 0;
    const int32_t last = limit - 1 - start; /* the last tap's offset must be <= this */
    r.end = last < 0 ? 0 : (last / dil + 1 < size ? last / dil + 1 : size);
    if (r.end < r.begin) {
        r.end = r.begin;
    }
    return r;
}

/* Constants of the loops, copied once: stores through the int8 output may alias *p, which
 * would make GCC reload every field after each store. */
typedef struct {
    int32_t out_c, k_w, taps, depth_multiplier;
    int32_t input_offset, output_offset, act_min, act_max;
    int32_t dy, dx; /* bytes from one tap to the next: dil_h * in_w * in_c, dil_w * in_c */
    const int8_t *weights;        /* int8 weights (bits 8) */
    const int32_t *group_weights; /* rearranged in scratch (depth multiplier 1) */
    const int32_t *folded;        /* folded biases in scratch (depth multiplier 1) */
    const int32_t *bias, *multiplier, *shift;
    const uint8_t *weights4; /* int4 weights (bits 4), rows of row_bytes */
    int32_t row_bytes;
} dw_ctx;

static inline int8_t requant(const dw_ctx *k, int32_t acc, int32_t c, const int right_only)
{
    int32_t multiplier = k->multiplier[c];
    int32_t shift = k->shift[c];
    int32_t act_max = k->act_max;
    if (right_only) { /* facts the caller checked, spelled out so that GCC can use them */
        if (shift > 0 || multiplier == INT32_MIN) {
            __builtin_unreachable(); /* the caller checked */
        }
        act_max = 127;
    }
    return mcup_requantize_s8(acc, multiplier, shift, k->output_offset, k->act_min, act_max);
}

static inline int32_t bias_of(const dw_ctx *k, int32_t c)
{
    return k->bias != NULL ? k->bias[c] : 0;
}

/*
 * One output pixel, output channels [c0, c1) one at a time from the original weights. `in` is
 * the input pixel of tap (ky.begin, kx.begin), channel 0.
 */
static inline __attribute__((always_inline)) void pixel_channels(
    const dw_ctx *k, const int8_t *in, tap_range ky, tap_range kx, int32_t c0, int32_t c1,
    int8_t *out, const int right_only, const int bits)
{
    const int32_t n_x = kx.end - kx.begin;
    if (bits == 4) { /* int4: the same loops, each weight read from its row's nibbles */
        for (int32_t c = c0; c < c1; c++) {
            uint32_t acc = (uint32_t)bias_of(k, c);
            const int8_t *px_row = in + c / k->depth_multiplier;
            const uint8_t *w_row = k->weights4 + c * k->row_bytes;
            int32_t t = ky.begin * k->k_w + kx.begin; /* the row's first tap inside the image */
            for (int32_t y = ky.begin; y < ky.end; y++, px_row += k->dy, t += k->k_w) {
                const int8_t *px = px_row;
                for (int32_t x = 0; x < n_x; x++, px += k->dx) {
                    acc += (uint32_t)((*px + k->input_offset) * mcup_s4_at(w_row, t + x));
                }
            }
            out[c] = requant(k, (int32_t)acc, c, right_only);
        }
        return;
    }
    for (int32_t c = c0; c < c1; c++) {
        uint32_t acc = (uint32_t)bias_of(k, c); /* unsigned: wraps like int32, no UB */
        const int8_t *px_row = in + c / k->depth_multiplier;
        const int8_t *w_row = k->weights + c * k->taps + ky.begin * k->k_w + kx.begin;
        for (int32_t y = ky.begin; y < ky.end; y++, px_row += k->dy, w_row += k->k_w) {
            const int8_t *px = px_row;
            for (int32_t x = 0; x < n_x; x++, px += k->dx) {
                acc += (uint32_t)((*px + k->input_offset) * w_row[x]);
            }
        }
        out[c] = requant(k, (int32_t)acc, c, right_only);
    }
}

/* One output pixel, the whole groups of 4 channels (depth multiplier 1); `in` as above. */
static inline __attribute__((always_inline)) void pixel_groups(
    const dw_ctx *k, const int8_t *in, tap_range ky, tap_range kx, int8_t *out,
    const int right_only)
{
    const int32_t n_x = kx.end - kx.begin;
    const int32_t offset2 = mcup_pack16(k->input_offset, k->input_offset);
    const int32_t *wg = k->group_weights + 2 * (ky.begin * k->k_w + kx.begin);
    for (int32_t c = 0; c + 3 < k->out_c; c += 4, wg += 2 * k->taps) {
        int32_t a0 = bias_of(k, c), a1 = bias_of(k, c + 1);
        int32_t a2 = bias_of(k, c + 2), a3 = bias_of(k, c + 3);
        const int8_t *px_row = in + c;
        const int32_t *w_row = wg;
        for (int32_t y = ky.begin; y < ky.end; y++, px_row += k->dy, w_row += 2 * k->k_w) {
            const int8_t *px = px_row;
            const int32_t *w = w_row;
            for (int32_t x = n_x; x > 0; x--, px += k->dx, w += 2) {
                const int32_t v = mcup_read_s8x4(px);
                const int32_t x02 = __sxtab16(offset2, v);         /* [x0 | x2] + offset */
                const int32_t x13 = mcup_sxtab16_ror8(offset2, v); /* [x1 | x3] + offset */
                a0 = __smlabb(x02, w[0], a0);
                a2 = __smlatt(x02, w[0], a2);
                a1 = __smlabb(x13, w[1], a1);
                a3 = __smlatt(x13, w[1], a3);
            }
        }
        const int8_t y0 = requant(k, a0, c, right_only);
        const int8_t y1 = requant(k, a1, c + 1, right_only);
        const int8_t y2 = requant(k, a2, c + 2, right_only);
        const int8_t y3 = requant(k, a3, c + 3, right_only);
        out[c] = y0;
        out[c + 1] = y1;
        out[c + 2] = y2;
        out[c + 3] = y3;
    }
}

/*
 * One output pixel whose 3x3 window lies wholly inside the image, the whole groups of 4
 * channels: the 9 taps unrolled, the input offset folded into the accumulators' start (so
 * __sxtb16 without an offset operand, one register less), the weights at constant offsets.
 */
static inline __attribute__((always_inline)) void interior_3x3(const dw_ctx *k, const int8_t *in,
                                                              int8_t *out, const int right_only)
{
    const int32_t dx = k->dx, dy = k->dy;
    const int32_t *w = k->group_weights;
    for (int32_t c = 0; c + 3 < k->out_c; c += 4, w += 18) {
        int32_t a0 = k->folded[c], a1 = k->folded[c + 1];
        int32_t a2 = k->folded[c + 2], a3 = k->folded[c + 3];
        const int8_t *px = in + c;
#pragma GCC unroll 3
        for (int32_t row = 0; row < 3; row++, px += dy) {
#pragma GCC unroll 3
            for (int32_t col = 0; col < 3; col++) {
                const int32_t v = mcup_read_s8x4(px + col * dx);
                const int32_t x02 = __sxtb16(v);
                const int32_t x13 = mcup_sxtb16_ror8(v);
                const int32_t *wt = w + 6 * row + 2 * col;
                a0 = __smlabb(x02, wt[0], a0);
                a2 = __smlatt(x02, wt[0], a2);
                a1 = __smlabb(x13, wt[1], a1);
                a3 = __smlatt(x13, wt[1], a3);
            }
        }
        const int8_t y0 = requant(k, a0, c, right_only);
        const int8_t y1 = requant(k, a1, c + 1, right_only);
        const int8_t y2 = requant(k, a2, c + 2, right_only);
        const int8_t y3 = requant(k, a3, c + 3, right_only);
        out[c] = y0;
        out[c + 1] = y1;
        out[c + 2] = y2;
        out[c + 3] = y3;
    }
}

/* Every output pixel; right_only and bits are constants at each call (see the file comment). */
static inline __attribute__((always_inline)) void depthwise(
    const mcup_dw_geom *p, const dw_ctx *k, const int8_t *input, int8_t *output,
    const int right_only, const int bits)
{
    const int32_t in_h = p->in_h, in_w = p->in_w, in_c = p->in_c;
    const int32_t out_h = p->out_h, out_w = p->out_w, k_h = p->k_h, k_w = p->k_w;
    const int32_t stride_h = p->stride_h, stride_w = p->stride_w;
    const int32_t pad_top = p->pad_top, pad_left = p->pad_left;
    const int32_t dil_h = p->dil_h, dil_w = p->dil_w;
    const int32_t groups_end = k->depth_multiplier == 1 ? k->out_c & ~3 : 0;
    const int square3 = k_h == 3 && k_w == 3;
    for (int32_t oy = 0; oy < out_h; oy++) {
        const int32_t y0 = oy * stride_h - pad_top; /* input row of tap 0 */
        const tap_range ky = inside(y0, k_h, dil_h, in_h);
        for (int32_t ox = 0; ox < out_w; ox++, output += k->out_c) {
            const int32_t x0 = ox * stride_w - pad_left;
            const tap_range kx = inside(x0, k_w, dil_w, in_w);
            const int8_t *in = input; /* a window wholly in the padding reads nothing */
            if (ky.end > ky.begin && kx.end > kx.begin) {
                in += ((y0 + ky.begin * dil_h) * in_w + x0 + kx.begin * dil_w) * in_c;
            }
            if (groups_end > 0 && square3 && ky.end - ky.begin == 3 && kx.end - kx.begin == 3) {
                interior_3x3(k, in, output, right_only);
            } else if (groups_end > 0) {
                pixel_groups(k, in, ky, kx, output, right_only);
            }
            pixel_channels(k, in, ky, kx, groups_end, k->out_c, output, right_only, bits);
        }
    }
}

/*
 * The whole kernel for either width: `p` the geometry, `q` the quantization, `w` the weights
 * (bits 8 or 4, a constant).
 */
static inline __attribute__((always_inline)) void mcup_dw_run(const mcup_dw_geom *p,
                                                             const mcup_quant_params *q,
                                                             const mcup_dw_weights *w,
                                                             const int8_t *input, int8_t *output,
                                                             void *scratch, const int bits)
{
    const dw_ctx k = {
        .out_c = p->out_c,
        .k_w = p->k_w,
        .taps = p->k_h * p->k_w,
        .depth_multiplier = p->depth_multiplier,
        .input_offset = q->input_offset,
        .output_offset = q->output_offset,
        .act_min = q->act_min,
        .act_max = q->act_max,
        .dy = p->dil_h * p->in_w * p->in_c,
        .dx = p->dil_w * p->in_c,
        .weights = w->s8,
        .weights4 = w->s4,
        .row_bytes = w->row_bytes,
        .group_weights = scratch,
        .folded = (const int32_t *)scratch + mcup_dw_group_weight_words(p),
        .bias = q->bias,
        .multiplier = q->multiplier,
        .shift = q->shift,
    };
    if (p->depth_multiplier == 1) {
        rearrange_weights(p, w, scratch, bits);
        fold_bias(p, w, q, (int32_t *)scratch + mcup_dw_group_weight_words(p), bits);
    }
    int right_only = q->act_max == 127;
    for (int32_t c = 0; c < p->out_c; c++) {
        right_only &= q->shift[c] <= 0 && q->multiplier[c] != INT32_MIN;
    }
    if (right_only) {
        depthwise(p, &k, input, output, 1, bits);
    } else {
        depthwise(p, &k, input, output, 0, bits);
    }
}

/* The geometry fields of an int8 or int4 params struct (the same names). */
#define MCUP_DW_GEOM(p)                                                                       \
    {                                                                                         \
        (p)->in_h, (p)->in_w, (p)->in_c, (p)->out_h, (p)->out_w, (p)->out_c, (p)->k_h, (p)->k_w, \
            (p)->stride_h, (p)->stride_w, (p)->pad_top, (p)->pad_left, (p)->dil_h, (p)->dil_w,  \
            (p)->depth_multiplier                                                               \
    }

#endif /* MCUP_DEPTHWISE_DSP_H */
