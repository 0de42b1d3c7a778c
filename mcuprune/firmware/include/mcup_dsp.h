/*
 * mcup_dsp.h - dual 16-bit MAC intrinsics and the q15-pair layout shared by the DSP kernels.
 *
 * The only file that includes <arm_acle.h>. Kernels in firmware/kernels/dsp/ include this
 * header and use the ACLE names __sxtb16, __sxtab16, __smlad, __smlabb, __smlatt, __smlatb,
 * __ssub8 and __sel:
 *   - cores with the DSP extension (Cortex-M4/M7/M33/M55, __ARM_FEATURE_DSP): GCC's intrinsics;
 *   - host builds with -DMCUP_EMULATE_DSP: the portable C definitions below, bit-identical,
 *     so the kernels' logic can be tested on the host against the numpy reference;
 *   - anything else: a compile error (build the reference kernels instead).
 *
 * q15-pair layout. A DSP kernel converts activations once to int16 (with input_offset added,
 * so |value| <= 255) and stores them as 32-bit words holding two int16 (low half first):
 *   - every full group of 4 elements x0..x3 becomes two words [x0|x2], [x1|x3]: exactly
 *     __sxtab16(offset_pair, w) and __sxtab16(offset_pair, ror8(w)) of the int8 word w;
 *   - a tail of 1..3 elements t0..t2 (when the length is not a multiple of 4) follows as
 *     [t0|t1], [t2|0] in natural order.
 * A run of n elements therefore takes (n + 1) / 2 words. A weight word w (4 int8) lines up
 * with a group as __sxtb16(w) = [w0|w2] and __sxtb16(ror8(w)) = [w1|w3], so one group costs
 * one weight load, one rotate, two sign extensions and two __smlad (mcup_mac_group). Two runs
 * of the same length can be interleaved word by word (stride 2, see mcup_s8_to_q15_pairs) so a
 * kernel walks both with one pointer.
 *
 * Scratch holding these words is int32_t and word-aligned (the caller's buffer is 4-byte
 * aligned), so GCC may use LDRD/STRD on it; weights and activations are read through
 * mcup_read_s8x4 (single LDR, any alignment).
 */
#ifndef MCUP_DSP_H
#define MCUP_DSP_H

#include <stdint.h>
#include <string.h>

/* Two int16 in one word, lo in the low half. */
static inline int32_t mcup_pack16(int32_t lo, int32_t hi)
{
    return (int32_t)(((uint32_t)hi << 16) | ((uint32_t)lo & 0xFFFFu));
}

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#elif defined(MCUP_EMULATE_DSP)

/* Portable equivalents with the ACLE signatures (int16x2_t and int8x4_t are int32_t). */

static inline int32_t mcup_emu_lane16(int32_t x, int lane)
{
    const uint32_t h = ((uint32_t)x >> (16 * lane)) & 0xFFFFu;
    return h >= 0x8000u ? (int32_t)h - 0x10000 : (int32_t)h;
}

static inline int32_t mcup_emu_byte(int32_t x, int byte)
{
    const uint32_t b = ((uint32_t)x >> (8 * byte)) & 0xFFu;
    return b >= 0x80u ? (int32_t)b - 0x100 : (int32_t)b;
}

/* SXTB16: sign-extend bytes 0 and 2 into the two halfwords. */
static inline int32_t __sxtb16(int32_t x)
{
    return mcup_pack16(mcup_emu_byte(x, 0), mcup_emu_byte(x, 2));
}

/* SXTAB16: sign-extend bytes 0 and 2 of b and add them to the halfwords of a (mod 2^16). */
static inline int32_t __sxtab16(int32_t a, int32_t b)
{
    return mcup_pack16(mcup_emu_lane16(a, 0) + mcup_emu_byte(b, 0),
                           mcup_emu_lane16(a, 1) + mcup_emu_byte(b, 2));
}

/* SMLAD: acc + a.lo * b.lo + a.hi * b.hi, wrapping like the 32-bit hardware adder. */
static inline int32_t __smlad(int32_t a, int32_t b, int32_t acc)
{
    const uint32_t lo = (uint32_t)(mcup_emu_lane16(a, 0) * mcup_emu_lane16(b, 0));
    const uint32_t hi = (uint32_t)(mcup_emu_lane16(a, 1) * mcup_emu_lane16(b, 1));
    return (int32_t)((uint32_t)acc + lo + hi);
}

/* SMLABB / SMLATT: acc + the product of the bottom (top) halves of a and b, wrapping. A value
 * that fits 16 bits (an int8 weight, an int16 patch value) is its own bottom half. */
static inline int32_t __smlabb(int32_t a, int32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(mcup_emu_lane16(a, 0) * mcup_emu_lane16(b, 0)));
}

