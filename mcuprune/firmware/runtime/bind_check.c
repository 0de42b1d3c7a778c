/*
 * bind_check.c - the model-independent half of mcup_bind(): per-format checks that a blob's
 * arrays keep every kernel inside them (see bind_check.h). Everything is read with bounds taken
 * from the table, never from the arrays themselves, so a hostile blob cannot make this code read
 * outside the blob either.
 */
#include "bind_check.h"

#include <stddef.h>

#include "mcup_sparse.h"

#define BAD (-1)

int32_t mcup_bind_arrays_of(int32_t format)
{
    switch (format) {
    case MCUP_FMT_DENSE:
        return 1 + MCUP_BIND_QUANT_ARRAYS;
    case MCUP_FMT_BITMASK:
        return 2 + MCUP_BIND_QUANT_ARRAYS;
    case MCUP_FMT_CSR8:
    case MCUP_FMT_CSR4:
        return 3 + MCUP_BIND_QUANT_ARRAYS;
    default:
        return 0;
    }
}

int mcup_bind_table(const uint8_t *blob, const mcup_blob_header *h, uint32_t n, mcup_blob_array *out)
{
    /* int32/uint16 arrays are read in place: the blob must be as aligned as its offsets. */
    if (((uintptr_t)blob & 3u) != 0 || h->n_arrays != n || h->length < MCUP_BLOB_HEADER_BYTES) {
        return BAD;
    }
    if ((h->length - MCUP_BLOB_HEADER_BYTES) / MCUP_BLOB_TABLE_ENTRY_BYTES < n) {
        return BAD;
    }
    const uint32_t first = MCUP_BLOB_HEADER_BYTES + MCUP_BLOB_TABLE_ENTRY_BYTES * n;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *entry = blob + MCUP_BLOB_HEADER_BYTES + MCUP_BLOB_TABLE_ENTRY_BYTES * i;
        const uint32_t offset = mcup_get_u32(entry);
        const uint32_t length = mcup_get_u32(entry + 4);
        /* offset <= length first, so h->length - offset cannot wrap */
        if ((offset & 3u) != 0 || offset < first || offset > h->length || length > h->length - offset) {
            return BAD;
        }
        out[i].data = blob + offset;
        out[i].length = length;
    }
    return 0;
}

int mcup_bind_check_exact(const mcup_blob_array *a, uint32_t bytes)
{
    return a->length == bytes ? 0 : BAD;
}

int mcup_bind_check_exp_table(const mcup_blob_array *a)
{
    /* telemetry.c divides by a sum that includes entry 0 */
    return a->length == 512u && mcup_get_u16(a->data) == 32768u ? 0 : BAD;
}

/* Bias, multiplier, shift and quant of a layer with `rows` output channels. */
static int check_quant(const mcup_blob_array *a, int32_t rows, mcup_quant_params *q)
{
    const uint32_t bytes = 4u * (uint32_t)rows;
    if (a[0].length != bytes || a[1].length != bytes || a[2].length != bytes || a[3].length != 16u) {
        return BAD;
    }
    const int32_t *multiplier = (const int32_t *)(const void *)a[1].data;
    const int32_t *shift = (const int32_t *)(const void *)a[2].data;
    for (int32_t c = 0; c < rows; c++) {
        /* what fixedpoint.quantize_multiplier produces: Q31 in [2^30, 2^31) or 0, shift in [-31, 30];
         * mcup_requantize shifts by at most 31 either way, so nothing is undefined */
        if ((multiplier[c] != 0 && multiplier[c] < (INT32_C(1) << 30)) || shift[c] < -31 || shift[c] > 30) {
            return BAD;
        }
    }
    const int32_t *quant = (const int32_t *)(const void *)a[3].data;
    const int32_t input_offset = quant[0], output_offset = quant[1];
    const int32_t act_min = quant[2], act_max = quant[3];
    /* input_offset = -zero point: int8 + offset fits the kernels' int16 lanes */
    if (input_offset < -127 || input_offset > 128 || output_offset < -128 || output_offset > 127) {
        return BAD;
    }
    if (act_min < -128 || act_min > act_max || act_max > 127) {
        return BAD;
    }
    q->bias = (const int32_t *)(const void *)a[0].data;
    q->multiplier = multiplier;
    q->shift = shift;
    q->input_offset = input_offset;
    q->output_offset = output_offset;
    q->act_min = act_min;
    q->act_max = act_max;
    return 0;
}

/* Bytes of n stored weights: one each (int8), two per byte (int4). */
static uint32_t value_bytes(uint32_t n, int32_t bits)
{
    return bits == 4 ? n / 2u + (n & 1u) : n;
}

