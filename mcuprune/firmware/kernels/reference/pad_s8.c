/*
 * pad_s8.c - padding int8 kernel (plain C; copies, nothing to gain from the DSP extension).
 * Parameters and layout: see mcup_pad_params in mcup_nn.h.
 */
#include <stddef.h>
#include <string.h>

#include "mcup_nn.h"

void mcup_pad_s8(const mcup_pad_params *p, const int8_t *input, int8_t *output)
{
    const size_t row_in = (size_t)p->in_w * (size_t)p->c; /* bytes of one input row */
    const size_t left = (size_t)p->pad_left * (size_t)p->c;
    const size_t right = (size_t)p->pad_right * (size_t)p->c;
    const size_t row_out = left + row_in + right;
    const int value = (int8_t)p->pad_value;
    memset(output, value, (size_t)p->pad_top * row_out);
    output += (size_t)p->pad_top * row_out;
    for (int32_t y = 0; y < p->in_h; y++, input += row_in, output += row_out) {
        memset(output, value, left);
        memcpy(output + left, input, row_in);
        memset(output + left + row_in, value, right);
    }
    memset(output, value, (size_t)p->pad_bottom * row_out);
}
