/*
 * mcup_nn.h - int8 neural-network kernels of the mcuprune runtime.
 *
 * Every kernel has one reference implementation (firmware/kernels/reference/, plain C, the
 * readable twin) and may have an optimized one with the same name and signature
 * (firmware/kernels/dsp/, dual-MAC code for cores with the DSP extension). The Makefile picks
 * one folder per build; both must produce bit-identical results to the numpy interpreter
 * in mcuprune/model/reference.py (itself element-for-element TFLite Micro's int8 kernels).
 *
 * Names follow the operator table (mcuprune/model/ops.py): function mcup_<kernel>_s8 for an op
 * without weights, mcup_<kernel>_s<bits>_<format> for a weighted one with int8 (s8) or int4 (s4)
 * weights (dense weights here, packed sparse formats in mcup_sparse.h), parameter struct
 * mcup_<kernel>_params (int4: mcup_<kernel>_s4_params), source file <function minus mcup_>.c.
 * Weighted kernels take a scratch buffer and have a _get_buffer_size companion; the others take
 * (params, input[, input2], output).
 *
 * Conventions (TFLite int8 spec):
 *  - activations are int8, per-tensor asymmetric: real = scale * (q - zero_point);
 *  - weights are int8, per-output-channel symmetric (zero point 0), or int4 (below);
 *  - bias is int32 with scale input_scale * weight_scale[c] and zero point 0;
 *  - the int32 accumulator (wrapping, as TFLM's) is requantized per output channel by
 *    mcup_requantize() (mcup_requant.h), then output_offset is added and the result clamped
 *    to [act_min, act_max] (a fused ReLU / ReLU6 is expressed through the clamp);
 *  - feature maps are stored HWC (channels innermost), batch size 1; a buffer of n int8 needs no
 *    alignment (the DSP kernels read words at any address);
 *  - input and output buffers never overlap (except where a kernel says otherwise).
 *
 * Window geometry (conv, depthwise conv, pooling; TFLite's). Output pixel (oy, ox), tap
 * (ky, kx) reads input pixel
 *     iy = oy * stride_h - pad_top + ky * dil_h,   ix = ox * stride_w - pad_left + kx * dil_w.
 * A tap outside the image contributes nothing: for a convolution that is padding with the input
 * zero point (a real 0.0), for max pooling padding with -infinity, for average pooling a tap
 * that is not counted. The bottom and right padding are implied by out_h and out_w (TFLite SAME
 * padding puts the odd extra row/column there); the kernels never read outside the image, so
 * any out_h, out_w >= 1 is safe. Ranges: sizes >= 1; strides and dilations >= 1;
 * 0 <= pad_top, pad_left; every dimension and every product of dimensions below 2^24.
 *
 * int4 weights (the _s4_ kernels, mcuprune.model.formats). Values in [-8, 7] (mcuprune quantizes
 * to [-7, 7]), per-output-channel symmetric like int8, with the same int8 activations, bias and
 * requantization: every _s4_ kernel gives exactly what its _s8_ twin gives on the same integers.
 * Storage is TFLite's int4 order: two values per byte in two's complement, the first of the two
 * in the low nibble (bits 0-3), the second in the high nibble (bits 4-7). Dense weights are one
 * row per output channel (the int8 row, [k_h][k_w][in_c] for conv, [k_h][k_w] for depthwise,
 * [in_features] for FC), and EVERY ROW STARTS ON A BYTE: a row of n values takes (n + 1) / 2
 * bytes, an odd row ending in a padding nibble (0 as packed; the kernels never use it). For an
 * even row length the bytes are exactly TFLite's packing of the whole tensor; byte-aligned rows
 * let a kernel read any row with whole-byte (and word) loads. The weights pointer is
 * const uint8_t * (packed bytes), any alignment.
 */
#ifndef MCUP_NN_H
#define MCUP_NN_H

#include <stdint.h>