static int check_bitmask(const mcup_blob_array *mask, const mcup_blob_array *values, int32_t rows,
                         int32_t cols, int32_t bits)
{
    const uint32_t row_bytes = ((uint32_t)cols + 7u) / 8u;
    if (mask->length != row_bytes * (uint32_t)rows) {
        return BAD;
    }
    /* MSB first: the last byte's low (8 - cols % 8) bits are padding and must be clear, or a
     * kernel would read input past the row and values past their count */
    const uint8_t pad = (cols % 8) != 0 ? (uint8_t)((1u << (8 - cols % 8)) - 1u) : 0u;
    uint32_t set = 0;
    for (int32_t r = 0; r < rows; r++) {
        const uint8_t *m = mask->data + (uint32_t)r * row_bytes;
        if ((m[row_bytes - 1u] & pad) != 0) {
            return BAD;
        }
        for (uint32_t b = 0; b < row_bytes; b++) {
            for (uint32_t v = m[b]; v != 0; v &= v - 1u) { /* clears the lowest set bit */
                set++;
            }
        }
    }
    return values->length == value_bytes(set, bits) ? 0 : BAD;
}

/* i in 0..rows: inside the array, whose length was checked against bytes * (rows + 1) */
static uint32_t row_ptr_at(const mcup_blob_array *row_ptr, int32_t bytes, int32_t i)
{
    return (uint32_t)mcup_sparse_row_ptr(row_ptr->data, bytes, i);
}

static int check_csr(const mcup_blob_array *values, const mcup_blob_array *deltas,
                     const mcup_blob_array *row_ptr, int32_t rows, int32_t cols, int nibbles,
                     int32_t bits, int32_t *row_ptr_bytes)
{
    const uint32_t n_ptr = (uint32_t)rows + 1u;
    int32_t bytes;
    if (row_ptr->length == n_ptr) {
        bytes = 1;
    } else if (row_ptr->length == 2u * n_ptr) {
        bytes = 2;
    } else if (row_ptr->length == 4u * n_ptr) {
        bytes = 4;
    } else {
        return BAD;
    }
    const uint32_t entries = row_ptr_at(row_ptr, bytes, rows); /* the row_ptr array is in bounds */
    if (values->length != value_bytes(entries, bits)) {
        return BAD;
    }
    if (deltas->length != (nibbles ? entries / 2u + (entries & 1u) : entries)) {
        return BAD;
    }
    if (row_ptr_at(row_ptr, bytes, 0) != 0) {
        return BAD;
    }
    for (int32_t r = 0; r < rows; r++) {
        const uint32_t begin = row_ptr_at(row_ptr, bytes, r);
        const uint32_t end = row_ptr_at(row_ptr, bytes, r + 1);
        if (end < begin || end > entries) {
            return BAD;
        }
        uint32_t col = 0; /* at most cols - 1 + 255 after an add: no wrap */
        for (uint32_t k = begin; k < end; k++) {
            const uint8_t d = deltas->data[nibbles ? k / 2u : k];
            col += nibbles ? (uint32_t)((d >> (4u * (k & 1u))) & 0xFu) : d;
            if (col >= (uint32_t)cols) {
                return BAD;
            }
        }
    }
    *row_ptr_bytes = bytes;
    return 0;
}

int mcup_bind_check_layer(const mcup_bind_layer *d, const mcup_blob_array *a, mcup_bound_layer *out)
{
    const mcup_bound_layer empty = {0};
    *out = empty;
    if (d->rows <= 0 || d->cols <= 0 || (d->weight_bits != 8 && d->weight_bits != 4)) {
        return BAD;
    }
    const int32_t bits = d->weight_bits;
    const mcup_blob_array *quant = a + mcup_bind_arrays_of(d->format) - MCUP_BIND_QUANT_ARRAYS;
    const mcup_blob_array *values = NULL; /* the array of weight values, int8 or int4 */
    switch (d->format) {
    case MCUP_FMT_DENSE:
        /* int4: each row starts on a byte, (cols + 1) / 2 bytes */
        if (a[0].length != (uint32_t)d->rows * value_bytes((uint32_t)d->cols, bits)) {
            return BAD;
        }
        values = &a[0];
        break;
    case MCUP_FMT_BITMASK:
        if (check_bitmask(&a[0], &a[1], d->rows, d->cols, bits) != 0) {
            return BAD;
        }
        out->mask = a[0].data;
        values = &a[1];
        break;
    case MCUP_FMT_CSR8:
    case MCUP_FMT_CSR4:
        if (check_csr(&a[0], &a[1], &a[2], d->rows, d->cols, d->format == MCUP_FMT_CSR4, bits,
                      &out->row_ptr_bytes) != 0) {
            return BAD;
        }
        values = &a[0];
        out->deltas = a[1].length > 0 ? a[1].data : NULL;
        out->row_ptr = a[2].data;
        break;
    default:
        return BAD;
    }
    const uint8_t *data = values->length > 0 ? values->data : NULL;
    if (d->format == MCUP_FMT_DENSE && bits == 8) {
        out->weights = (const int8_t *)data;
    } else if (d->format == MCUP_FMT_DENSE) {
        out->weights4 = data;
    } else if (bits == 8) {
        out->values = (const int8_t *)data;
    } else {
        out->values4 = data;
    }
    return check_quant(quant, d->rows, &out->q);
}
