/*
 * bind_fuzz.c - mcup_bind_check_layer (firmware/runtime/bind_check.c) and the fully connected
 * kernels of every weight format and width, on the host under -fsanitize=address,undefined
 * (tests/test_bind_fuzz.py). Built once per kernel variant (reference, dsp with MCUP_EMULATE_DSP).
 *
 * stdin: cases, each u32 format, u32 rows, u32 cols, u32 weight_bits, u32 n_arrays, then per
 * array u32 length and its bytes (the layer's arrays in blob order), then int8 input[cols].
 * stdout: per case u8 accepted (mcup_bind_check_layer returned 0); if accepted, the kernel's
 * int8 output[rows], computed from exactly what the check bound.
 * Every array lives in a heap buffer of exactly its length, so ASan sees any read past it; a
 * sanitizer report ends the process with a non-zero status.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bind_check.h"
#include "mcup_nn.h"
#include "mcup_sparse.h"

#define MAX_ARRAYS 8

static int read_u32(uint32_t *v)
{
    uint8_t b[4];
    if (fread(b, 1, 4, stdin) != 4) {
        return 0;
    }
    *v = mcup_get_u32(b);
    return 1;
}

static uint8_t *read_exact(uint32_t n)
{
    uint8_t *p = malloc(n > 0 ? n : 1u);
    if (p == NULL || fread(p, 1, n, stdin) != n) {
        fprintf(stderr, "short input\n");
        exit(2);
    }
    return p;
}

/* Run the bound layer through the kernel of its format and width (the struct fields mcup_bind
 * would set, codegen/emit.py _BIND_FIELDS). */
#define RUN(kernel, type, ...)                                                             \
    do {                                                                                   \
        type p = {.in_features = d->cols, .out_features = d->rows, __VA_ARGS__, .q = b->q}; \
        void *scratch = malloc((size_t)kernel##_get_buffer_size(&p) + 1u);                 \
        kernel(&p, x, y, scratch);                                                         \
        free(scratch);                                                                     \
    } while (0)

static void run(const mcup_bind_layer *d, const mcup_bound_layer *b, const int8_t *x, int8_t *y)
{
    const int s4 = d->weight_bits == 4;
    switch (d->format) {
    case MCUP_FMT_DENSE:
        if (s4) {
            RUN(mcup_fc_s4_dense, mcup_fc_s4_params, .weights = b->weights4);
        } else {
            RUN(mcup_fc_s8_dense, mcup_fc_params, .weights = b->weights);
        }
        break;
    case MCUP_FMT_BITMASK:
        if (s4) {
            RUN(mcup_fc_s4_bitmask, mcup_fc_s4_bitmask_params, .mask = b->mask, .values = b->values4);
        } else {
            RUN(mcup_fc_s8_bitmask, mcup_fc_bitmask_params, .mask = b->mask, .values = b->values);
        }
        break;
    case MCUP_FMT_CSR8:
        if (s4) {
            RUN(mcup_fc_s4_csr8, mcup_fc_s4_csr_params, .values = b->values4, .deltas = b->deltas,
                .row_ptr = b->row_ptr, .row_ptr_bytes = b->row_ptr_bytes);
        } else {
            RUN(mcup_fc_s8_csr8, mcup_fc_csr_params, .values = b->values, .deltas = b->deltas,
                .row_ptr = b->row_ptr, .row_ptr_bytes = b->row_ptr_bytes);
        }
        break;
    case MCUP_FMT_CSR4:
        if (s4) {
            RUN(mcup_fc_s4_csr4, mcup_fc_s4_csr_params, .values = b->values4, .deltas = b->deltas,
                .row_ptr = b->row_ptr, .row_ptr_bytes = b->row_ptr_bytes);
        } else {
            RUN(mcup_fc_s8_csr4, mcup_fc_csr_params, .values = b->values, .deltas = b->deltas,
                .row_ptr = b->row_ptr, .row_ptr_bytes = b->row_ptr_bytes);
        }
        break;
    case MCUP_FMT_BLOCK4:
        if (s4) {
            RUN(mcup_fc_s4_block4, mcup_fc_s4_block4_params, .values = b->values4,
                .block_cols = b->block_cols, .row_ptr = b->row_ptr, .row_ptr_bytes = b->row_ptr_bytes);
        } else {
            RUN(mcup_fc_s8_block4, mcup_fc_block4_params, .values = b->values, .block_cols = b->block_cols,
                .row_ptr = b->row_ptr, .row_ptr_bytes = b->row_ptr_bytes);
        }
        break;
    default:
        fprintf(stderr, "bound an unknown format %d\n", (int)d->format);
        exit(2);
    }
}

int main(void)
{
    uint32_t fmt;
    while (read_u32(&fmt)) {
        uint32_t rows, cols, bits, n;
        if (!read_u32(&rows) || !read_u32(&cols) || !read_u32(&bits) || !read_u32(&n) || n > MAX_ARRAYS) {
            fprintf(stderr, "bad case header\n");
            return 2;
        }
        mcup_blob_array a[MAX_ARRAYS];
        uint8_t *owned[MAX_ARRAYS];
        for (uint32_t i = 0; i < n; i++) {
            uint32_t len;
            if (!read_u32(&len)) {
                return 2;
            }
            owned[i] = read_exact(len);
            a[i].data = owned[i];
            a[i].length = len;
        }
        int8_t *x = (int8_t *)read_exact(cols);
        const mcup_bind_layer d = {(int32_t)fmt, (int32_t)rows, (int32_t)cols, (int32_t)bits};
        mcup_bound_layer b;
        const uint8_t accepted = n == (uint32_t)mcup_bind_arrays_of(d.format) && mcup_bind_check_layer(&d, a, &b) == 0;
        fwrite(&accepted, 1, 1, stdout);
        if (accepted) {
            int8_t *y = malloc(rows);
            run(&d, &b, x, y);
            fwrite(y, 1, rows, stdout);
            free(y);
        }
        free(x);
        for (uint32_t i = 0; i < n; i++) {
            free(owned[i]);
        }
    }
    return 0;
}
