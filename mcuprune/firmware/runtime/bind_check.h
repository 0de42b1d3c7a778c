/*
 * bind_check.h - checks of a model blob's array table and contents against the architecture,
 * used by the generated mcup_bind() of --params blob firmware (docs/protocol.md, "Model blob").
 *
 * blob.c has already checked the header and the data CRC; what is checked here is everything a
 * kernel relies on to stay inside its arrays: table bounds, array lengths, sparse indices, and
 * the ranges mcup_requant.h and the kernels assume for the quantization constants.
 *
 * Per weighted layer the blob holds, in this order: the weight arrays of its format (dense:
 * weights; bitmask: mask, values; csr8/csr4: values, deltas, row_ptr; block4: values, block_cols,
 * row_ptr; empty ones included),
 * then bias int32[rows], multiplier int32[rows], shift int32[rows] and
 * quant int32[4] = {input_offset, output_offset, act_min, act_max}. A layer with int4 weights
 * (weight_bits 4) has the same arrays, its weights/values packed two per byte (mcup_nn.h,
 * mcup_sparse.h): dense rows * ((cols + 1) / 2) bytes, bitmask (nnz + 1) / 2, csr
 * (entries + 1) / 2 with entries = row_ptr[rows], block4 2 * row_ptr[rows].
 */
#ifndef MCUP_BIND_CHECK_H
#define MCUP_BIND_CHECK_H

#include <stdint.h>

#include "blob.h"
#include "mcup_nn.h"

/* Weight formats (mcuprune/model/ops.py FORMATS, same order). */
#define MCUP_FMT_DENSE 0
#define MCUP_FMT_BITMASK 1
#define MCUP_FMT_CSR8 2
#define MCUP_FMT_CSR4 3
#define MCUP_FMT_BLOCK4 4

#define MCUP_BIND_QUANT_ARRAYS 4 /* bias, multiplier, shift, quant */

/* One array of the blob: where it is and how many bytes (bounds already checked). */
typedef struct {
    const uint8_t *data;
    uint32_t length;
} mcup_blob_array;

/* What the architecture fixes about one weighted layer: W is rows x cols in `format`, weight_bits
 * wide. */
typedef struct {
    int32_t format;      /* MCUP_FMT_* */
    int32_t rows;        /* output channels */
    int32_t cols;        /* in_features, or k_h * k_w * in_c */
    int32_t weight_bits; /* 8, or 4 (int4: weights/values two per byte) */
} mcup_bind_layer;

/* One layer's parameters found valid in a blob, ready to be pointed at by its params struct. */
typedef struct {
    const int8_t *weights;   /* dense, int8 */
    const uint8_t *weights4; /* dense, int4 (packed bytes) */
    const uint8_t *mask;     /* bitmask */
    const int8_t *values;    /* bitmask, csr, int8 (NULL when empty) */
    const uint8_t *values4;  /* bitmask, csr, int4 (packed bytes; NULL when empty) */
    const uint8_t *deltas;  /* csr (NULL when empty) */
    const void *block_cols; /* block4 (NULL when empty) */
    const void *row_ptr;    /* csr, block4 */
    int32_t row_ptr_bytes;  /* csr, block4: 1, 2 or 4 */
    mcup_quant_params q;
} mcup_bound_layer;

/* Arrays a layer of this format takes in the blob (weights + MCUP_BIND_QUANT_ARRAYS), 0 if unknown. */
int32_t mcup_bind_arrays_of(int32_t format);

/*
 * Read the blob's table: exactly `n` entries, each 4-aligned, after the table and inside
 * h->length. The blob itself must be 4-aligned (the int32 arrays are read in place).
 * Fills out[0..n-1]; 0 if valid, -1 otherwise.
 */
int mcup_bind_table(const uint8_t *blob, const mcup_blob_header *h, uint32_t n, mcup_blob_array *out);

/*
 * Check the mcup_bind_arrays_of(d->format) arrays starting at `a` against `d` and fill `out`;
 * 0 if valid, -1 otherwise (out is then unspecified).
 */
int mcup_bind_check_layer(const mcup_bind_layer *d, const mcup_blob_array *a, mcup_bound_layer *out);

/*
 * The largest |bias| an output that sums `terms` products of weight_bits-wide weights may have so
 * that the int32 accumulator cannot overflow in any summation order; -1 if none can (too many
 * terms). mcup_bind_check_layer refuses a blob whose biases exceed it (mcuprune/model/fixedpoint.py
 * bias_limit is the twin the host checks its blobs with).
 */
int64_t mcup_bind_bias_limit(uint32_t terms, int32_t weight_bits);

/* 0 if `a` is exactly `bytes` long, -1 otherwise. */
int mcup_bind_check_exact(const mcup_blob_array *a, uint32_t bytes);

/* The confidence table: uint16[256] with entry 0 = 32768 (exp(0) in Q15); 0 if so, -1 otherwise. */
int mcup_bind_check_exp_table(const mcup_blob_array *a);

#endif /* MCUP_BIND_CHECK_H */
