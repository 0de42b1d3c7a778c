/*
 * mcup_nn.h - int8 neural-network kernels of the mcuprune runtime.
 *
 * Every kernel has one reference implementation (firmware/kernels/reference/, plain C, the
 * readable twin) and may have an optimized one with the same name and signature
 * (firmware/kernels/dsp/, dual-MAC code for cores with the DSP extension). The Makefile picks
 * one folder per build; both must produce bit-identical results to the numpy interpreter
 * in mcuprune/reference.py.
 *
 * Conventions (TFLite int8 spec):
 *  - activations are int8, per-tensor asymmetric: real = scale * (q - zero_point);
 *  - weights are int8, per-output-channel symmetric (zero point 0);
 *  - bias is int32 with scale input_scale * weight_scale[c] and zero point 0;
 *  - the int32 accumulator is requantized per output channel by mcup_requantize()
 *    (mcup_requant.h), then output_offset is added and the result clamped to
 *    [act_min, act_max] (a fused ReLU is expressed through act_min).
 *  - feature maps are stored HWC (channels innermost), batch size 1.
 */
#ifndef MCUP_NN_H
#define MCUP_NN_H

#include <stdint.h>

/* Quantization of one layer: shared by every kernel that ends in a requantize step. */
typedef struct {
    const int32_t *bias;       /* [out_channels], may be NULL for no bias */
    const int32_t *multiplier; /* [out_channels], Q31 fixed point, in [2^30, 2^31) or 0 */
    const int32_t *shift;      /* [out_channels], >0 shifts left, <0 shifts right */
    int32_t input_offset;      /* -(input zero point), range [-127, 128] */
    int32_t output_offset;     /* output zero point, range [-128, 127] */
    int32_t act_min;           /* clamp low, >= -128 (== output zero point for fused ReLU) */
    int32_t act_max;           /* clamp high, <= 127 */
} mcup_quant_params;

/* Fully connected: output[o] = requant(sum_i (input[i] + input_offset) * weights[o][i] + bias[o]). */
typedef struct {
    int32_t in_features;
    int32_t out_features;
    const int8_t *weights; /* [out_features][in_features], row-major */
    mcup_quant_params q;
} mcup_fc_params;

/* 2-D convolution, stride `stride`, zero-point padding of `pad` pixels on every side. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride;
    int32_t pad;
    const int8_t *weights; /* [out_c][k_h][k_w][in_c] */
    mcup_quant_params q;
} mcup_conv2d_params;

/* Max pooling, window and stride `pool`, no padding; int8 in, int8 out, same quantization. */
typedef struct {
    int32_t in_h, in_w, c;
    int32_t pool;
} mcup_maxpool2d_params;

/*
 * Scratch: a kernel that needs working memory has a _get_buffer_size companion returning the
 * number of bytes the caller must pass as `scratch` (4-byte aligned). 0 means scratch may be NULL.
 */
int32_t mcup_fc_s8_dense_get_buffer_size(const mcup_fc_params *p);
void mcup_fc_s8_dense(const mcup_fc_params *p, const int8_t *input, int8_t *output,
                      void *scratch);

int32_t mcup_conv2d_s8_dense_get_buffer_size(const mcup_conv2d_params *p);
void mcup_conv2d_s8_dense(const mcup_conv2d_params *p, const int8_t *input, int8_t *output,
                          void *scratch);

void mcup_maxpool2d_s8(const mcup_maxpool2d_params *p, const int8_t *input, int8_t *output);

#endif /* MCUP_NN_H */