/* Quantization of one layer: shared by every kernel that ends in a requantize step. */
typedef struct {
    const int32_t *bias;       /* [out_channels], may be NULL for no bias */
    const int32_t *multiplier; /* [out_channels], Q31 fixed point, in [2^30, 2^31) or 0 */
    const int32_t *shift;      /* [out_channels], in [-31, 30]: >0 shifts left, <0 shifts right */
    int32_t input_offset;      /* -(input zero point), range [-127, 128] */
    int32_t output_offset;     /* output zero point, range [-128, 127] */
    int32_t act_min;           /* clamp low, in [-128, act_max] */
    int32_t act_max;           /* clamp high, in [act_min, 127] */
} mcup_quant_params;

/* Fully connected: output[o] = requant(sum_i (input[i] + input_offset) * weights[o][i] + bias[o]). */
typedef struct {
    int32_t in_features;
    int32_t out_features;
    const int8_t *weights; /* [out_features][in_features], row-major */
    mcup_quant_params q;
} mcup_fc_params;

/* Fully connected with int4 weights: as mcup_fc_params, the weights packed two per byte. */
typedef struct {
    int32_t in_features;
    int32_t out_features;
    const uint8_t *weights; /* [out_features][(in_features + 1) / 2]: nibbles, rows byte-aligned */
    mcup_quant_params q;
} mcup_fc_s4_params;

/*
 * 2-D convolution (TFLite CONV_2D):
 *   output[oy][ox][o] = requant(bias[o] + sum over in-image taps (ky, kx) and channels i of
 *                       (input[iy][ix][i] + input_offset) * weights[o][ky][kx][i])
 * with iy, ix as in the window geometry above. input [in_h][in_w][in_c], output
 * [out_h][out_w][out_c].
 */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;           /* kernel size */
    int32_t stride_h, stride_w; /* >= 1 */
    int32_t pad_top, pad_left;  /* >= 0; bottom/right implied by out_h/out_w */
    int32_t dil_h, dil_w;       /* dilation, >= 1 (1: adjacent taps) */
    const int8_t *weights;      /* [out_c][k_h][k_w][in_c] */
    mcup_quant_params q;        /* per output channel: bias, multiplier, shift [out_c] */
} mcup_conv2d_params;

/* 2-D convolution with int4 weights: as mcup_conv2d_params, the weights packed two per byte. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    const uint8_t *weights; /* [out_c][(k_h * k_w * in_c + 1) / 2]: nibbles, rows byte-aligned */
    mcup_quant_params q;
} mcup_conv2d_s4_params;

/*
 * Depthwise 2-D convolution (TFLite DEPTHWISE_CONV_2D): output channel o (out_c = in_c *
 * depth_multiplier) reads input channel o / depth_multiplier alone:
 *   output[oy][ox][o] = requant(bias[o] + sum over in-image taps (ky, kx) of
 *                       (input[iy][ix][o / depth_multiplier] + input_offset) * weights[o][ky][kx])
 * Geometry as the convolution's.
 */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c; /* out_c = in_c * depth_multiplier */
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    int32_t depth_multiplier;    /* >= 1: output channels per input channel */
    const int8_t *weights;       /* [out_c][k_h][k_w]: one row per output channel */
    mcup_quant_params q;         /* per output channel [out_c] */
} mcup_depthwise_conv2d_params;

/* Depthwise 2-D convolution with int4 weights: as mcup_depthwise_conv2d_params, the weights
 * packed two per byte. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left;
    int32_t dil_h, dil_w;
    int32_t depth_multiplier;
    const uint8_t *weights; /* [out_c][(k_h * k_w + 1) / 2]: nibbles, rows byte-aligned */
    mcup_quant_params q;
} mcup_depthwise_conv2d_s4_params;

