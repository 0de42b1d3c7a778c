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
    case MCUP_FMT_BLOCK4:
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

/*
 * The largest |bias| that keeps a kernel's int32 accumulator from overflowing when an output sums
 * `terms` products (input + input_offset) * weight: |input + input_offset| <= 255, |weight| <= 128
 * (int8) or 8 (int4), so each product, and each of the two halves a kernel may sum separately
 * (input * weight and input_offset * weight), stays within 2^15 (int8) or 2^11 (int4) per term.
 * Any partial sum in any order is then within |bias| + terms * 2^15 <= INT32_MAX. -1 if even a
 * zero bias cannot guarantee it (more than 65,535 int8 terms).
 */
int64_t mcup_bind_bias_limit(uint32_t terms, int32_t weight_bits)
{
    const int64_t per_term = weight_bits == 4 ? INT64_C(1) << 11 : INT64_C(1) << 15;
    const int64_t limit = (int64_t)INT32_MAX - (int64_t)terms * per_term; /* terms < 2^32: no wrap */
    return limit < 0 ? -1 : limit;
}

/* Bias, multiplier, shift and quant of a layer with `rows` output channels, each output summing at
 * most `terms` products of `bits`-wide weights. */
static int check_quant(const mcup_blob_array *a, int32_t rows, uint32_t terms, int32_t bits,
                       mcup_quant_params *q)
{
    const uint32_t bytes = 4u * (uint32_t)rows;
    if (a[0].length != bytes || a[1].length != bytes || a[2].length != bytes || a[3].length != 16u) {
        return BAD;
    }
    const int32_t *bias = (const int32_t *)(const void *)a[0].data;
    const int32_t *multiplier = (const int32_t *)(const void *)a[1].data;
    const int32_t *shift = (const int32_t *)(const void *)a[2].data;
    const int64_t bias_limit = mcup_bind_bias_limit(terms, bits);
    for (int32_t c = 0; c < rows; c++) {
        /* the accumulator cannot overflow (mcup_bind_bias_limit) */
        if ((int64_t)bias[c] > bias_limit || (int64_t)bias[c] < -bias_limit) {
            return BAD;
        }
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
    q->bias = bias;
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

/* The most entries (csr) or blocks (block4) any row has: row pointers already checked to start at
 * 0 and never decrease. */
static uint32_t longest_row(const mcup_blob_array *row_ptr, int32_t bytes, int32_t rows)
{
    uint32_t longest = 0;
    for (int32_t r = 0; r < rows; r++) {
        const uint32_t n = row_ptr_at(row_ptr, bytes, r + 1) - row_ptr_at(row_ptr, bytes, r);
        longest = n > longest ? n : longest;
    }
    return longest;
}

/* The width of a row_ptr array of rows + 1 elements, from its length; 0 if none fits. */
static int32_t row_ptr_width(const mcup_blob_array *row_ptr, int32_t rows)
{
    const uint32_t n_ptr = (uint32_t)rows + 1u;
    for (int32_t bytes = 1; bytes <= 4; bytes *= 2) {
        if (row_ptr->length == (uint32_t)bytes * n_ptr) {
            return bytes;
        }
    }
    return 0;
}

static int check_csr(const mcup_blob_array *values, const mcup_blob_array *deltas,
                     const mcup_blob_array *row_ptr, int32_t rows, int32_t cols, int nibbles,
                     int32_t bits, int32_t *row_ptr_bytes)
{
    const int32_t bytes = row_ptr_width(row_ptr, rows);
    if (bytes == 0) {
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

/*
 * block4: row pointers in blocks (start at 0, never decrease, end at the block count), values of
 * 4 weights per block, block columns of the width the shape gives, each inside the row's blocks
 * and increasing within a row (so a kernel reads x only inside its (cols + 3) / 4 blocks).
 */
static int check_block4(const mcup_blob_array *values, const mcup_blob_array *block_cols,
                        const mcup_blob_array *row_ptr, int32_t rows, int32_t cols, int32_t bits,
                        int32_t *row_ptr_bytes)
{
    const uint32_t n_blocks = ((uint32_t)cols + 3u) / 4u; /* cols > 0 and < 2^31: no wrap */
    if (n_blocks > 65536u) {
        return BAD; /* uint16 block columns */
    }
    const int32_t bytes = row_ptr_width(row_ptr, rows);
    if (bytes == 0) {
        return BAD;
    }
    const uint32_t blocks = row_ptr_at(row_ptr, bytes, rows); /* the row_ptr array is in bounds */
    const int32_t col_bytes = mcup_block4_col_bytes(cols);
    if (blocks > 0x3FFFFFFFu || values->length != value_bytes(4u * blocks, bits) ||
        block_cols->length != (uint32_t)col_bytes * blocks || row_ptr_at(row_ptr, bytes, 0) != 0) {
        return BAD;
    }
    for (int32_t r = 0; r < rows; r++) {
        const uint32_t begin = row_ptr_at(row_ptr, bytes, r);
        const uint32_t end = row_ptr_at(row_ptr, bytes, r + 1);
        if (end < begin || end > blocks) {
            return BAD;
        }
        uint32_t next = 0; /* the smallest block column the next block may have */
        for (uint32_t k = begin; k < end; k++) {
            const uint32_t b = (uint32_t)mcup_block4_col(block_cols->data, col_bytes, (int32_t)k);
            if (b < next || b >= n_blocks) {
                return BAD;
            }
            next = b + 1u;
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
    case MCUP_FMT_BLOCK4:
        if (check_block4(&a[0], &a[1], &a[2], d->rows, d->cols, bits, &out->row_ptr_bytes) != 0) {
            return BAD;
        }
        values = &a[0];
        out->block_cols = a[1].length > 0 ? a[1].data : NULL;
        out->row_ptr = a[2].data;
        break;
    default:
        return BAD;
    }
    /* products summed per output: a dense or bitmask row has at most cols weights; a csr row
     * (fillers included) and a block4 row (4 per block) have what their row pointers say */
    uint32_t terms = (uint32_t)d->cols;
    if (d->format == MCUP_FMT_CSR8 || d->format == MCUP_FMT_CSR4) {
        terms = longest_row(&a[2], out->row_ptr_bytes, d->rows);
    } else if (d->format == MCUP_FMT_BLOCK4) {
        terms = 4u * longest_row(&a[2], out->row_ptr_bytes, d->rows); /* < 2^32: blocks <= 2^30 */
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
    return check_quant(quant, d->rows, terms, bits, &out->q);
}
