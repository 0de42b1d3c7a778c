/*
 * mcup_sparse.h - int8 FC and conv kernels for pruned weights stored as packed sparse arrays.
 *
 * Same conventions as mcup_nn.h (TFLite int8, per-channel requantization through
 * mcup_quant_params, HWC feature maps, batch 1) and the same results: every kernel here is
 * bit-identical to its dense twin (mcup_fc_s8_dense, mcup_conv2d_s8_dense) run on the unpacked
 * weights, hence to mcuprune/model/reference.py. As in mcup_nn.h, each kernel has a reference
 * implementation (firmware/kernels/reference/) and an optimized twin with the same name
 * (firmware/kernels/dsp/); mcuprune/model/formats.py packs the arrays, costs.py picks a format.
 * The csr8 and csr4 kernels of an op differ only in how they read a delta, so they share their
 * walk: mcup_csr_walk.h (reference) and mcup_csr_walk_dsp.h (DSP), included by those files only;
 * the block4 DSP kernels share mcup_block4_dsp.h.
 *
 * The weight matrix W has rows = output channels and cols = in_features (FC) or
 * k_h * k_w * in_c (conv, the dense [k_h][k_w][in_c] order flattened). Formats:
 *
 *  bitmask  mask[rows][(cols + 7) / 8]: bit (7 - j) of byte b of a row is set iff
 *           W[row][8 * b + j] != 0 (MSB first; each row padded with 0 bits to a whole byte);
 *           values[nnz]: the non-zero weights in row-major order.
 *  csr8     values[entries] (int8) and deltas[entries] (uint8): entry k of a row holds the
 *           weight at column col_k = col_(k-1) + deltas[k], with col_(-1) = 0 (the first delta
 *           of a row is its absolute column). A gap wider than 255 is bridged by filler entries
 *           (delta 255, value 0), so entries = nnz + fillers.
 *           row_ptr[rows + 1]: entries before each row (row_ptr[rows] = entries).
 *  csr4     As csr8 with 4-bit deltas (fillers bridge gaps wider than 15), two per byte: the
 *           delta of entry k (counted over the whole array, not per row) is the low nibble of
 *           deltas[k / 2] when k is even, the high nibble when k is odd.
 *
 *  block4   Blocks of 1 x 4: block b of a row covers columns 4b .. 4b + 3, and there are
 *           blocks = (cols + 3) / 4 of them (the last one padded with zero columns when cols % 4
 *           != 0). A row stores every block holding a non-zero weight, zeros included, so any
 *           mask is representable; the kernels are fast when masks are made of whole blocks.
 *           values[4 * stored]: the stored blocks' weights, row-major, 4 per block (the padding
 *           columns hold 0); block_cols[stored]: the block column b of each stored block,
 *           strictly increasing within a row, uint8_t when blocks <= 256 else uint16_t
 *           (mcup_block4_col_bytes: the width follows from the shape, so the structs carry none;
 *           blocks <= 65536); row_ptr[rows + 1]: stored blocks before each row
 *           (row_ptr[rows] = stored).
 *
 * row_ptr elements are uint8_t, uint16_t or uint32_t (row_ptr_bytes = 1, 2 or 4): the
 * narrowest type that holds `entries` (block4: `stored`). None of the arrays needs any alignment
 * beyond its element type (the code generator aligns each to 4 bytes; the DSP kernels read 4
 * values with one LDR, which the M4 takes at any address).
 *
 * int4 weights (the mcup_<kernel>_s4_<format> kernels; values in [-8, 7], see mcup_nn.h): mask,
 * deltas and row_ptr as above; `values` is a stream of nibbles, two per byte, value k (counted
 * over the whole array, not per row) in the low nibble of values[k / 2] when k is even, the high
 * nibble when k is odd, and a 0 high nibble after an odd count: bitmask (nnz + 1) / 2 bytes, csr8
 * and csr4 (entries + 1) / 2 bytes (fillers hold 0). A csr entry's value sits at the index its
 * csr4 delta does, so a row may start in a high nibble of both. block4: values[2 * stored], block
 * k's 4 values in bytes 2k and 2k + 1 (the same stream; every block starts on a byte). The structs
 * are the int8 ones with values as const uint8_t *.
 *
 * Scratch: as in mcup_nn.h, each kernel has a _get_buffer_size companion returning the bytes of
 * 4-byte aligned working memory the caller passes as `scratch` (0: scratch may be NULL).
 */