/*
 * Pooling over windows of an HWC map, channel by channel: c channels in and out, the same
 * quantization in and out (TFLM requires it; no requantization). Geometry as above with
 * dilation 1. The result is clamped to [act_min, act_max] (a fused activation; -128, 127
 * for none).
 *  - max: the maximum of the window's in-image taps (-128 for a window wholly in the padding);
 *  - average: the sum of the raw int8 values of the in-image taps divided by their count,
 *    rounded to nearest with ties away from zero. A window needs at least one in-image tap
 *    (TFLM fails on one that has none; the kernel then takes the average as 0 and clamps it).
 *    Windows of up to 2^23 taps.
 */
typedef struct {
    int32_t in_h, in_w, c;
    int32_t out_h, out_w;
    int32_t k_h, k_w;           /* window size */
    int32_t stride_h, stride_w; /* >= 1 */
    int32_t pad_top, pad_left;  /* >= 0; bottom/right implied by out_h/out_w */
    int32_t act_min, act_max;   /* clamp, -128 <= act_min <= act_max <= 127 */
} mcup_pool2d_params;
typedef mcup_pool2d_params mcup_maxpool2d_params;
typedef mcup_pool2d_params mcup_avgpool2d_params;

/*
 * Mean over H and W (TFLite MEAN on axes 1, 2; global average pooling): input [in_h][in_w][c],
 * output [c]:
 *   output[i] = clamp(requant(sum_(y,x) input[y][x][i] + input_offset * in_h * in_w,
 *                             multiplier, shift) + output_offset, -128, 127)
 * The 1 / (in_h * in_w) is folded into multiplier/shift on the host
 * (mcuprune/model/int8_params.py: mean_multiplier). in_h * in_w below 2^23. TFLite's MEAN has no
 * fused activation: the result is clamped to the int8 range only.
 */
typedef struct {
    int32_t in_h, in_w, c;
    int32_t input_offset;  /* -(input zero point), [-127, 128] */
    int32_t output_offset; /* output zero point, [-128, 127] */
    int32_t multiplier;    /* in [0, 2^31) */
    int32_t shift;         /* in [-31, 30] */
} mcup_mean_params;

/*
 * Element-wise addition of two int8 tensors of `size` elements with their own quantization
 * (TFLite ADD, int8):
 *   a = requant((input1[i] + input1_offset) << left_shift, input1_multiplier, input1_shift)
 *   b = requant((input2[i] + input2_offset) << left_shift, input2_multiplier, input2_shift)
 *   output[i] = clamp(requant(a + b, output_multiplier, output_shift) + output_offset,
 *                     act_min, act_max)
 * Both inputs go onto a common scale first (multipliers <= 1/2 on the host), with left_shift
 * (20) bits of headroom. Shifts in [-31, 0], left_shift in [0, 22]. output may be input1 or
 * input2 (element i is read before it is written).
 */
typedef struct {
    int32_t size;
    int32_t input1_offset;  /* -(input 1 zero point), [-127, 128] */
    int32_t input2_offset;  /* -(input 2 zero point), [-127, 128] */
    int32_t output_offset;  /* output zero point, [-128, 127] */
    int32_t input1_multiplier, input1_shift;
    int32_t input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift;
    int32_t left_shift;
    int32_t act_min, act_max;
} mcup_add_params;

/*
 * Padding of an HWC map on H and W (TFLite PAD): input [in_h][in_w][c], output
 * [pad_top + in_h + pad_bottom][pad_left + in_w + pad_right][c], the new rows and columns filled
 * with pad_value (the output zero point: a real 0.0). Pads >= 0.
 */
typedef struct {
    int32_t in_h, in_w, c;
    int32_t pad_top, pad_bottom, pad_left, pad_right;
    int32_t pad_value; /* [-128, 127] */
} mcup_pad_params;

/*
 * Softmax over the last axis (TFLite SOFTMAX, int8 in, int8 out with scale 1/256 and zero point
 * -128), `rows` rows of `depth` values, row-major. Per row, with d = input - max(row): entries
 * with d < diff_min get -128; the others are rescaled into Q5.26 by input_multiplier /
 * input_left_shift (beta * input scale), exponentiated in fixed point, normalised by the sum of
 * the row's exponentials and written as probability * 256 - 128. depth in [1, 511] (TFLM
 * aborts on a row whose sum of exponentials reaches 512).
 */
