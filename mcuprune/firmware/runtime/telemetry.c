/*
 * telemetry.c - per-inference telemetry (telemetry.h), bit-exact with mcuprune/telemetry.py:
 * integer arithmetic only, every definition written as the Python docstring states it.
 */
#include "telemetry.h"

#include <stdint.h>

#define MCUP_Q15_ONE 32768u

void mcup_telemetry_compute(const int8_t *logits, int32_t k, const int8_t *act, const int8_t *recon,
                            int32_t d, const uint16_t *exp_q15, mcup_telemetry *t)
{
    int32_t max = logits[0];
    uint8_t top = 0;
    for (int32_t j = 1; j < k; j++) {
        if (logits[j] > max) { /* strictly greater: the first maximum wins */
            max = logits[j];
            top = (uint8_t)j;
        }
    }
    uint32_t s = 0;
    for (int32_t j = 0; j < k; j++) {
        s += exp_q15[max - logits[j]]; /* gap 0..255 */
    }
    /* The top class alone adds exp_q15[0] = 32768, so s >= 32768 and the quotient fits Q15; the
     * clamp only keeps the division defined for a table mcup_bind would have refused. */
    if (s < MCUP_Q15_ONE) {
        s = MCUP_Q15_ONE;
    }
    t->top1 = top;
    t->confidence_q15 = (uint16_t)((UINT32_C(1) << 30) / s);

    uint32_t e = 0;
    for (int32_t b = 0; b < MCUP_HIST_BINS; b++) {
        t->hist[b] = 0;
    }
    for (int32_t j = 0; j < d; j++) {
        const int32_t diff = (int32_t)act[j] - recon[j];
        e += (uint32_t)(diff * diff);
        t->hist[((uint8_t)(act[j] + 128)) >> 4]++;
    }
    t->recon_error = e;
}

static uint8_t *put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    p = put_u16(p, (uint16_t)v);
    return put_u16(p, (uint16_t)(v >> 16));
}

uint32_t mcup_telemetry_pack(const mcup_telemetry *t, uint8_t *out)
{
    uint8_t *p = put_u32(out, t->count);
    *p++ = t->top1;
    p = put_u16(p, t->confidence_q15);
    p = put_u32(p, t->recon_error);
    for (int32_t b = 0; b < MCUP_HIST_BINS; b++) {
        p = put_u16(p, t->hist[b]);
    }
    return (uint32_t)(p - out); /* MCUP_TELEMETRY_BYTES */
}
