/*
 * bench.c - instructions per MAC (per output for max-pool) of the mcuprune kernels on
 * mps2-an386 (Cortex-M4) in QEMU.
 *
 * Built once per kernel variant (reference, dsp) by run.py, which also generates bench_data.h
 * (fixed random FC, conv and max-pool layers and inputs). QEMU has no DWT cycle counter, so
 * time is read from SysTick clocked by the core clock (25 MHz): under -icount shift=0 every
 * instruction advances virtual time by 1 ns, so one SysTick tick is 40 instructions. A calibration loop of known length
 * checks that ratio. Each line printed is parsed by run.py; the last one is a sentinel.
 */
#include <stdint.h>

#include "bench_io.h"
#include "mcup_nn.h"

#ifndef BENCH_VARIANT
#error "build with -DBENCH_VARIANT=\"reference\" or \"dsp\""
#endif

typedef enum { BENCH_FC, BENCH_CONV, BENCH_POOL } bench_kind;

typedef struct {
    const char *name;
    bench_kind kind;
    const mcup_fc_params *fc;         /* BENCH_FC */
    const mcup_conv2d_params *conv;   /* BENCH_CONV */
    const mcup_maxpool2d_params *pool; /* BENCH_POOL */
    const int8_t *input;
    int32_t out_lead; /* the output goes to output + out_lead (1: not word-aligned) */
    int32_t out_size;
    uint32_t work; /* MACs (nominal: every tap counts, padding included); outputs for pooling */
} bench_case;

#include "bench_data.h" /* bench_cases[], BENCH_SCRATCH_BYTES, BENCH_MAX_OUT */

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_CSR_ENABLE (1u << 0)
#define SYST_CSR_CLKSOURCE_CORE (1u << 2)
#define SYST_CSR_COUNTFLAG (1u << 16)
#define SYST_MASK 0xFFFFFFu

static int8_t output[BENCH_MAX_OUT + 1] __attribute__((aligned(4))); /* +1: out_lead */
static int32_t scratch[BENCH_SCRATCH_BYTES / 4 + 1]; /* +1: never zero-sized */

static void put_u32(uint32_t v)
{
    char buf[11];
    char *p = buf + sizeof buf - 1;
    *p = '\0';
    do {
        *--p = (char)('0' + v % 10u);
        v /= 10u;
    } while (v != 0u);
    bench_write(p);
}

static void put_hex(uint32_t v)
{
    char buf[11] = "0x";
    for (int i = 0; i < 8; i++) {
        buf[2 + i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 0xFu];
    }
    buf[10] = '\0';
    bench_write(buf);
}

static void timer_start(void)
{
    SYST_CSR = 0;
    SYST_RVR = SYST_MASK;
    SYST_CVR = 0; /* any write clears the counter and COUNTFLAG */
    SYST_CSR = SYST_CSR_ENABLE | SYST_CSR_CLKSOURCE_CORE;
}

/* Ticks since the counter last reloaded; 0 on wrap-around (measurement too long). */
static uint32_t ticks_since(uint32_t start)
{
    const uint32_t now = SYST_CVR;
    if ((SYST_CSR & SYST_CSR_COUNTFLAG) != 0u) {
        return 0;
    }
    return (start - now) & SYST_MASK;
}

/* Exactly 2 * n instructions (SUBS + BNE per iteration). */
static void __attribute__((noinline)) spin(uint32_t n)
{
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
}

static uint32_t fnv1a(const int8_t *data, int32_t n)
{
    uint32_t h = 2166136261u;
    for (int32_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t)data[i]) * 16777619u;
    }
    return h;
}

static void run_case(const bench_case *c)
{
    if (c->kind == BENCH_FC && mcup_fc_s8_dense_get_buffer_size(c->fc) > BENCH_SCRATCH_BYTES) {
        bench_write("ERROR scratch too small\n");
        bench_exit(1);
    }
    if (c->kind == BENCH_CONV &&
        mcup_conv2d_s8_dense_get_buffer_size(c->conv) > BENCH_SCRATCH_BYTES) {
        bench_write("ERROR scratch too small\n");
        bench_exit(1);
    }
    int8_t *out = output + c->out_lead;
    timer_start();
    const uint32_t start = SYST_CVR;
    if (c->kind == BENCH_FC) {
        mcup_fc_s8_dense(c->fc, c->input, out, scratch);
    } else if (c->kind == BENCH_CONV) {
        mcup_conv2d_s8_dense(c->conv, c->input, out, scratch);
    } else {
        mcup_maxpool2d_s8(c->pool, c->input, out);
    }
    const uint32_t ticks = ticks_since(start);
    bench_write("case ");
    bench_write(c->name);
    bench_write(" variant=" BENCH_VARIANT " work=");
    put_u32(c->work);
    bench_write(" ticks=");
    put_u32(ticks);
    bench_write(" checksum=");
    put_hex(fnv1a(out, c->out_size));
    bench_write("\n");
}

int main(void)
{
    /* Calibration: a loop of known length, and the cost of an empty measurement. */
    const uint32_t calib_instructions = 2u * 500000u;
    timer_start();
    uint32_t start = SYST_CVR;
    spin(calib_instructions / 2u);
    const uint32_t calib_ticks = ticks_since(start);
    timer_start();
    start = SYST_CVR;
    const uint32_t empty_ticks = ticks_since(start);
    bench_write("calib instructions=");
    put_u32(calib_instructions);
    bench_write(" ticks=");
    put_u32(calib_ticks);
    bench_write(" empty_ticks=");
    put_u32(empty_ticks);
    bench_write("\n");

    for (uint32_t i = 0; i < sizeof bench_cases / sizeof bench_cases[0]; i++) {
        run_case(&bench_cases[i]);
    }
    bench_write("MCUP-BENCH-DONE\n");
    return 0;
}