typedef struct {
    int32_t rows, depth;
    int32_t input_multiplier; /* in [2^30, 2^31) */
    int32_t input_left_shift; /* in [0, 30] */
    int32_t diff_min;         /* <= 0: -floor(31 * 2^26 / 2^input_left_shift) */
} mcup_softmax_params;

/*
 * Scratch: a kernel that needs working memory has a _get_buffer_size companion returning the
 * number of bytes the caller must pass as `scratch` (4-byte aligned). 0 means scratch may be NULL.
 * The sizes are those of mcuprune.model.ops.scratch_bytes: none for the reference kernels; for
 * the DSP ones, FC: the input as int16; conv: the strip path's buffers, PW_PIXELS pixels as int16
 * (1x1, stride 1, no padding) or two int16 patches (see conv2d_s8_dense.c); depthwise with depth
 * multiplier 1: the weights of the whole groups of 4 channels as int16 plus one word per such
 * channel (8 * (out_c / 4) * k_h * k_w + 16 * (out_c / 4) bytes), else none.
 * The int4 kernels: reference none; DSP FC the input in the s4-pair layout of mcup_dsp.h
 * (16 * ((in_features + 7) / 8) bytes); DSP conv two patches in that layout, interleaved
 * (32 * ((k_h * k_w * in_c + 7) / 8) bytes), plus an int8 copy of one patch rounded up to a group
 * of 8 when in_c is not a multiple of 8; DSP depthwise the same as the int8 one.
 */
int32_t mcup_fc_s8_dense_get_buffer_size(const mcup_fc_params *p);
void mcup_fc_s8_dense(const mcup_fc_params *p, const int8_t *input, int8_t *output,
                      void *scratch);

int32_t mcup_conv2d_s8_dense_get_buffer_size(const mcup_conv2d_params *p);
void mcup_conv2d_s8_dense(const mcup_conv2d_params *p, const int8_t *input, int8_t *output,
                          void *scratch);

int32_t mcup_depthwise_conv2d_s8_dense_get_buffer_size(const mcup_depthwise_conv2d_params *p);
void mcup_depthwise_conv2d_s8_dense(const mcup_depthwise_conv2d_params *p, const int8_t *input,
                                    int8_t *output, void *scratch);

int32_t mcup_fc_s4_dense_get_buffer_size(const mcup_fc_s4_params *p);
void mcup_fc_s4_dense(const mcup_fc_s4_params *p, const int8_t *input, int8_t *output,
                      void *scratch);

int32_t mcup_conv2d_s4_dense_get_buffer_size(const mcup_conv2d_s4_params *p);
void mcup_conv2d_s4_dense(const mcup_conv2d_s4_params *p, const int8_t *input, int8_t *output,
                          void *scratch);

int32_t mcup_depthwise_conv2d_s4_dense_get_buffer_size(const mcup_depthwise_conv2d_s4_params *p);
void mcup_depthwise_conv2d_s4_dense(const mcup_depthwise_conv2d_s4_params *p,
                                    const int8_t *input, int8_t *output, void *scratch);

void mcup_maxpool2d_s8(const mcup_maxpool2d_params *p, const int8_t *input, int8_t *output);

void mcup_avgpool2d_s8(const mcup_avgpool2d_params *p, const int8_t *input, int8_t *output);

void mcup_mean_s8(const mcup_mean_params *p, const int8_t *input, int8_t *output);

void mcup_add_s8(const mcup_add_params *p, const int8_t *input1, const int8_t *input2,
                 int8_t *output);

void mcup_pad_s8(const mcup_pad_params *p, const int8_t *input, int8_t *output);

void mcup_softmax_s8(const mcup_softmax_params *p, const int8_t *input, int8_t *output);

/* RESHAPE has no kernel: its output is its input's bytes (mcuprune/model/arena.py). */

#endif /* MCUP_NN_H */
