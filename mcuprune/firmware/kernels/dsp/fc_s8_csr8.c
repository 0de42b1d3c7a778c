/*
 * fc_s8_csr8.c - fully connected int8 kernel, csr8 weights, for cores with the DSP extension.
 * Parameters and the csr8 layout: see mcup_fc_csr_params in mcup_sparse.h; bit-identical to the
 * reference twin in firmware/kernels/reference/fc_s8_csr8.c.
 *
 * The input (plus input_offset) is converted once to int16 in scratch, so a non-zero costs an
 * index update and one load (x[col]).
 * Entries go four at a time: one word of deltas, one word of values, the four inputs paired as
 * [x0|x2], [x1|x3] (LDRH + ORR with shift) against __sxtb16 of the value word and its rotation,
 * two __smlad: 19 instructions per 4 entries with GCC 12 -O2 (only the first delta byte becomes
 * a UXTAB; the others take UBFX + ADD).
 */
#include <stddef.h>
#include <string.h>

#include "mcup_dsp.h"
#include "mcup_requant.h"
#include "mcup_sparse.h"

int32_t mcup_fc_s8_csr8_get_buffer_size(const mcup_fc_csr_params *p)
{
    return 4 * ((p->in_features + 1) / 2); /* in_features int16 */
}

static inline uint32_t read_u8x4(const uint8_t *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w); /* one LDR, any alignment */
    return w;
}

void mcup_fc_s8_csr8(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch)
{
    const mcup_quant_params *q = &p->q;
    const int16_t *x = scratch;
    mcup_sparse_to_s16(input, p->in_features, q->input_offset, scratch, 1);

    const int8_t *v = p->values;
    const uint8_t *d = p->deltas;
    int32_t start = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t o = 0; o < p->out_features; o++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, o + 1);
        int32_t n = end - start;
        start = end;
        int32_t acc = q->bias != NULL ? q->bias[o] : 0;
        uint32_t col = 0;
        for (; n >= 4; n -= 4) {
            const uint32_t dw = read_u8x4(d);
            const int32_t vw = mcup_read_s8x4(v);
            d += 4;
            v += 4;
            col += dw & 0xFFu;
            const uint32_t x0 = (uint16_t)x[col]; /* low lanes zero-extended: x0 | x2 << 16 */
            col += (dw >> 8) & 0xFFu;
            const uint32_t x1 = (uint16_t)x[col];
            col += (dw >> 16) & 0xFFu;
            const uint32_t x2 = (uint32_t)x[col];
            col += dw >> 24;
            const uint32_t x3 = (uint32_t)x[col];
            acc = __smlad((int32_t)(x0 | x2 << 16), __sxtb16(vw), acc);
            acc = __smlad((int32_t)(x1 | x3 << 16), __sxtb16(mcup_ror8(vw)), acc);
        }
        for (; n > 0; n--) { /* the row's last 0..3 entries */
            col += *d++;
            acc += x[col] * *v++;
        }
        output[o] = mcup_requantize_s8(acc, q->multiplier[o], q->shift[o], q->output_offset,
                                       q->act_min, q->act_max);
    }
}
