/*
 * fc_s4_bitmask.c - fully connected kernel, bitmask weights with int4 values, for cores with the
 * DSP extension. Parameters and the layout: see mcup_fc_s4_bitmask_params in mcup_sparse.h;
 * bit-identical to the reference twin in firmware/kernels/reference/fc_s4_bitmask.c.
 *
 * As fc_s8_bitmask.c (the input as int16 in scratch, the mask read 32 columns at a time, CLZ to
 * the next non-zero), the values read from their nibble stream through a one-byte buffer (see
 * mcup_s4_stream in mcup_sparse.h): SBFX gives the value, a shift drops it, a byte is loaded every
 * second value. About 12 instructions per non-zero, against 8 for int8 values.
 */
#include <stddef.h>

#include "mcup_dsp.h"
#include "mcup_requant.h"
#include "mcup_sparse.h"

int32_t mcup_fc_s4_bitmask_get_buffer_size(const mcup_fc_s4_bitmask_params *p)
{
    return 4 * ((p->in_features + 1) / 2); /* in_features int16 */
}

/* acc + the products of the set bits of `bits` (bit 31 = x[0]) with the next values of vs. */
static inline int32_t masked_dot(uint32_t bits, const int16_t *x, mcup_s4_stream *vs, int32_t acc)
{
    mcup_s4_stream s = *vs;
    while (bits != 0) {
        const uint32_t c = (uint32_t)__builtin_clz(bits); /* columns to the next non-zero */
        x += c;
        bits <<= c;
        acc = __smlabb(*x++, mcup_s4_next(&s), acc); /* a multiply-accumulate that wraps */
        bits <<= 1; /* two shifts: c + 1 may be 32 */
    }
    *vs = s;
    return acc;
}

void mcup_fc_s4_bitmask(const mcup_fc_s4_bitmask_params *p, const int8_t *input,
                        int8_t *output, void *scratch)
{
    const mcup_quant_params *q = &p->q;
    const int16_t *x = scratch;
    mcup_sparse_to_s16(input, p->in_features, q->input_offset, scratch, 1);

    const int32_t row_bytes = (p->in_features + 7) / 8;
    const int32_t words = row_bytes / 4;
    const int32_t tail = row_bytes % 4;
    const uint8_t *m = p->mask;
    mcup_s4_stream vs = mcup_s4_stream_start(p->values);
    for (int32_t o = 0; o < p->out_features; o++) {
        int32_t acc = q->bias != NULL ? q->bias[o] : 0;
        const int16_t *xw = x;
        for (int32_t w = 0; w < words; w++, m += 4, xw += 32) {
            acc = masked_dot(mcup_sparse_mask_word(m), xw, &vs, acc);
        }
        if (tail > 0) {
            acc = masked_dot(mcup_sparse_mask_tail(m, tail), xw, &vs, acc);
            m += tail;
        }
        output[o] = mcup_requantize_s8(acc, q->multiplier[o], q->shift[o], q->output_offset,
                                       q->act_min, q->act_max);
    }
}
