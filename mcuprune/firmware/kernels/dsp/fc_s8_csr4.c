/*
 * fc_s8_csr4.c - fully connected int8 kernel, csr4 weights, for cores with the DSP extension.
 * Parameters and the csr4 layout: see mcup_fc_csr_params in mcup_sparse.h; bit-identical to the
 * reference twin in firmware/kernels/reference/fc_s8_csr4.c.
 *
 * The input (plus input_offset) is converted once to int16 in scratch, so a non-zero costs an
 * index update and one load: UBFX + ADD col, LDRSH x[col]. Entries go eight at a time from an
 * even entry index: one word of deltas (8 nibbles), two words of values, the inputs paired as
 * [x0|x2], [x1|x3], ... (LDRH + ORR with shift) against __sxtb16 of the value words, four __smlad:
 * 37 instructions per 8 entries with GCC 12 -O2. A row that starts in a high nibble takes one
 * entry alone first; then blocks of 8, one block of 4 if left, and the last 0..3 one by one.
 */
#include <stddef.h>
#include <string.h>

#include "mcup_dsp.h"
#include "mcup_requant.h"
#include "mcup_sparse.h"

int32_t mcup_fc_s8_csr4_get_buffer_size(const mcup_fc_csr_params *p)
{
    return 4 * ((p->in_features + 1) / 2); /* in_features int16 */
}

static inline uint32_t read_u8x4(const uint8_t *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w); /* one LDR, any alignment */
    return w;
}

/* acc + the products of four entries whose deltas are the low 16 bits of dw. */
static inline int32_t four_entries(const int16_t *x, uint32_t *col, uint32_t dw, int32_t vw,
                                   int32_t acc)
{
    uint32_t c = *col;
    c += dw & 0xFu;
    const uint32_t x0 = (uint16_t)x[c]; /* low lanes zero-extended: x0 | x2 << 16 */
    c += (dw >> 4) & 0xFu;
    const uint32_t x1 = (uint16_t)x[c];
    c += (dw >> 8) & 0xFu;
    const uint32_t x2 = (uint32_t)x[c];
    c += (dw >> 12) & 0xFu;
    const uint32_t x3 = (uint32_t)x[c];
    *col = c;
    acc = __smlad((int32_t)(x0 | x2 << 16), __sxtb16(vw), acc);
    return __smlad((int32_t)(x1 | x3 << 16), __sxtb16(mcup_ror8(vw)), acc);
}

void mcup_fc_s8_csr4(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch)
{
    const mcup_quant_params *q = &p->q;
    const int16_t *x = scratch;
    mcup_sparse_to_s16(input, p->in_features, q->input_offset, scratch, 1);

    int32_t k = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, 0);
    for (int32_t o = 0; o < p->out_features; o++) {
        const int32_t end = mcup_sparse_row_ptr(p->row_ptr, p->row_ptr_bytes, o + 1);
        int32_t acc = q->bias != NULL ? q->bias[o] : 0;
        uint32_t col = 0;
        if ((k & 1) != 0 && k < end) { /* the row starts in a high nibble */
            col += p->deltas[k >> 1] >> 4;
            acc += x[col] * p->values[k];
            k++;
        }
        const uint8_t *d = p->deltas + (k >> 1);
        const int8_t *v = p->values + k;
        for (; k + 8 <= end; k += 8) {
            const uint32_t dw = read_u8x4(d);
            d += 4;
            acc = four_entries(x, &col, dw, mcup_read_s8x4(v), acc);
            acc = four_entries(x, &col, dw >> 16, mcup_read_s8x4(v + 4), acc);
            v += 8;
        }
        if (k + 4 <= end) {
            const uint32_t dw = (uint32_t)d[0] | (uint32_t)d[1] << 8;
            acc = four_entries(x, &col, dw, mcup_read_s8x4(v), acc);
            k += 4;
        }
        for (; k < end; k++) { /* the row's last 0..3 entries */
            col += (p->deltas[k >> 1] >> (4 * (k & 1))) & 0xFu;
            acc += x[col] * p->values[k];
        }
        output[o] = mcup_requantize_s8(acc, q->multiplier[o], q->shift[o], q->output_offset,
                                       q->act_min, q->act_max);
    }
}
