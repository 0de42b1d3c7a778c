/*
 * fc_s4_dense.c - fully connected kernel, int4 weights, for cores with the DSP extension.
 * Parameters and layout: see mcup_fc_s4_params in mcup_nn.h; bit-identical to the reference twin
 * in firmware/kernels/reference/fc_s4_dense.c (and to mcup_fc_s8_dense on the same integers).
 *
 * The input (plus input_offset) is converted once to int16 in scratch, in the s4-pair layout of
 * mcup_dsp.h (groups of 8 values as four words). Two weight rows are walked together, two groups
 * per pass: per group of 8 values, 2 LDRD of input words feed both rows, and each row costs one
 * weight load (8 weights), one AND, one AND with a shifted operand, four sign extensions and four
 * __smlad (50 instructions per 32 MACs with the loop). The sums
 * come out times 16 (mcup_dsp.h) and are flushed into the int32 accumulators every
 * MCUP_S4_CHUNK_GROUPS groups. A row's last 1..7 values (in_features % 8) are one more group,
 * its weight word assembled from the row's last bytes (the input words are zero-padded).
 */
#include <stddef.h>

#include "mcup_dsp.h"
#include "mcup_nn.h"
#include "mcup_requant.h"
#include "mcup_s4.h"

int32_t mcup_fc_s4_dense_get_buffer_size(const mcup_fc_s4_params *p)
{
    return 16 * ((p->in_features + 7) / 8); /* the input in s4-pair words */
}

static inline int8_t requant(const mcup_quant_params *q, int32_t acc, int32_t o)
{
    return mcup_requantize_s8(acc, q->multiplier[o], q->shift[o], q->output_offset, q->act_min,
                              q->act_max);
}

static inline int32_t bias_of(const mcup_quant_params *q, int32_t o)
{
    return q->bias != NULL ? q->bias[o] : 0;
}

/*
 * One group of 8 values of two rows: loads the rows' weight words and the group's four input
 * words (advancing w0, w1 and x past them), and adds 16 * the products to a0, a1. On the target
 * one asm block of 24 instructions (2 LDR, 2 LDRD, 4 AND, 8 SXTB16, 8 SMLAD; 13 registers):
 * written in C, GCC 12 hoists the sign extensions away from their multiplies and spills (56
 * instructions per two groups instead of 50). Elsewhere (the host tests), the same in C.
 */
static inline __attribute__((always_inline)) void group2(const int32_t **xp, const uint8_t **w0,
                                                         const uint8_t **w1, uint32_t mask,
                                                         int32_t *a0, int32_t *a1)
{
#if defined(__ARM_FEATURE_DSP)
    uint32_t v0, v1, t, s;
    int32_t x0, x1;
    __asm__("ldr    %[v0], [%[w0]], #4\n\t"
            "ldr    %[v1], [%[w1]], #4\n\t"
            "ldrd   %[x0], %[x1], [%[x]], #8\n\t"
            "and    %[t], %[m], %[v0], lsl #4\n\t" /* row 0 values 0 2 4 6, times 16 */
            "sxtb16 %[s], %[t]\n\t"
            "smlad  %[a0], %[x0], %[s], %[a0]\n\t"
            "sxtb16 %[s], %[t], ror #8\n\t"
            "smlad  %[a0], %[x1], %[s], %[a0]\n\t"
            "and    %[t], %[m], %[v1], lsl #4\n\t" /* row 1 */
            "sxtb16 %[s], %[t]\n\t"
            "smlad  %[a1], %[x0], %[s], %[a1]\n\t"
            "sxtb16 %[s], %[t], ror #8\n\t"
            "smlad  %[a1], %[x1], %[s], %[a1]\n\t"
            "ldrd   %[x0], %[x1], [%[x]], #8\n\t"
            "and    %[v0], %[v0], %[m]\n\t" /* row 0 values 1 3 5 7 */
            "sxtb16 %[s], %[v0]\n\t"
            "smlad  %[a0], %[x0], %[s], %[a0]\n\t"
            "sxtb16 %[s], %[v0], ror #8\n\t"
            "smlad  %[a0], %[x1], %[s], %[a0]\n\t"
            "and    %[v1], %[v1], %[m]\n\t" /* row 1 */
            "sxtb16 %[s], %[v1]\n\t"
            "smlad  %[a1], %[x0], %[s], %[a1]\n\t"
            "sxtb16 %[s], %[v1], ror #8\n\t"
            "smlad  %[a1], %[x1], %[s], %[a1]"
            : [a0] "+r"(*a0), [a1] "+r"(*a1), [w0] "+r"(*w0), [w1] "+r"(*w1), [x] "+r"(*xp),
              [v0] "=&r"(v0), [v1] "=&r"(v1), [x0] "=&r"(x0), [x1] "=&r"(x1), [t] "=&r"(t), [s] "=&r"(s)
            : [m] "r"(mask)
            : "memory");
#else
    const uint32_t v0 = mcup_read_u8x4(*w0), v1 = mcup_read_u8x4(*w1);
    *w0 += 4;
    *w1 += 4;
    (void)mask;
    *a0 = mcup_s4_mac_group(*xp, 1, v0, *a0);
    *a1 = mcup_s4_mac_group(*xp, 1, v1, *a1);
    *xp += 4;
#endif
}