#ifndef MCUP_SPARSE_H
#define MCUP_SPARSE_H

#include <stdint.h>

#include "mcup_nn.h"

/* Fully connected with bitmask weights (cols = in_features). */
typedef struct {
    int32_t in_features;
    int32_t out_features;
    const uint8_t *mask;  /* [out_features][(in_features + 7) / 8], MSB first */
    const int8_t *values; /* [nnz], row-major */
    mcup_quant_params q;
} mcup_fc_bitmask_params;

/* Fully connected with csr8 or csr4 weights (cols = in_features). */
typedef struct {
    int32_t in_features;
    int32_t out_features;
    const int8_t *values;  /* [entries], fillers included */
    const uint8_t *deltas; /* csr8: [entries]; csr4: [(entries + 1) / 2], two per byte */
    const void *row_ptr;   /* [out_features + 1], element type given by row_ptr_bytes */
    int32_t row_ptr_bytes; /* 1, 2 or 4: uint8_t, uint16_t or uint32_t elements */
    mcup_quant_params q;
} mcup_fc_csr_params;

/* 2-D convolution with bitmask weights (cols = k_h * k_w * in_c); shapes and geometry as
 * mcup_conv2d_params (mcup_nn.h). */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    const uint8_t *mask;  /* [out_c][(k_h * k_w * in_c + 7) / 8], MSB first */
    const int8_t *values; /* [nnz], row-major */
    mcup_quant_params q;
} mcup_conv2d_bitmask_params;

/* 2-D convolution with csr8 or csr4 weights (cols = k_h * k_w * in_c); shapes and geometry as
 * mcup_conv2d_params. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    const int8_t *values;  /* [entries], fillers included */
    const uint8_t *deltas; /* csr8: [entries]; csr4: [(entries + 1) / 2], two per byte */
    const void *row_ptr;   /* [out_c + 1], element type given by row_ptr_bytes */
    int32_t row_ptr_bytes; /* 1, 2 or 4 */
    mcup_quant_params q;
} mcup_conv2d_csr_params;

/* Fully connected with block4 weights (cols = in_features). */
typedef struct {
    int32_t in_features;
    int32_t out_features;
    const int8_t *values;   /* [4 * stored]: 4 weights per stored block, its zeros included */
    const void *block_cols; /* [stored]: uint8_t or uint16_t, see mcup_block4_col_bytes */
    const void *row_ptr;    /* [out_features + 1] stored blocks before each row, see row_ptr_bytes */
    int32_t row_ptr_bytes;  /* 1, 2 or 4: uint8_t, uint16_t or uint32_t elements */
    mcup_quant_params q;
} mcup_fc_block4_params;

/* 2-D convolution with block4 weights (cols = k_h * k_w * in_c); shapes and geometry as
 * mcup_conv2d_params. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    const int8_t *values;   /* [4 * stored] */
    const void *block_cols; /* [stored]: uint8_t or uint16_t, see mcup_block4_col_bytes */
    const void *row_ptr;    /* [out_c + 1] */
    int32_t row_ptr_bytes;  /* 1, 2 or 4 */
    mcup_quant_params q;
} mcup_conv2d_block4_params;

/* The int4 twins of the six structs above: the same fields, `values` packed two per byte. */
typedef struct {
    int32_t in_features;
    int32_t out_features;
    const uint8_t *mask;   /* [out_features][(in_features + 7) / 8], MSB first */
    const uint8_t *values; /* [(nnz + 1) / 2]: nibbles, row-major */
    mcup_quant_params q;
} mcup_fc_s4_bitmask_params;

typedef struct {
    int32_t in_features;
    int32_t out_features;
    const uint8_t *values; /* [(entries + 1) / 2]: nibbles, fillers included */
    const uint8_t *deltas; /* csr8: [entries]; csr4: [(entries + 1) / 2], two per byte */
    const void *row_ptr;   /* [out_features + 1], element type given by row_ptr_bytes */
    int32_t row_ptr_bytes; /* 1, 2 or 4 */
    mcup_quant_params q;
} mcup_fc_s4_csr_params;

typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    const uint8_t *mask;   /* [out_c][(k_h * k_w * in_c + 7) / 8], MSB first */
    const uint8_t *values; /* [(nnz + 1) / 2]: nibbles, row-major */
    mcup_quant_params q;
} mcup_conv2d_s4_bitmask_params;

typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    const uint8_t *values; /* [(entries + 1) / 2]: nibbles, fillers included */
    const uint8_t *deltas; /* csr8: [entries]; csr4: [(entries + 1) / 2], two per byte */
    const void *row_ptr;   /* [out_c + 1], element type given by row_ptr_bytes */
    int32_t row_ptr_bytes; /* 1, 2 or 4 */
    mcup_quant_params q;
} mcup_conv2d_s4_csr_params;

typedef struct {
    int32_t in_features;
    int32_t out_features;
    const uint8_t *values;  /* [2 * stored]: nibbles, 4 per block */
    const void *block_cols; /* [stored]: uint8_t or uint16_t, see mcup_block4_col_bytes */
    const void *row_ptr;    /* [out_features + 1] */
    int32_t row_ptr_bytes;  /* 1, 2 or 4 */
    mcup_quant_params q;
} mcup_fc_s4_block4_params;

typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    const uint8_t *values;  /* [2 * stored]: nibbles, 4 per block */
    const void *block_cols; /* [stored]: uint8_t or uint16_t, see mcup_block4_col_bytes */
    const void *row_ptr;    /* [out_c + 1] */
    int32_t row_ptr_bytes;  /* 1, 2 or 4 */
    mcup_quant_params q;
} mcup_conv2d_s4_block4_params;

/*
 * Scratch bytes (4-byte aligned):
 *  - FC, reference kernels: 0;
 *  - FC, DSP kernels: the input as int16 plus input_offset, 4 * ((in_features + 1) / 2);
 *  - conv, reference kernels: one im2col patch as int16, 4 * ((k_h * k_w * in_c + 1) / 2);
 *  - conv, DSP kernels: two patches interleaved (one word per patch position),
 *    4 * k_h * k_w * in_c.
 * block4 (blocks = (cols + 3) / 4, the last padded): FC, DSP: the input as int16 in the q15-pair
 * layout of mcup_dsp.h over whole blocks, 8 * blocks; conv, reference: one int16 patch of whole
 * blocks, 8 * blocks; conv, DSP: two such patches interleaved word by word plus an int8 copy of
 * one patch, 20 * blocks; FC, reference: 0.
 * The int4 kernels take the same as their int8 twins.
 */
int32_t mcup_fc_s8_bitmask_get_buffer_size(const mcup_fc_bitmask_params *p);
void mcup_fc_s8_bitmask(const mcup_fc_bitmask_params *p, const int8_t *input, int8_t *output,
                        void *scratch);

int32_t mcup_fc_s8_csr8_get_buffer_size(const mcup_fc_csr_params *p);
void mcup_fc_s8_csr8(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch);

int32_t mcup_fc_s8_csr4_get_buffer_size(const mcup_fc_csr_params *p);
void mcup_fc_s8_csr4(const mcup_fc_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch);

int32_t mcup_conv2d_s8_bitmask_get_buffer_size(const mcup_conv2d_bitmask_params *p);
void mcup_conv2d_s8_bitmask(const mcup_conv2d_bitmask_params *p, const int8_t *input,
                            int8_t *output, void *scratch);

int32_t mcup_conv2d_s8_csr8_get_buffer_size(const mcup_conv2d_csr_params *p);
void mcup_conv2d_s8_csr8(const mcup_conv2d_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch);

int32_t mcup_conv2d_s8_csr4_get_buffer_size(const mcup_conv2d_csr_params *p);
void mcup_conv2d_s8_csr4(const mcup_conv2d_csr_params *p, const int8_t *input, int8_t *output,
                         void *scratch);

int32_t mcup_fc_s8_block4_get_buffer_size(const mcup_fc_block4_params *p);
void mcup_fc_s8_block4(const mcup_fc_block4_params *p, const int8_t *input, int8_t *output,
                       void *scratch);

int32_t mcup_conv2d_s8_block4_get_buffer_size(const mcup_conv2d_block4_params *p);
void mcup_conv2d_s8_block4(const mcup_conv2d_block4_params *p, const int8_t *input,
                           int8_t *output, void *scratch);

