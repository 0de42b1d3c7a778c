/*
 * Test-only stand-in for a generated --params blob model.h (tests/test_slots_c.py,
 * tests/test_protocol_c.py): the API the runtime uses, over a made-up architecture whose blob
 * holds four arrays:
 *   0  int8 weights[MCUP_OUTPUT_SIZE * MCUP_PENULTIMATE_SIZE]  (exact length)
 *   1  int32 bias[MCUP_OUTPUT_SIZE]                             (exact length)
 *   2  uint16 exp_q15[256], exp_q15[0] == 32768                 (the confidence table)
 *   3  padding of any length                                    (to make blobs of any size)
 * The real mcup_bind is generated and tested with the code generator; this one only has to
 * accept and refuse blobs so the slot machine and the handlers can be tested in isolation.
 */
#ifndef MCUP_MODEL_H
#define MCUP_MODEL_H

#include <stdint.h>

#include "blob.h"
#include "telemetry.h"

#define MCUP_MODEL_NAME "fake"
#define MCUP_INPUT_SIZE 32
#define MCUP_OUTPUT_SIZE 4
#define MCUP_NUM_LAYERS 2
#define MCUP_ARCH_HASH 0xFA4E0001u

#ifndef FAKE_STATIC_PARAMS /* tests/test_protocol_c.py also builds a static-params firmware */
#define MCUP_PARAMS_BLOB 1
#endif
#define MCUP_PENULTIMATE_SIZE 8
#define MCUP_BLOB_ARRAYS 4
#define MCUP_FACTORY_BLOB_BYTES fake_factory_blob_bytes /* a number in generated code */

extern const uint8_t mcup_param_factory_blob[];
extern const uint32_t fake_factory_blob_bytes;

int mcup_init(void);
/* Inputs starting with "FAIL" make mcup_run fail, to test the error path. */
int mcup_run(const int8_t *input, int8_t *logits);
extern uint32_t mcup_layer_ticks[MCUP_NUM_LAYERS];

int mcup_bind(const uint8_t *blob, const mcup_blob_header *h, int bind);
int mcup_is_bound(void);
void mcup_monitor(const int8_t *logits, mcup_telemetry *t);
const int8_t *mcup_penultimate(void);

/* Test hooks: the blob bound last (NULL if none), how many times mcup_bind bound one, and
 * forgetting the binding as a reset does. */
const uint8_t *fake_bound_blob(void);
uint32_t fake_bind_count(void);
void fake_reset(void);

#endif /* MCUP_MODEL_H */
