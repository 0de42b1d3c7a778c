/*
 * conv2d_s4_bitmask.c - 2-D convolution kernel, bitmask weights with int4 values, for cores with
 * the DSP extension. Parameters and the layout: see mcup_conv2d_s4_bitmask_params in
 * mcup_sparse.h; bit-identical to the reference twin in firmware/kernels/reference/conv2d_s4_bitmask.c.
 *
 * As conv2d_s8_bitmask.c (output pixels two at a time, their int16 patches interleaved in scratch,
 * the mask read 32 columns at a time, CLZ to the next non-zero), the values read from their nibble
 * stream through a one-byte buffer (mcup_s4_stream in mcup_sparse.h).
 */
#include <stddef.h>

#include "mcup_dsp.h"
#include "mcup_requant.h"
#include "mcup_sparse.h"

int32_t mcup_conv2d_s4_bitmask_get_buffer_size(const mcup_conv2d_s4_bitmask_params *p)
{
    return 4 * p->k_h * p->k_w * p->in_c; /* two int16 patches, interleaved */
}

static inline int8_t requant(const mcup_quant_params *q, int32_t acc, int32_t c)
{
    return mcup_requantize_s8(acc, q->multiplier[c], q->shift[c], q->output_offset, q->act_min,
                              q->act_max);
}

/* Both pixels' products of the set bits of `bits` (bit 31 = patch word x[0]) with the next values. */
static inline void masked_dot2(uint32_t bits, const uint32_t *x, mcup_s4_stream *vs,
                               int32_t *acc_a, int32_t *acc_b)
{
    mcup_s4_stream s = *vs;
    int32_t a = *acc_a, b = *acc_b;
    while (bits != 0) {
        const uint32_t c = (uint32_t)__builtin_clz(bits); /* columns to the next non-zero */
        x += c;
        bits <<= c;
        const int32_t pw = (int32_t)*x++;
        const int32_t w = mcup_s4_next(&s);
        a = __smlabb(pw, w, a); /* low half (pixel a) times the weight, wrapping like int32 */
        b = __smlatb(pw, w, b); /* high half (pixel b) */
        bits <<= 1; /* two shifts: c + 1 may be 32 */
    }
    *vs = s;
    *acc_a = a;
    *acc_b = b;
}

/* Every output channel of the two pixels whose patches are interleaved in cols. */
static void two_pixels(const mcup_conv2d_s4_bitmask_params *p, const uint32_t *cols,
                       int8_t *out_a, int8_t *out_b)
{
    const mcup_quant_params *q = &p->q;
    const int32_t row_bytes = (p->k_h * p->k_w * p->in_c + 7) / 8;
    const int32_t words = row_bytes / 4;
    const int32_t tail = row_bytes % 4;
    const uint8_t *m = p->mask;
    mcup_s4_stream vs = mcup_s4_stream_start(p->values);
    for (int32_t oc = 0; oc < p->out_c; oc++) {
        int32_t acc_a = q->bias != NULL ? q->bias[oc] : 0;
        int32_t acc_b = acc_a;
        const uint32_t *xw = cols;
        for (int32_t w = 0; w < words; w++, m += 4, xw += 32) {
            masked_dot2(mcup_sparse_mask_word(m), xw, &vs, &acc_a, &acc_b);
        }
        if (tail > 0) {
            masked_dot2(mcup_sparse_mask_tail(m, tail), xw, &vs, &acc_a, &acc_b);
            m += tail;
        }
        out_a[oc] = requant(q, acc_a, oc);
        if (out_b != NULL) {
            out_b[oc] = requant(q, acc_b, oc);
        }
    }
}

/* im2col of output pixel `pix` into lane `lane` (0 = low halves, 1 = high) of the words. */
static void im2col_lane(const mcup_conv2d_s4_bitmask_params *p, const int8_t *input, int32_t pix,
                        int16_t *lanes, int32_t lane)
{
    const int32_t oy = pix / p->out_w;
    const int32_t ox = pix - oy * p->out_w;
    mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                           oy * p->stride_h - p->pad_top, ox * p->stride_w - p->pad_left,
                           p->dil_h, p->dil_w, p->q.input_offset, lanes + lane, 2);
}

void mcup_conv2d_s4_bitmask(const mcup_conv2d_s4_bitmask_params *p, const int8_t *input,
                            int8_t *output, void *scratch)
{
    const int32_t pixels = p->out_h * p->out_w;
    for (int32_t pix = 0; pix < pixels; pix += 2) {
        const int32_t pix_b = pix + 1 < pixels ? pix + 1 : pix; /* odd last pixel: itself */
        im2col_lane(p, input, pix, scratch, 0);
        im2col_lane(p, input, pix_b, scratch, 1);
        two_pixels(p, scratch, output + pix * p->out_c,
                   pix_b != pix ? output + pix_b * p->out_c : NULL);
    }
}
