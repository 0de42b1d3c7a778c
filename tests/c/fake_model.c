/* Test-only fake model over the blob layout described in fake_model/model.h. */
#include "model.h"

#include <string.h>

#include "protocol.h"

uint32_t mcup_layer_ticks[MCUP_NUM_LAYERS];

static const uint8_t *bound_blob;
static const int8_t *weights;
static const uint8_t *bias; /* int32 LE, read bytewise */
static const uint16_t *exp_q15;
static uint32_t bind_count;
static int8_t penultimate[MCUP_PENULTIMATE_SIZE];

int mcup_init(void)
{
#ifdef FAKE_STATIC_PARAMS
    /* Static parameters: the factory blob plays the compiled-in arrays. */
    mcup_blob_header h;
    h.arch_hash = MCUP_ARCH_HASH;
    h.length = fake_factory_blob_bytes;
    h.n_arrays = MCUP_BLOB_ARRAYS;
    return mcup_bind(mcup_param_factory_blob, &h, 1);
#else
    return 0;
#endif
}

int mcup_bind(const uint8_t *blob, const mcup_blob_header *h, int bind)
{
    static const uint32_t exact[3] = {MCUP_OUTPUT_SIZE * MCUP_PENULTIMATE_SIZE, 4u * MCUP_OUTPUT_SIZE, 512u};
    const uint32_t n = MCUP_BLOB_ARRAYS;
    const uint8_t *array[MCUP_BLOB_ARRAYS];
    if (h->arch_hash != MCUP_ARCH_HASH || h->n_arrays != n) {
        return MCUP_ERR_BAD_BLOB;
    }
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t off = mcup_get_u32(blob + 32u + 8u * i);
        const uint32_t len = mcup_get_u32(blob + 36u + 8u * i);
        if (off % 4u != 0u || off < 32u + 8u * n || off > h->length || len > h->length - off) {
            return MCUP_ERR_BAD_BLOB;
        }
        if (i < 3u && len != exact[i]) {
            return MCUP_ERR_BAD_BLOB;
        }
        array[i] = blob + off;
    }
    if (mcup_get_u16(array[2]) != 32768u) {
        return MCUP_ERR_BAD_BLOB;
    }
    if (bind) {
        bound_blob = blob;
        weights = (const int8_t *)array[0];
        bias = array[1];
        exp_q15 = (const uint16_t *)(const void *)array[2];
        bind_count++;
    }
    return 0;
}

int mcup_is_bound(void)
{
    return bound_blob != 0;
}

const uint8_t *fake_bound_blob(void)
{
    return bound_blob;
}

uint32_t fake_bind_count(void)
{
    return bind_count;
}

void fake_reset(void)
{
    bound_blob = 0;
    weights = 0;
    bias = 0;
    exp_q15 = 0;
}

int mcup_run(const int8_t *input, int8_t *logits)
{
    if (bound_blob == 0 || memcmp(input, "FAIL", 4) == 0) {
        return -1;
    }
    for (int j = 0; j < MCUP_PENULTIMATE_SIZE; j++) {
        penultimate[j] = (int8_t)(input[j] ^ input[j + MCUP_PENULTIMATE_SIZE]);
    }
    for (int k = 0; k < MCUP_OUTPUT_SIZE; k++) {
        int32_t acc = (int32_t)mcup_get_u32(bias + 4 * k);
        for (int j = 0; j < MCUP_PENULTIMATE_SIZE; j++) {
            acc += weights[k * MCUP_PENULTIMATE_SIZE + j] * penultimate[j];
        }
        acc >>= 6;
        logits[k] = (int8_t)(acc > 127 ? 127 : acc < -128 ? -128 : acc);
    }
    mcup_layer_ticks[0] = 11u;
    mcup_layer_ticks[1] = 22u;
    return 0;
}

const int8_t *mcup_penultimate(void)
{
    return penultimate;
}

void mcup_monitor(const int8_t *logits, mcup_telemetry *t)
{
    int8_t recon[MCUP_PENULTIMATE_SIZE];
    for (int j = 0; j < MCUP_PENULTIMATE_SIZE; j++) {
        recon[j] = (int8_t)(penultimate[j] / 2); /* a stand-in autoencoder */
    }
    mcup_telemetry_compute(logits, MCUP_OUTPUT_SIZE, penultimate, recon, MCUP_PENULTIMATE_SIZE, exp_q15, t);
}