static inline int32_t __smlatt(int32_t a, int32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(mcup_emu_lane16(a, 1) * mcup_emu_lane16(b, 1)));
}

/* SMLATB: acc + top half of a times bottom half of b, wrapping. */
static inline int32_t __smlatb(int32_t a, int32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(mcup_emu_lane16(a, 1) * mcup_emu_lane16(b, 0)));
}

/*
 * The APSR.GE bits (bit i for byte i) that the last emulated byte-wise instruction set and
 * __sel reads: one per translation unit, standing for the core's single flags register (host
 * tests are single-threaded). As on the core, __sel must follow the instruction that set them.
 */
static uint32_t mcup_emu_ge;

/* SSUB8: byte-wise a - b (wrapping); GE bit i set when a_i - b_i >= 0. */
static inline int32_t __ssub8(int32_t a, int32_t b)
{
    uint32_t diff = 0, ge = 0;
    for (int byte = 0; byte < 4; byte++) {
        const int32_t d = mcup_emu_byte(a, byte) - mcup_emu_byte(b, byte);
        diff |= ((uint32_t)d & 0xFFu) << (8 * byte);
        ge |= (d >= 0 ? 1u : 0u) << byte;
    }
    mcup_emu_ge = ge;
    return (int32_t)diff;
}

/* SEL: byte i from a where GE bit i is set, else from b. */
static inline uint32_t __sel(uint32_t a, uint32_t b)
{
    uint32_t out = 0;
    for (int byte = 0; byte < 4; byte++) {
        const uint32_t from = ((mcup_emu_ge >> byte) & 1u) != 0 ? a : b;
        out |= from & (0xFFu << (8 * byte));
    }
    return out;
}

#else
#error "mcup_dsp.h needs a core with the DSP extension (or -DMCUP_EMULATE_DSP on the host)"
#endif

/* Rotate right by 8: brings bytes 1 and 3 where __sxtb16 reads (GCC emits one ROR). */
static inline int32_t mcup_ror8(int32_t x)
{
    const uint32_t u = (uint32_t)x;
    return (int32_t)((u >> 8) | (u << 24));
}

/*
 * __sxtb16(mcup_ror8(x)) and __sxtab16(a, mcup_ror8(x)) in one instruction: SXTB16 and SXTAB16
 * can rotate their byte operand, but GCC 12 does not fold a rotate into the intrinsics (it emits
 * a separate ROR), so on the target these are one-line inline assembly.
 */
static inline int32_t mcup_sxtb16_ror8(int32_t x)
{
#if defined(__ARM_FEATURE_DSP)
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
#else
    return __sxtb16(mcup_ror8(x));
#endif
}

static inline int32_t mcup_sxtab16_ror8(int32_t a, int32_t x)
{
#if defined(__ARM_FEATURE_DSP)
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
#else
    return __sxtab16(a, mcup_ror8(x));
#endif
}

/*
 * Four int8 as one word from any address. LDR tolerates unaligned addresses on these cores;
 * memcpy (not a cast) tells GCC the alignment is unknown, so it never fuses two reads into an
 * LDRD, which would fault on a non-word-aligned weight row.
 */