/*
 * 16 * the dot products of rows w0, w1 with the input over n groups (x the first): two groups
 * per pass (the loop's three instructions shared by 32 MACs), an odd last group alone.
 */
static inline __attribute__((always_inline)) void dot2(const int32_t *x, const uint8_t *w0,
                                                       const uint8_t *w1, int32_t n,
                                                       int32_t *s0, int32_t *s1)
{
    const uint32_t mask = mcup_s4_mask();
    int32_t a0 = 0, a1 = 0;
    for (int32_t i = n >> 1; i > 0; i--) {
        group2(&x, &w0, &w1, mask, &a0, &a1);
        group2(&x, &w0, &w1, mask, &a0, &a1);
    }
    if ((n & 1) != 0) {
        group2(&x, &w0, &w1, mask, &a0, &a1);
    }
    *s0 = a0;
    *s1 = a1;
}

/* 16 * the dot product of row w with the input over groups [0, n). */
static inline int32_t dot1(const int32_t *x, const uint8_t *w, int32_t n)
{
    int32_t a = 0;
    for (int32_t i = n; i > 0; i--, w += 4, x += 4) {
        a = mcup_s4_mac_group(x, 1, mcup_read_u8x4(w), a);
    }
    return a;
}

void mcup_fc_s4_dense(const mcup_fc_s4_params *p, const int8_t *input, int8_t *output,
                      void *scratch)
{
    const mcup_quant_params *q = &p->q;
    const int32_t n = p->in_features;
    const int32_t row_bytes = mcup_s4_row_bytes(n);
    const int32_t groups = n >> 3;                  /* whole groups of 8 */
    const int32_t tail_bytes = ((n & 7) + 1) >> 1;  /* bytes of a last partial group, 0 if none */
    const int32_t *x = scratch;
    mcup_s8_to_s4_pairs(input, n, q->input_offset, scratch, 1);
    const int32_t *x_tail = x + 4 * groups;

    int32_t o = 0;
    for (; o + 1 < p->out_features; o += 2) {
        const uint8_t *w0 = p->weights + o * row_bytes;
        const uint8_t *w1 = w0 + row_bytes;
        uint32_t acc0 = (uint32_t)bias_of(q, o), acc1 = (uint32_t)bias_of(q, o + 1);
        for (int32_t g = 0; g < groups; g += MCUP_S4_CHUNK_GROUPS) {
            const int32_t m = groups - g < MCUP_S4_CHUNK_GROUPS ? groups - g : MCUP_S4_CHUNK_GROUPS;
            int32_t s0, s1;
            dot2(x + 4 * g, w0 + 4 * g, w1 + 4 * g, m, &s0, &s1);
            acc0 += (uint32_t)(s0 >> 4); /* exact: a multiple of 16 */
            acc1 += (uint32_t)(s1 >> 4);
        }
        if (tail_bytes > 0) {
            const uint32_t t0 = mcup_s4_tail_word(w0 + 4 * groups, tail_bytes);
            const uint32_t t1 = mcup_s4_tail_word(w1 + 4 * groups, tail_bytes);
            acc0 += (uint32_t)(mcup_s4_mac_group(x_tail, 1, t0, 0) >> 4);
            acc1 += (uint32_t)(mcup_s4_mac_group(x_tail, 1, t1, 0) >> 4);
        }
        output[o] = requant(q, (int32_t)acc0, o);
        output[o + 1] = requant(q, (int32_t)acc1, o + 1);
    }
    if (o < p->out_features) { /* odd out_features: the last row alone */
        const uint8_t *w = p->weights + o * row_bytes;
        uint32_t acc = (uint32_t)bias_of(q, o);
        for (int32_t g = 0; g < groups; g += MCUP_S4_CHUNK_GROUPS) {
            const int32_t m = groups - g < MCUP_S4_CHUNK_GROUPS ? groups - g : MCUP_S4_CHUNK_GROUPS;
            acc += (uint32_t)(dot1(x + 4 * g, w + 4 * g, m) >> 4);
        }
        if (tail_bytes > 0) {
            acc += (uint32_t)(mcup_s4_mac_group(x_tail, 1, mcup_s4_tail_word(w + 4 * groups, tail_bytes), 0) >> 4);
        }
        output[o] = requant(q, (int32_t)acc, o);
    }
}
