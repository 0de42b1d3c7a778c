/*
 * mcup_s4.h - reading int4 weights: two's complement nibbles, two per byte, the first in the low
 * nibble (TFLite's order; the layouts are in mcup_nn.h and mcup_sparse.h). Plain C, for every
 * core: the reference kernels read nibbles with these, the DSP kernels (mcup_dsp.h) unpack whole
 * words instead.
 *
 * ((b & 15) ^ 8) - 8 is the nibble sign-extended without any implementation-defined shift; GCC
 * compiles it to one SBFX.
 */
#ifndef MCUP_S4_H
#define MCUP_S4_H

#include <stdint.h>

/* The low nibble of byte b, in [-8, 7]. */
static inline int32_t mcup_s4_lo(uint32_t b)
{
    return (int32_t)((b & 15u) ^ 8u) - 8;
}

/* The high nibble of byte b (bits 4-7), in [-8, 7]. */
static inline int32_t mcup_s4_hi(uint32_t b)
{
    return (int32_t)(((b >> 4) & 15u) ^ 8u) - 8;
}

/* Value i of a nibble stream p: the low nibble of p[i / 2] when i is even, the high when odd. */
static inline int32_t mcup_s4_at(const uint8_t *p, int32_t i)
{
    const uint32_t b = p[i >> 1];
    return (i & 1) != 0 ? mcup_s4_hi(b) : mcup_s4_lo(b);
}

/* Bytes of a dense int4 weight row of n values (rows start on a byte). */
static inline int32_t mcup_s4_row_bytes(int32_t n)
{
    return (n + 1) / 2;
}

/*
 * The sum over i < n of (x[i] + offset) * w_(start + i), w_j value j of the nibble row w: a run of
 * int8 inputs against a run of int4 weights, the weights read a byte (two values) at a time after
 * a leading high nibble when start is odd. Wraps like int32 (unsigned arithmetic).
 */
static inline uint32_t mcup_s4_dot(const int8_t *x, int32_t offset, const uint8_t *w, int32_t start,
                                   int32_t n)
{
    const uint8_t *p = w + (start >> 1);
    uint32_t acc = 0;
    int32_t i = 0;
    if ((start & 1) != 0 && n > 0) {
        acc += (uint32_t)((x[0] + offset) * mcup_s4_hi(*p++));
        i = 1;
    }
    for (; i + 1 < n; i += 2) {
        const uint32_t b = *p++;
        acc += (uint32_t)((x[i] + offset) * mcup_s4_lo(b));
        acc += (uint32_t)((x[i + 1] + offset) * mcup_s4_hi(b));
    }
    if (i < n) {
        acc += (uint32_t)((x[i] + offset) * mcup_s4_lo(*p));
    }
    return acc;
}

#endif /* MCUP_S4_H */
