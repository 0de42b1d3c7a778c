/*
 * conv2d_s8_csr4.c - 2-D convolution int8 kernel, csr4 weights, for cores with the DSP
 * extension. Parameters and the csr4 layout: see mcup_conv2d_csr_params in mcup_sparse.h;
 * bit-identical to the reference twin in firmware/kernels/reference/conv2d_s8_csr4.c.
 *
 * Output pixels go two at a time. Their im2col patches (int16, input_offset added, 0 in the
 * padding) are interleaved in scratch, one word [a|b] per patch position, so every non-zero
 * serves both pixels with one index update and one load. Entries go four at a time: four nibbles
 * of deltas, one word of values, four patch words P0..P3 regrouped as [a0|a2], [a1|a3], [b0|b2],
 * [b1|b3] against __sxtb16 of the value word and its rotation, four __smlad. A row that starts in
 * a high nibble takes one entry alone first; blocks of 8 entries read a whole word of deltas.
 * An odd last pixel is paired with itself.
 */
#include <stddef.h>
#include <string.h>

#include "mcup_dsp.h"
#include "mcup_requant.h"
#include "mcup_sparse.h"

int32_t mcup_conv2d_s8_csr4_get_buffer_size(const mcup_conv2d_csr_params *p)
{
    return 4 * p->k_h * p->k_w * p->in_c; /* two int16 patches, interleaved */
}

static inline uint32_t read_u8x4(const uint8_t *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w); /* one LDR, any alignment */
    return w;
}

static inline int8_t requant(const mcup_quant_params *q, int32_t acc, int32_t c)
{
    return mcup_requantize_s8(acc, q->multiplier[c], q->shift[c], q->output_offset, q->act_min,
                              q->act_max);
}

/* Both pixels' products of four entries whose deltas are the low 16 bits of dw. */
static inline void four_entries(const uint32_t *cols, uint32_t *col, uint32_t dw, int32_t vw,
                                int32_t *acc_a, int32_t *acc_b)
{
    uint32_t c = *col;
    c += dw & 0xFu;
    const uint32_t p0 = cols[c];
    c += (dw >> 4) & 0xFu;
    const uint32_t p1 = cols[c];
    c += (dw >> 8) & 0xFu;
    const uint32_t p2 = cols[c];
    c += (dw >> 12) & 0xFu;
    const uint32_t p3 = cols[c];
    *col = c;
    const int32_t w02 = __sxtb16(vw);
    const int32_t w13 = __sxtb16(mcup_ror8(vw));
    *acc_a = __smlad((int32_t)((p0 & 0xFFFFu) | p2 << 16), w02, *acc_a);
    *acc_b = __smlad((int32_t)((p0 >> 16) | (p2 & 0xFFFF0000u)), w02, *acc_b);
    *acc_a = __smlad((int32_t)((p1 & 0xFFFFu) | p3 << 16), w13, *acc_a);
    *acc_b = __smlad((int32_t)((p1 >> 16) | (p3 & 0xFFFF0000u)), w13, *acc_b);
}

/* Both pixels' product of entry k alone. */
static inline void one_entry(const mcup_conv2d_csr_params *p, const uint32_t *cols, int32_t k,
                             uint32_t *col, int32_t *acc_a, int32_t *acc_b)
{
    *col += (p->deltas[k >> 1] >> (4 * (k & 1))) & 0xFu; /* even k: low nibble */
    const int32_t pw = (int32_t)cols[*col];
    const int32_t w = p->values[k];
    *acc_a += (int16_t)pw * w;
    *acc_b += (pw >> 16) * w;
}

/* Every output channel of the two pixels whose patches are interleaved in cols. */
static void two_pixels(const mcup_conv2d_csr_params *p, const uint32_t *cols, int8_t *out_a,
                       int8_t *out_b)
{
    const mcup_quant_params *q = &p->q;
    int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t oc = 0; oc < p->out_c; oc++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, oc + 1);
        int32_t acc_a = q->bias != NULL ? q->bias[oc] : 0;
        int32_t acc_b = acc_a;
        uint32_t col = 0;
        if ((k & 1) != 0 && k < end) { /* the row starts in a high nibble */
            one_entry(p, cols, k++, &col, &acc_a, &acc_b);
        }
        const uint8_t *d = p->deltas + (k >> 1);
        const int8_t *v = p->values + k;
        for (; k + 8 <= end; k += 8) {
            const uint32_t dw = read_u8x4(d);
            d += 4;
            four_entries(cols, &col, dw, mcup_read_s8x4(v), &acc_a, &acc_b);
            four_entries(cols, &col, dw >> 16, mcup_read_s8x4(v + 4), &acc_a, &acc_b);
            v += 8;
        }
        if (k + 4 <= end) {
            four_entries(cols, &col, (uint32_t)d[0] | (uint32_t)d[1] << 8, mcup_read_s8x4(v),
                         &acc_a, &acc_b);
            k += 4;
        }
        for (; k < end; k++) { /* the row's last 0..3 entries */
            one_entry(p, cols, k, &col, &acc_a, &acc_b);
        }
        out_a[oc] = requant(q, acc_a, oc);
        if (out_b != NULL) {
            out_b[oc] = requant(q, acc_b, oc);
        }
    }
}

/* im2col of output pixel `pix` into lane `lane` (0 = low halves, 1 = high) of the words. */
static void im2col_lane(const mcup_conv2d_csr_params *p, const int8_t *input, int32_t pix,
                        int16_t *lanes, int32_t lane)
{
    const int32_t oy = pix / p->out_w;
    const int32_t ox = pix - oy * p->out_w;
    mcup_sparse_im2col_s16(input, p->in_h, p->in_w, p->in_c, p->k_h, p->k_w,
                           oy * p->stride - p->pad, ox * p->stride - p->pad, p->q.input_offset,
                           lanes + lane, 2);
}

void mcup_conv2d_s8_csr4(const mcup_conv2d_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch)
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
