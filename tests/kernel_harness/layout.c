/*
 * layout.c - sizes and offsets of the mcup_nn.h parameter structs, compiled into the host test
 * library so tests/test_kernels.py can check its ctypes mirrors against the real header.
 */
#include <stddef.h>
#include <stdint.h>

#include "mcup_nn.h"

const int32_t mcup_test_layout[] = {
    (int32_t)sizeof(mcup_quant_params),
    (int32_t)offsetof(mcup_quant_params, input_offset),
    (int32_t)offsetof(mcup_quant_params, act_max),
    (int32_t)sizeof(mcup_fc_params),
    (int32_t)offsetof(mcup_fc_params, weights),
    (int32_t)offsetof(mcup_fc_params, q),
    (int32_t)sizeof(mcup_conv2d_params),
    (int32_t)offsetof(mcup_conv2d_params, pad),
    (int32_t)offsetof(mcup_conv2d_params, weights),
    (int32_t)offsetof(mcup_conv2d_params, q),
    (int32_t)sizeof(mcup_maxpool2d_params),
    (int32_t)offsetof(mcup_maxpool2d_params, pool),
};
