/*
 * mcup_model.c - the API of an exported mcuprune model (mcup_model.h documents every function):
 * the workspace, the checks around mcup_run, the float conversions and, for a model whose
 * parameters live in a blob, mcup_bind. The same file serves every model; what differs comes
 * from the generated headers.
 */
#include "mcup_model.h"

#include <stddef.h>
#include <stdint.h>

/* Defined in mcup_graph.c (the generated model code), which addresses the activations as
 * mcup_arena + offset and gives the kernels mcup_scratch; both point into the workspace. */
extern int8_t *mcup_arena;
extern int32_t *mcup_scratch;

#define MCUP_ALIGN4(n) (((n) + 3u) / 4u * 4u)

static int mcup_ready; /* 1 after a successful mcup_init / mcup_init_with_arena */

int mcup_init_with_arena(void *arena, size_t size)
{
    mcup_ready = 0;
    if (arena == NULL) {
        return MCUP_ERR_ARGUMENT;
    }
    if (((uintptr_t)arena & 3u) != 0u) {
        return MCUP_ERR_ARENA_ALIGN; /* the kernels' scratch is read as int32 words */
    }
    if (size < (size_t)MCUP_WORKSPACE_BYTES) {
        return MCUP_ERR_ARENA_TOO_SMALL;
    }
    mcup_arena = (int8_t *)arena;
    mcup_scratch = (int32_t *)(void *)((uint8_t *)arena + MCUP_ALIGN4((uint32_t)MCUP_ARENA_BYTES));
    /* Each kernel's own _get_buffer_size against what the generator reserved: a mismatch is a
     * generator bug, caught here instead of as memory corruption in mcup_run. */
    if (mcup_graph_init() != 0) {
        return MCUP_ERR_SCRATCH;
    }
    mcup_ready = 1;
    return MCUP_OK;
}

int mcup_run(const int8_t *input, int8_t *output)
{
    if (input == NULL || output == NULL) {
        return MCUP_ERR_ARGUMENT;
    }
    if (!mcup_ready) {
        return MCUP_ERR_NOT_INITIALIZED;
    }
#ifdef MCUP_PARAMS_BLOB
    if (!mcup_is_bound()) {
        return MCUP_ERR_NO_BLOB;
    }
#endif
    return mcup_graph_run(input, output) == 0 ? MCUP_OK : MCUP_ERR_NO_BLOB; /* its only failure */
}

/*
 * TFLite's QUANTIZE, as mcuprune.model.reference.quantize_input: q = clamp(round(x / scale) + zp)
 * with the division in float and halves rounded away from zero. Written without roundf so the
 * library needs no libm. The quotient is clamped before the conversion to int, which C leaves
 * undefined out of range: results agree with the reference wherever the reference is defined.
 */
static int8_t mcup_quantize(float x, float scale, int32_t zero_point)
{
    float quotient = x / scale;
    if (!(quotient == quotient)) {
        quotient = 0.0f; /* NaN */
    }
    if (quotient > 512.0f) {
        quotient = 512.0f; /* beyond any int8 after the zero point: saturates below */
    } else if (quotient < -512.0f) {
        quotient = -512.0f;
    }
    int32_t whole = (int32_t)quotient; /* truncates toward zero */
    const float rest = quotient - (float)whole; /* exact: |quotient| <= 512 */
    if (rest >= 0.5f) {
        whole += 1;
    } else if (rest <= -0.5f) {
        whole -= 1;
    }
    const int32_t q = whole + zero_point;
    return (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
}

void mcup_quantize_input(const float *x, int8_t *q)
{
    for (uint32_t i = 0; i < (uint32_t)MCUP_INPUT_SIZE; i++) {
        q[i] = mcup_quantize(x[i], MCUP_INPUT_SCALE, MCUP_INPUT_ZERO_POINT);
    }
}

void mcup_dequantize_output(const int8_t *q, float *y)
{
    for (uint32_t i = 0; i < (uint32_t)MCUP_OUTPUT_SIZE; i++) {
        /* TFLite computes float(double(scale) * d); a float product of the same two values is
         * rounded once from the exact product too (|d| <= 255 fits a float), so it is equal. */
        y[i] = MCUP_OUTPUT_SCALE * (float)((int32_t)q[i] - MCUP_OUTPUT_ZERO_POINT);
    }
}

int mcup_argmax(const int8_t *output)
{
    int best = 0;
    for (int i = 1; i < (int)MCUP_OUTPUT_SIZE; i++) {
        if (output[i] > output[best]) {
            best = i; /* the first of equal maxima wins, as numpy's argmax */
        }
    }
    return best;
}

const char *mcup_strerror(int code)
{
    switch (code) {
    case MCUP_OK:
        return "ok";
    case MCUP_ERR_ARGUMENT:
        return "a NULL pointer argument";
    case MCUP_ERR_ARENA_TOO_SMALL:
        return "workspace smaller than MCUP_WORKSPACE_BYTES";
    case MCUP_ERR_ARENA_ALIGN:
        return "workspace not 4-byte aligned";
    case MCUP_ERR_NOT_INITIALIZED:
        return "mcup_init or mcup_init_with_arena has not succeeded";
    case MCUP_ERR_SCRATCH:
        return "a kernel needs more scratch than generated (please report)";
    case MCUP_ERR_NO_BLOB:
        return "no model blob bound (mcup_bind)";
    case MCUP_ERR_BLOB_ALIGN:
        return "model blob not 4-byte aligned";
    case MCUP_ERR_BLOB_HEADER:
        return "model blob header invalid (magic, format, CRC or length)";
    case MCUP_ERR_BLOB_ARCH:
        return "model blob made for another architecture";
    case MCUP_ERR_BLOB_CRC:
        return "model blob data CRC mismatch";
    case MCUP_ERR_BLOB_CONTENT:
        return "model blob arrays do not fit the architecture";
    default:
        return "unknown error";
    }
}

#ifdef MCUP_PARAMS_BLOB
/* The checks the firmware makes before it binds a slot (runtime/slots.c), in the same order. */
int mcup_bind(const void *blob, size_t size)
{
    const uint8_t *bytes = (const uint8_t *)blob;
    mcup_blob_header h;
    if (blob == NULL) {
        return MCUP_ERR_ARGUMENT;
    }
    if (((uintptr_t)blob & 3u) != 0u) {
        return MCUP_ERR_BLOB_ALIGN; /* the int32 arrays are read in place */
    }
    if (size < MCUP_BLOB_HEADER_BYTES) {
        return MCUP_ERR_BLOB_HEADER;
    }
#if SIZE_MAX > 0xFFFFFFFFu /* a test that is always false on 32-bit targets warns (-Wtype-limits) */
    const uint32_t capacity = size > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)size;
#else
    const uint32_t capacity = (uint32_t)size;
#endif
    if (mcup_blob_parse_header(bytes, capacity, &h) != 0) {
        return MCUP_ERR_BLOB_HEADER;
    }
    if (h.arch_hash != (uint32_t)MCUP_ARCH_HASH) {
        return MCUP_ERR_BLOB_ARCH;
    }
    if (!mcup_blob_data_ok(bytes, &h)) {
        return MCUP_ERR_BLOB_CRC;
    }
    /* Checks every array against the architecture, then binds; a failure changes nothing. */
    if (mcup_graph_bind(bytes, &h, 1) != 0) {
        return MCUP_ERR_BLOB_CONTENT;
    }
    return MCUP_OK;
}
#endif