static inline int32_t mcup_read_s8x4(const int8_t *p)
{
    int32_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

/* Byte-wise signed maximum of two words of 4 int8: SSUB8 sets GE where a >= b, SEL picks. */
static inline int32_t mcup_max_s8x4(int32_t a, int32_t b)
{
    (void)__ssub8(a, b);
    return (int32_t)__sel((uint32_t)a, (uint32_t)b);
}

/* Byte-wise signed minimum of two words of 4 int8: SSUB8, then SEL with the operands swapped. */
static inline int32_t mcup_min_s8x4(int32_t a, int32_t b)
{
    (void)__ssub8(a, b);
    return (int32_t)__sel((uint32_t)b, (uint32_t)a);
}

/* Stores the 4 int8 of w at any address (a single STR, which tolerates unaligned addresses). */
static inline void mcup_write_s8x4(int8_t *p, int32_t w)
{
    memcpy(p, &w, sizeof w);
}

/*
 * Converts n int8 values plus offset into the q15-pair layout. The two words of a group go to
 * dst[0] and dst[stride], the next group starts at dst[2 * stride]: stride 1 is the plain
 * layout, stride 2 interleaves two runs word by word (run A at dst, run B at dst + 1). Tails
 * of 1..3 elements are handled the same way. Returns where the next run's words start.
 */
static inline int32_t *mcup_s8_to_q15_pairs(const int8_t *src, int32_t n, int32_t offset,
                                            int32_t *dst, int32_t stride)
{
    const int32_t offset2 = mcup_pack16(offset, offset);
    for (int32_t i = n >> 2; i > 0; i--) {
        const int32_t w = mcup_read_s8x4(src);
        src += 4;
        dst[0] = __sxtab16(offset2, w);
        dst[stride] = mcup_sxtab16_ror8(offset2, w);
        dst += 2 * stride;
    }
    const int32_t tail = n & 3;
    if (tail > 0) {
        dst[0] = mcup_pack16(src[0] + offset, tail > 1 ? src[1] + offset : 0);
        dst += stride;
    }
    if (tail > 2) {
        dst[0] = mcup_pack16(src[2] + offset, 0);
        dst += stride;
    }
    return dst;
}

/* acc + the 4 products of one group of inputs (x02 = [x0|x2], x13 = [x1|x3]) and weight word w. */
static inline int32_t mcup_mac_group(int32_t x02, int32_t x13, int32_t w, int32_t acc)
{
    acc = __smlad(x02, __sxtb16(w), acc);
    return __smlad(x13, mcup_sxtb16_ror8(w), acc);
}

/* The 1..3 trailing elements of a dot product: x holds them as [t0|t1], [t2|0]. */
static inline int32_t mcup_dot_tail(const int32_t *x, const int8_t *w, int32_t tail, int32_t acc)
{
    for (int32_t j = 0; j < tail; j += 2) {
        const int32_t w_hi = j + 1 < tail ? w[j + 1] : 0;
        acc = __smlad(x[j >> 1], mcup_pack16(w[j], w_hi), acc);
    }
    return acc;
}

/* acc + dot(x, w) over n elements: x in the q15-pair layout, w plain int8 (any alignment). */
static inline int32_t mcup_dot_q15_s8(const int32_t *x, const int8_t *w, int32_t n, int32_t acc)
{
    for (int32_t i = n >> 2; i > 0; i--) {
        acc = mcup_mac_group(x[0], x[1], mcup_read_s8x4(w), acc);
        w += 4;
        x += 2;
    }
    return mcup_dot_tail(x, w, n & 3, acc);
}

/* --- int4 weights (the _s4_ kernels; storage in mcup_nn.h) ------------------------------------
 *
 * s4-pair layout. The int4 kernels convert activations (input_offset added) into groups of 8:
 * values x0..x7 become the four words [x0|x4], [x2|x6], [x1|x5], [x3|x7] (int16 halves, low half
 * first); a last group of 1..7 values is padded with zeros. A run of n values takes
 * 4 * ((n + 7) / 8) words. Why that order: a weight word w (4 bytes of packed int4, value i of
 * the group in bits 4i..4i+3) splits into
 *     even = (w << 4) & 0xF0F0F0F0   (values 0, 2, 4, 6 in the high nibble of each byte),
 *     odd  =  w       & 0xF0F0F0F0   (values 1, 3, 5, 7),
 * and __sxtb16 / mcup_sxtb16_ror8 of those give [16w0|16w4], [16w2|16w6], [16w1|16w5],
 * [16w3|16w7]: four __smlad against the group's four words, with one AND, one shifted AND and
 * four sign extensions for 8 weights (the int8 kernels spend 2 loads, 4 sign extensions).
 *
 * The weights come out times 16, exactly, so the dot products do too: the kernels sum them in an
 * accumulator of their own and add (sum >> 4), exact since the sum is a multiple of 16, to the
 * int32 accumulator (which wraps like TFLM's). |16 * x * w| <= 16 * 255 * 8 = 32640, so up to
 * MCUP_S4_CHUNK_GROUPS groups (65528 values) fit one such sum without overflow; kernels with
 * longer dot products flush the sum every MCUP_S4_CHUNK_GROUPS groups.
 */
#define MCUP_S4_CHUNK_GROUPS 8191

/*
 * [a.lo | b.lo] and [a.hi | b.hi]: one PKHBT / PKHTB each on the target (GCC 12 has no intrinsic
 * and builds them from two instructions, UXTH + ORR), plain C elsewhere.
 */
static inline int32_t mcup_pack_lo16(int32_t a, int32_t b)
{
#if defined(__ARM_FEATURE_DSP)
    int32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
#else
    return (int32_t)(((uint32_t)a & 0xFFFFu) | ((uint32_t)b << 16));
#endif
}

static inline int32_t mcup_pack_hi16(int32_t a, int32_t b)
{
#if defined(__ARM_FEATURE_DSP)
    int32_t r;
    __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(b), "r"(a));
    return r;
#else
    return (int32_t)(((uint32_t)a >> 16) | ((uint32_t)b & 0xFFFF0000u));
#endif
}

/*
 * lo = x[i], hi = x[i + 1] (i a constant, x int32_t *) with one LDRD. Left to itself GCC 12 loads
 * the two words one by one; the "m" operand tells it which words the asm reads. (The same as
 * LOAD_PAIR in kernels/dsp/conv2d_s8_dense.c.)
 */
