/*
 * telemetry.h - what the device reports about each inference (docs/protocol.md, TELEMETRY;
 * definitions and the bit-exact host twin in mcuprune/telemetry.py).
 */
#ifndef MCUP_TELEMETRY_H
#define MCUP_TELEMETRY_H

#include <stdint.h>

#define MCUP_TELEMETRY_BYTES 43u /* packed: count, top1, confidence, recon_error, hist */
#define MCUP_HIST_BINS 16

typedef struct {
    uint32_t count;          /* inferences since boot (wraps) */
    uint8_t top1;            /* argmax of the logits, first index wins ties */
    uint16_t confidence_q15; /* softmax probability of top1, 32768 = 1.0 */
    uint32_t recon_error;    /* sum_j (a[j] - r[j])^2 over the penultimate activations */
    uint16_t hist[MCUP_HIST_BINS]; /* #{j : ((uint8_t)(a[j] + 128)) >> 4 == b} */
} mcup_telemetry;

/*
 * Fill `t` (all but count) from the logits l[k], the penultimate activations a[d] and their
 * QSAE reconstruction r[d]; exp_q15[256] is the model's confidence table.
 */
void mcup_telemetry_compute(const int8_t *logits, int32_t k, const int8_t *act, const int8_t *recon,
                            int32_t d, const uint16_t *exp_q15, mcup_telemetry *t);

/* The 43-byte little-endian record; returns MCUP_TELEMETRY_BYTES. */
uint32_t mcup_telemetry_pack(const mcup_telemetry *t, uint8_t *out);

#endif /* MCUP_TELEMETRY_H */