int32_t mcup_fc_s4_bitmask_get_buffer_size(const mcup_fc_s4_bitmask_params *p);
void mcup_fc_s4_bitmask(const mcup_fc_s4_bitmask_params *p, const int8_t *input, int8_t *output,
                        void *scratch);

int32_t mcup_fc_s4_csr8_get_buffer_size(const mcup_fc_s4_csr_params *p);
void mcup_fc_s4_csr8(const mcup_fc_s4_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch);

int32_t mcup_fc_s4_csr4_get_buffer_size(const mcup_fc_s4_csr_params *p);
void mcup_fc_s4_csr4(const mcup_fc_s4_csr_params *p, const int8_t *input, int8_t *output,
                     void *scratch);

int32_t mcup_conv2d_s4_bitmask_get_buffer_size(const mcup_conv2d_s4_bitmask_params *p);
void mcup_conv2d_s4_bitmask(const mcup_conv2d_s4_bitmask_params *p, const int8_t *input,
                            int8_t *output, void *scratch);

int32_t mcup_conv2d_s4_csr8_get_buffer_size(const mcup_conv2d_s4_csr_params *p);
void mcup_conv2d_s4_csr8(const mcup_conv2d_s4_csr_params *p, const int8_t *input,
                         int8_t *output, void *scratch);

int32_t mcup_conv2d_s4_csr4_get_buffer_size(const mcup_conv2d_s4_csr_params *p);
void mcup_conv2d_s4_csr4(const mcup_conv2d_s4_csr_params *p, const int8_t *input,
                         int8_t *output, void *scratch);

int32_t mcup_fc_s4_block4_get_buffer_size(const mcup_fc_s4_block4_params *p);
void mcup_fc_s4_block4(const mcup_fc_s4_block4_params *p, const int8_t *input, int8_t *output,
                       void *scratch);

int32_t mcup_conv2d_s4_block4_get_buffer_size(const mcup_conv2d_s4_block4_params *p);
void mcup_conv2d_s4_block4(const mcup_conv2d_s4_block4_params *p, const int8_t *input,
                           int8_t *output, void *scratch);

/* --- helpers shared by the sparse kernels (not part of the calling interface) ------------- */

/* row_ptr[i] of a csr weight matrix whose row pointers are `bytes` wide. */
static inline int32_t mcup_sparse_row_ptr(const void *row_ptr, int32_t bytes, int32_t i)
{
    if (bytes == 1) {
        return ((const uint8_t *)row_ptr)[i];
    }
    if (bytes == 2) {
        return ((const uint16_t *)row_ptr)[i];
    }
    return (int32_t)((const uint32_t *)row_ptr)[i];
}

/* Bytes of a block4 block column for a weight matrix of `cols` columns: 1 (uint8_t) up to 256
 * blocks of 4 columns, else 2 (uint16_t). */
static inline int32_t mcup_block4_col_bytes(int32_t cols)
{
    return (cols + 3) / 4 <= 256 ? 1 : 2;
}

/* block_cols[k] of a block4 weight matrix whose block columns are `bytes` wide. */
static inline int32_t mcup_block4_col(const void *block_cols, int32_t bytes, int32_t k)
{
    if (bytes == 1) {
        return ((const uint8_t *)block_cols)[k];
    }
    return ((const uint16_t *)block_cols)[k];
}

/* Four bytes of a bitmask row as one word, first byte in the top bits (column 0 = bit 31). */
static inline uint32_t mcup_sparse_mask_word(const uint8_t *m)
{
    return ((uint32_t)m[0] << 24) | ((uint32_t)m[1] << 16) | ((uint32_t)m[2] << 8) | m[3];
}

/* The last 1..3 bytes of a bitmask row, laid out as mcup_sparse_mask_word (missing bytes 0). */
static inline uint32_t mcup_sparse_mask_tail(const uint8_t *m, int32_t n)
{
    uint32_t w = 0;
    for (int32_t i = 0; i < n; i++) {
        w |= (uint32_t)m[i] << (24 - 8 * i);
    }
    return w;
}

/*
 * A nibble stream of int4 values read in order (the bitmask kernels' values): a buffer holding the
 * current byte's unread nibbles above a sentinel bit, so that "empty" is buf <= 1 and a byte is
 * loaded only when a value is wanted (never past the last one).
 */
typedef struct {
    const uint8_t *next; /* the next byte to load */
    uint32_t buf;        /* unread nibbles, lowest first, then a 1 bit; 1: empty */
} mcup_s4_stream;

