/*
 * mcup_tvm_ffi.h - the part of the TVM-FFI C ABI that TVM's C code generator (target "c") emits
 * calls against, for a bare-metal build with no TVM runtime, no C++ and no malloc.
 *
 * mcuprune/tvm_backend.py replaces the generated file's TVM includes (tvm/ffi/c_api.h,
 * tvm/ffi/extra/c_env_api.h, tvm/runtime/base.h, tvm/runtime/c_backend_api.h) by this header.
 * A TVM-generated kernel is a "packed" function:
 *     int32_t __tvm_ffi_<name>(void *self, void *args, int32_t num_args, void *result);
 * `args` is an array of TVMFFIAny: tensors are passed as kTVMFFIDLTensorPtr (v_ptr -> DLTensor),
 * integers as kTVMFFIInt (v_int64). It returns 0, or -1 after reporting an error through
 * TVMFFIErrorSetRaisedFromCStrParts (only emitted when argument checks are compiled in).
 *
 * The layouts follow DLPack 1.x (DLDataType, DLDevice, DLTensor) and tvm-ffi's TVMFFIAny
 * (16 bytes: type index, 4 bytes padding, an 8-byte value); the type indices are tvm-ffi's.
 * The wrappers (tvm_<op>.c, generated per model) build these on the stack.
 */
#ifndef MCUP_TVM_FFI_H
#define MCUP_TVM_FFI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TVM_DLL /* one static image: no export attributes */

/* tvm-ffi type indices used by the generated code and the wrappers */
#define kTVMFFINone 0
#define kTVMFFIInt 1
#define kTVMFFIDLTensorPtr 7
#define kTVMFFITensor 70 /* a managed tensor object; the wrappers never pass one */

/* DLPack */
typedef struct {
    uint8_t code; /* 0 = int, 1 = uint, 2 = float */
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    int32_t device_type; /* 1 = CPU */
    int32_t device_id;
} DLDevice;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;   /* [ndim] */
    int64_t *strides; /* [ndim] in elements, or NULL for compact row-major */
    uint64_t byte_offset;
} DLTensor;

/* One argument or return value of a packed call. */
typedef struct {
    int32_t type_index;
    uint32_t zero_padding;
    union {
        int64_t v_int64;
        double v_float64;
        void *v_ptr;
        const char *v_c_str;
        uint64_t v_uint64;
    };
} TVMFFIAny;

_Static_assert(sizeof(TVMFFIAny) == 16, "TVMFFIAny is 16 bytes in the tvm-ffi ABI");

typedef int32_t (*mcup_tvm_packed_fn)(void *self, void *args, int32_t num_args, void *result);

/* Called by generated argument checks: records the error kind and message (no allocation). */
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t num_parts);

/* The last error a TVM-generated function raised, "" if none: "<kind>: <message>" (truncated). */
const char *mcup_tvm_last_error(void);

/* Call a TVM-generated packed function; on a non-zero return, trap (the fault handler reports it). */
void mcup_tvm_call(mcup_tvm_packed_fn fn, TVMFFIAny *args, int32_t num_args);

static inline void mcup_tvm_arg_int(TVMFFIAny *arg, int32_t value)
{
    arg->type_index = kTVMFFIInt;
    arg->zero_padding = 0u;
    arg->v_int64 = value;
}

static inline void mcup_tvm_arg_tensor(TVMFFIAny *arg, DLTensor *tensor, const void *data, int32_t ndim,
                                       int64_t *shape, uint8_t code, uint8_t bits)
{
    tensor->data = (void *)(uintptr_t)data; /* TVM's ABI has no const; inputs are only read */
    tensor->device.device_type = 1;
    tensor->device.device_id = 0;
    tensor->ndim = ndim;
    tensor->dtype.code = code;
    tensor->dtype.bits = bits;
    tensor->dtype.lanes = 1u;
    tensor->shape = shape;
    tensor->strides = NULL;
    tensor->byte_offset = 0u;
    arg->type_index = kTVMFFIDLTensorPtr;
    arg->zero_padding = 0u;
    arg->v_ptr = tensor;
}

#endif /* MCUP_TVM_FFI_H */