#if defined(__ARM_FEATURE_DSP)
#define MCUP_LOAD_PAIR(x, i, lo, hi)                                                         \
    __asm__("ldrd %0, %1, [%2, #" #i " * 4]"                                                 \
            : "=r"(lo), "=r"(hi)                                                             \
            : "r"(x), "m"(*(const int32_t(*)[2])((x) + (i))))
#else
#define MCUP_LOAD_PAIR(x, i, lo, hi) ((lo) = (x)[i], (hi) = (x)[(i) + 1])
#endif

/*
 * 0xF0F0F0F0, the nibble mask of mcup_s4_even / mcup_s4_odd, in a register: an empty asm hides the
 * constant from GCC, which then uses it as a register operand, so the even values cost one
 * AND with a shifted operand (and, rd, mask, w, lsl #4) instead of a shift and an AND.
 */
static inline uint32_t mcup_s4_mask(void)
{
    uint32_t mask = 0xF0F0F0F0u;
    __asm__("" : "+r"(mask));
    return mask;
}

/* Four bytes of packed weights as one word, any alignment (single LDR). */
static inline uint32_t mcup_read_u8x4(const uint8_t *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

/* The last n = 1..4 bytes of a packed row as a weight word (missing bytes 0): never reads past. */
static inline uint32_t mcup_s4_tail_word(const uint8_t *p, int32_t n)
{
    uint32_t w = 0;
    for (int32_t i = 0; i < n; i++) {
        w |= (uint32_t)p[i] << (8 * i);
    }
    return w;
}

/* Values 0, 2, 4, 6 (even) and 1, 3, 5, 7 (odd) of a weight word, each in its byte's high nibble. */
static inline int32_t mcup_s4_even(uint32_t w)
{
    return (int32_t)((w << 4) & 0xF0F0F0F0u);
}

static inline int32_t mcup_s4_odd(uint32_t w)
{
    return (int32_t)(w & 0xF0F0F0F0u);
}

/* acc + 16 * the 8 products of one s4-pair group (x[0], x[stride], ...) with weight word w. */
static inline int32_t mcup_s4_mac_group(const int32_t *x, int32_t stride, uint32_t w, int32_t acc)
{
    const int32_t even = mcup_s4_even(w);
    const int32_t odd = mcup_s4_odd(w);
    acc = __smlad(x[0], __sxtb16(even), acc);
    acc = __smlad(x[stride], mcup_sxtb16_ror8(even), acc);
    acc = __smlad(x[2 * stride], __sxtb16(odd), acc);
    return __smlad(x[3 * stride], mcup_sxtb16_ror8(odd), acc);
}

/*
 * Converts n int8 values plus offset into the s4-pair layout: the four words of a group go to
 * dst[0], dst[stride], dst[2 * stride], dst[3 * stride], the next group starts at
 * dst[4 * stride] (stride 2 interleaves two runs word by word, as mcup_s8_to_q15_pairs). Per
 * group: 2 loads, 4 __sxtab16 (sign extension and offset), 4 half-word packs, 4 stores. Returns
 * where the next run's words start.
 */
static inline int32_t *mcup_s8_to_s4_pairs(const int8_t *src, int32_t n, int32_t offset,
                                           int32_t *dst, int32_t stride)
{
    const int32_t offset2 = mcup_pack16(offset, offset);
    for (int32_t i = n >> 3; i > 0; i--) {
        const int32_t a = mcup_read_s8x4(src);
        const int32_t b = mcup_read_s8x4(src + 4);
        src += 8;
        const int32_t a02 = __sxtab16(offset2, a);         /* [x0 | x2] */
        const int32_t a13 = mcup_sxtab16_ror8(offset2, a); /* [x1 | x3] */
        const int32_t b46 = __sxtab16(offset2, b);         /* [x4 | x6] */
        const int32_t b57 = mcup_sxtab16_ror8(offset2, b); /* [x5 | x7] */
        dst[0] = mcup_pack_lo16(a02, b46);                 /* [x0 | x4] */
        dst[stride] = mcup_pack_hi16(a02, b46);            /* [x2 | x6] */
        dst[2 * stride] = mcup_pack_lo16(a13, b57);        /* [x1 | x5] */
        dst[3 * stride] = mcup_pack_hi16(a13, b57);        /* [x3 | x7] */
        dst += 4 * stride;
    }
    const int32_t tail = n & 7;
    if (tail > 0) {
        int32_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int32_t i = 0; i < tail; i++) {
            t[i] = src[i] + offset;
        }
        dst[0] = mcup_pack16(t[0], t[4]);
        dst[stride] = mcup_pack16(t[2], t[6]);
        dst[2 * stride] = mcup_pack16(t[1], t[5]);
        dst[3 * stride] = mcup_pack16(t[3], t[7]);
        dst += 4 * stride;
    }
    return dst;
}

#endif /* MCUP_DSP_H */