static inline mcup_s4_stream mcup_s4_stream_start(const uint8_t *values)
{
    const mcup_s4_stream s = {values, 1u};
    return s;
}

/* The next value of the stream, in [-8, 7] (one SBFX, one shift, a byte load every second call). */
static inline int32_t mcup_s4_next(mcup_s4_stream *s)
{
    if (s->buf <= 1u) {
        s->buf = (uint32_t)*s->next++ | 0x100u;
    }
    const int32_t v = (int32_t)((s->buf & 15u) ^ 8u) - 8;
    s->buf >>= 4;
    return v;
}

/*
 * dst[0], dst[stride], ... dst[(n - 1) * stride] = src[0..n-1] + offset: int8 to int16 with the
 * input offset added (|value| <= 255). Unrolled by 4 (4 instructions per value instead of 5).
 */
static inline int16_t *mcup_sparse_to_s16(const int8_t *src, int32_t n, int32_t offset,
                                          int16_t *dst, int32_t stride)
{
    for (; n >= 4; n -= 4, src += 4, dst += 4 * stride) {
        dst[0] = (int16_t)(src[0] + offset);
        dst[stride] = (int16_t)(src[1] + offset);
        dst[2 * stride] = (int16_t)(src[2] + offset);
        dst[3 * stride] = (int16_t)(src[3] + offset);
    }
    for (; n > 0; n--, dst += stride) {
        *dst = (int16_t)(*src++ + offset);
    }
    return dst;
}

/* n int16 zeros at dst[0], dst[stride], ...; returns dst + n * stride. */
static inline int16_t *mcup_sparse_zeros_s16(int16_t *dst, int32_t n, int32_t stride)
{
    for (; n > 0; n--, dst += stride) {
        *dst = 0;
    }
    return dst;
}

/*
 * im2col of one output pixel: the k_h * k_w * in_c patch whose first tap reads input pixel
 * (y0, x0) (which may lie in the padding) and whose taps are dil_h rows and dil_w columns apart,
 * as int16 with input_offset added, in [k_h][k_w][in_c] order, to dst[0], dst[stride],
 * dst[2 * stride], ... Taps outside the image hold the input zero point, i.e. 0. With dil_w == 1
 * a kernel row clipped to the image is one contiguous run of input bytes.
 */
static inline void mcup_sparse_im2col_s16(const int8_t *input, int32_t in_h, int32_t in_w,
                                          int32_t in_c, int32_t k_h, int32_t k_w, int32_t y0,
                                          int32_t x0, int32_t dil_h, int32_t dil_w,
                                          int32_t offset, int16_t *dst, int32_t stride)
{
    if (dil_w == 1) {
        const int32_t left = x0 < 0 ? (-x0 < k_w ? -x0 : k_w) : 0; /* taps left of the image */
        const int32_t over = x0 + k_w - in_w;                       /* taps right of it */
        const int32_t right = over > 0 ? (over < k_w - left ? over : k_w - left) : 0;
        const int32_t inside = (k_w - left - right) * in_c;
        for (int32_t ky = 0; ky < k_h; ky++) {
            const int32_t iy = y0 + ky * dil_h;
            if (iy < 0 || iy >= in_h) {
                dst = mcup_sparse_zeros_s16(dst, k_w * in_c, stride);
                continue;
            }
            dst = mcup_sparse_zeros_s16(dst, left * in_c, stride);
            if (inside > 0) {
                dst = mcup_sparse_to_s16(input + (iy * in_w + x0 + left) * in_c, inside, offset,
                                         dst, stride);
            }
            dst = mcup_sparse_zeros_s16(dst, right * in_c, stride);
        }
        return;
    }
    for (int32_t ky = 0; ky < k_h; ky++) { /* dilated columns: tap by tap */
        const int32_t iy = y0 + ky * dil_h;
        for (int32_t kx = 0; kx < k_w; kx++) {
            const int32_t ix = x0 + kx * dil_w;
            if (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w) {
                dst = mcup_sparse_zeros_s16(dst, in_c, stride);
            } else {
                dst = mcup_sparse_to_s16(input + (iy * in_w + ix) * in_c, in_c, offset, dst,
                                         stride);
            }
        }
    }
}

#endif /* MCUP_SPARSE_H */
