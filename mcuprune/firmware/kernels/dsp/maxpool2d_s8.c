/*
 * maxpool2d_s8.c - max pooling int8 kernel for cores with the DSP extension. Parameters,
 * geometry and layout: see mcup_pool2d_params in mcup_nn.h; bit-identical to the reference twin
 * in firmware/kernels/reference/maxpool2d_s8.c.
 *
 * Channels are innermost (HWC), so 4 neighbouring channels of a pixel are one word. A window's
 * maximum is taken word by word with mcup_max_s8x4 (__ssub8 sets a GE bit per byte where the
 * first operand is not smaller, __sel picks by those bits): 1 load and 2 instructions per
 * window pixel and 4 channels, instead of a load, a compare and a select per channel. Words
 * are read and written with single LDR/STR, which accept any alignment on these cores; the
 * c % 4 trailing channels go one by one.
 *
 * Windows that tile the image (window == stride, no padding, no clamp: the usual 2x2 pools) go
 * straight through; any other window is first clipped to the image (taps in the padding never
 * win), so every window, stride and padding take the same loops. A 2x2 window walks its 4 pixels
 * together. A clamp narrower than the int8 range costs one more pass over the output pixel's
 * words (max, then min, 4 at a time).
 */
#include "mcup_dsp.h"
#include "mcup_nn.h"

/* Maximum over a 2x2 window (the usual case) for channels [0, c): its 4 pixels walked together,
 * 13 instructions per 4 channels. */
static inline __attribute__((always_inline)) void max_2x2(const int8_t *in, int32_t row,
                                                          int32_t c, int8_t *out)
{
    const int8_t *a = in;
    const int8_t *b = in + c;
    const int8_t *d = in + row;
    const int8_t *e = in + row + c;
    for (int32_t i = c >> 2; i > 0; i--) {
        const int32_t top = mcup_max_s8x4(mcup_read_s8x4(a), mcup_read_s8x4(b));
        const int32_t bottom = mcup_max_s8x4(mcup_read_s8x4(d), mcup_read_s8x4(e));
        mcup_write_s8x4(out, mcup_max_s8x4(top, bottom));
        a += 4;
        b += 4;
        d += 4;
        e += 4;
        out += 4;
    }
    for (int32_t ch = c & ~3; ch < c; ch++) { /* c % 4 trailing channels */
        const int8_t top = in[ch] > in[c + ch] ? in[ch] : in[c + ch];
        const int8_t bottom = in[row + ch] > in[row + c + ch] ? in[row + ch] : in[row + c + ch];
        out[ch - (c & ~3)] = top > bottom ? top : bottom;
    }
}

/* Maximum over the rows x cols pixels from `in` (rows `row` bytes apart) for channels [0, c). */
static void window_max(const int8_t *in, int32_t row, int32_t c, int32_t rows, int32_t cols,
                       int8_t *out)
{
    if (rows == 2 && cols == 2) {
        max_2x2(in, row, c, out);
        return;
    }
    const int32_t words = c >> 2;
    for (int32_t i = 0; i < words; i++) {
        const int8_t *px = in + 4 * i;
        int32_t best = (int32_t)0x80808080u; /* INT8_MIN in every byte */
        for (int32_t ky = 0; ky < rows; ky++, px += row) {
            for (int32_t kx = 0; kx < cols; kx++) {
                best = mcup_max_s8x4(best, mcup_read_s8x4(px + kx * c));
            }
        }
        mcup_write_s8x4(out, best);
        out += 4;
    }
    for (int32_t ch = words * 4; ch < c; ch++) { /* c % 4 trailing channels */
        int8_t best = INT8_MIN;
        for (int32_t ky = 0; ky < rows; ky++) {
            for (int32_t kx = 0; kx < cols; kx++) {
                const int8_t v = in[ky * row + kx * c + ch];
                best = v > best ? v : best;
            }
        }
        *out++ = best;
    }
}

