/*
 * tvm_ffi_shim.c - the TVM-FFI functions TVM-generated C calls, for bare metal (see mcup_tvm_ffi.h).
 * Errors are kept in one static buffer; nothing allocates.
 */
#include "mcup_tvm_ffi.h"

#define ERROR_CAPACITY 96u

static char last_error[ERROR_CAPACITY];

static uint32_t append(uint32_t n, const char *s)
{
    while (s != NULL && *s != '\0' && n + 1u < ERROR_CAPACITY) {
        last_error[n++] = *s++;
    }
    last_error[n] = '\0';
    return n;
}

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t num_parts)
{
    uint32_t n = append(0u, kind);
    n = append(n, ": ");
    for (int32_t i = 0; i < num_parts; i++) {
        n = append(n, parts[i]);
    }
}

const char *mcup_tvm_last_error(void)
{
    return last_error;
}

void mcup_tvm_call(mcup_tvm_packed_fn fn, TVMFFIAny *args, int32_t num_args)
{
    TVMFFIAny result = {.type_index = kTVMFFINone};
    if (fn == NULL || fn(NULL, args, num_args, &result) != 0) {
        /* A shape the model generator did not compile, or a failed argument check: the layer
         * cannot run, so stop here rather than return garbage logits. */
        __builtin_trap();
    }
}
