/*
 * maxpool2d_s8.c - max pooling int8 kernel for cores with the DSP extension (window == stride
 * == pool, no padding). Parameters and layout: see mcup_maxpool2d_params in mcup_nn.h;
 * bit-identical to the reference twin in firmware/kernels/reference/maxpool2d_s8.c (trailing
 * rows and columns that do not fill a window are dropped).
 *
 * Channels are innermost (HWC), so 4 neighbouring channels of a pixel are one word. A window's
 * maximum is taken word by word with mcup_max_s8x4 (__ssub8 sets a GE bit per byte where the
 * first operand is not smaller, __sel picks by those bits): 1 load and 2 instructions per
 * window pixel and 4 channels, instead of a load, a compare and a select per channel. Words
 * are read and written with single LDR/STR, which accept any alignment on these cores; the
 * c % 4 trailing channels go one by one.
 */
#include "mcup_dsp.h"
#include "mcup_nn.h"

/* Maximum over one pool x pool window for the channels [0, c) of the pixel at `in`. */
static void window_max(const int8_t *in, int32_t row, int32_t c, int32_t pool, int8_t *out)
{
    const int32_t words = c >> 2;
    if (pool == 2) { /* the usual case: the 4 pixels of the window walked together */
        const int8_t *a = in;
        const int8_t *b = in + c;
        const int8_t *d = in + row;
        const int8_t *e = in + row + c;
        for (int32_t i = words; i > 0; i--) {
            const int32_t top = mcup_max_s8x4(mcup_read_s8x4(a), mcup_read_s8x4(b));
            const int32_t bottom = mcup_max_s8x4(mcup_read_s8x4(d), mcup_read_s8x4(e));
            mcup_write_s8x4(out, mcup_max_s8x4(top, bottom));
            a += 4;
            b += 4;
            d += 4;
            e += 4;
            out += 4;
        }
    } else {
        for (int32_t i = 0; i < words; i++) {
            const int8_t *px = in + 4 * i;
            int32_t best = (int32_t)0x80808080u; /* INT8_MIN in every byte */
            for (int32_t ky = 0; ky < pool; ky++, px += row) {
                for (int32_t kx = 0; kx < pool; kx++) {
                    best = mcup_max_s8x4(best, mcup_read_s8x4(px + kx * c));
                }
            }
            mcup_write_s8x4(out, best);
            out += 4;
        }
    }
    for (int32_t ch = words * 4; ch < c; ch++) { /* c % 4 trailing channels */
        int8_t best = INT8_MIN;
        for (int32_t ky = 0; ky < pool; ky++) {
            for (int32_t kx = 0; kx < pool; kx++) {
                const int8_t v = in[ky * row + kx * c + ch];
                best = v > best ? v : best;
            }
        }
        *out++ = best;
    }
}

void mcup_maxpool2d_s8(const mcup_maxpool2d_params *p, const int8_t *input, int8_t *output)
{
    const int32_t pool = p->pool;
    const int32_t c = p->c;
    const int32_t out_h = p->in_h / pool;
    const int32_t out_w = p->in_w / pool;
    const int32_t row = p->in_w * c; /* bytes from one input row to the next */
    for (int32_t oy = 0; oy < out_h; oy++) {
        const int8_t *in = input + oy * pool * row;
        for (int32_t ox = 0; ox < out_w; ox++) {
            window_max(in + ox * pool * c, row, c, pool, output);
            output += c;
        }
    }
}