/* out[0..c) clamped to [act_min, act_max]; lo4/hi4 hold the bounds in every byte. */
static void clamp_run(int8_t *out, int32_t c, int32_t lo4, int32_t hi4, int32_t act_min,
                      int32_t act_max)
{
    for (int32_t i = c >> 2; i > 0; i--, out += 4) {
        mcup_write_s8x4(out, mcup_min_s8x4(mcup_max_s8x4(mcup_read_s8x4(out), lo4), hi4));
    }
    for (int32_t i = c & 3; i > 0; i--, out++) {
        const int32_t v = *out < act_min ? act_min : *out;
        *out = (int8_t)(v > act_max ? act_max : v);
    }
}

/*
 * 2x2 windows at stride 2 tiling the image: the whole loop in one function, so that the 2x2 body
 * keeps its pointers in registers (called through window_max, GCC spills two of them).
 */
static void __attribute__((noinline)) tiles_2x2(const mcup_pool2d_params *p, const int8_t *input,
                                                int8_t *output)
{
    const int32_t c = p->c;
    const int32_t out_w = p->out_w;
    const int32_t row = p->in_w * c;
    for (int32_t oy = p->out_h; oy > 0; oy--, input += 2 * row) {
        const int8_t *in = input;
        for (int32_t ox = out_w; ox > 0; ox--, in += 2 * c, output += c) {
            max_2x2(in, row, c, output);
        }
    }
}

/* Window == stride, no padding, every window inside the image, no clamp: the demo CNN's pools. */
static int tiles_the_image(const mcup_pool2d_params *p)
{
    return p->k_h == p->stride_h && p->k_w == p->stride_w && p->pad_top == 0 && p->pad_left == 0 &&
           p->out_h * p->k_h <= p->in_h && p->out_w * p->k_w <= p->in_w && p->act_min == INT8_MIN &&
           p->act_max == INT8_MAX;
}

void mcup_maxpool2d_s8(const mcup_maxpool2d_params *p, const int8_t *input, int8_t *output)
{
    const mcup_pool2d_params k = *p; /* stores through int8 pointers may alias *p */
    const int32_t row = k.in_w * k.c; /* bytes from one input row to the next */
    if (tiles_the_image(&k)) {
        if (k.k_h == 2 && k.k_w == 2) {
            tiles_2x2(&k, input, output);
            return;
        }
        for (int32_t oy = 0; oy < k.out_h; oy++) {
            const int8_t *in = input + oy * k.k_h * row;
            for (int32_t ox = 0; ox < k.out_w; ox++, in += k.k_w * k.c, output += k.c) {
                window_max(in, row, k.c, k.k_h, k.k_w, output);
            }
        }
        return;
    }
    const int clamp = k.act_min > INT8_MIN || k.act_max < INT8_MAX;
    const int32_t lo4 = (int32_t)(0x01010101u * (uint8_t)k.act_min);
    const int32_t hi4 = (int32_t)(0x01010101u * (uint8_t)k.act_max);
    for (int32_t oy = 0; oy < k.out_h; oy++) {
        /* the window's rows inside the image: [y_begin, y_end) */
        const int32_t y0 = oy * k.stride_h - k.pad_top;
        const int32_t y_begin = y0 > 0 ? y0 : 0;
        const int32_t y_end = y0 + k.k_h < k.in_h ? y0 + k.k_h : k.in_h;
        const int32_t rows = y_end > y_begin ? y_end - y_begin : 0;
        for (int32_t ox = 0; ox < k.out_w; ox++) {
            const int32_t x0 = ox * k.stride_w - k.pad_left;
            const int32_t x_begin = x0 > 0 ? x0 : 0;
            const int32_t x_end = x0 + k.k_w < k.in_w ? x0 + k.k_w : k.in_w;
            const int32_t cols = x_end > x_begin ? x_end - x_begin : 0;
            /* a window wholly in the padding reads nothing: every maximum stays INT8_MIN */
            const int8_t *in = rows > 0 && cols > 0 ? input + y_begin * row + x_begin * k.c : input;
            window_max(in, row, k.c, rows, cols, output);
            if (clamp) {
                clamp_run(output, k.c, lo4, hi4, k.act_min, k.act_max);
            }
            output += k.c;
        }
    }
}
