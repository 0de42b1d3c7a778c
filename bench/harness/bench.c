/*
 * bench.c - instruction counts of kernel calls in QEMU: the harness of bench/kernels/run.py
 * (dense kernels and max-pool, per MAC) and bench/sparse/run.py (every weight format).
 *
 * Built by qemu_bench.py once per target (core + kernel variant) with a generated bench_data.h
 * that holds the layers, their inputs, one small wrapper per case calling its kernel, and
 * bench_cases[]. QEMU has no DWT cycle counter, so time is read from SysTick clocked by the core
 * clock: under -icount shift=0 every instruction advances virtual time by 1 ns and the mps2 core
 * clock is 25 MHz, so one tick is 40 instructions (checked against a calibration loop of known
 * length). Each line printed is parsed by qemu_bench.py; the last one is a sentinel.
 */
#include <stdint.h>

#include "bench_io.h"
#include "mcup_nn.h"
#include "mcup_sparse.h"

typedef struct {
    const char *name;
    void (*run)(void *scratch);     /* calls the kernel on the case's params, input and output */
    int32_t (*scratch_bytes)(void); /* the kernel's _get_buffer_size */
    int32_t expected_scratch;       /* mcuprune.model.ops.scratch_bytes */
    int32_t out_lead; /* the output is at bench_output + out_lead (1: not word-aligned) */
    int32_t out_size;
} bench_case;

#if !defined(BENCH_MAX_OUT) || !defined(BENCH_SCRATCH_BYTES)
#error "qemu_bench.py passes -DBENCH_MAX_OUT=... -DBENCH_SCRATCH_BYTES=... (maxima over the cases)"
#endif

static int8_t bench_output[BENCH_MAX_OUT + 1] __attribute__((aligned(4))); /* +1: out_lead */

#include "bench_data.h" /* layers, wrappers and bench_cases[] */

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_CSR_ENABLE (1u << 0)
#define SYST_CSR_CLKSOURCE_CORE (1u << 2)
#define SYST_CSR_COUNTFLAG (1u << 16)
#define SYST_MASK 0xFFFFFFu

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

static void empty_case(void *s)
{
    (void)s;
}

static uint32_t fnv1a(const int8_t *data, int32_t n)
{
    uint32_t h = 2166136261u;
    for (int32_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t)data[i]) * 16777619u;
    }
    return h;
}

static uint32_t measure(void (*run)(void *), void *s)
{
    timer_start();
    const uint32_t start = SYST_CVR;
    run(s);
    return ticks_since(start);
}

int main(void)
{
    const uint32_t calib_instructions = 2u * 500000u;
    timer_start();
    const uint32_t start = SYST_CVR;
    spin(calib_instructions / 2u);
    const uint32_t calib_ticks = ticks_since(start);
    bench_write("calib instructions=");
    put_u32(calib_instructions);
    bench_write(" ticks=");
    put_u32(calib_ticks);
    bench_write(" empty_ticks=");
    put_u32(measure(empty_case, scratch)); /* the cost of calling a wrapper: 0 ticks */
    bench_write("\n");

    for (uint32_t i = 0; i < sizeof bench_cases / sizeof bench_cases[0]; i++) {
        const bench_case *c = &bench_cases[i];
        const int32_t need = c->scratch_bytes();
        if (need != c->expected_scratch || need > BENCH_SCRATCH_BYTES) {
            bench_write("ERROR scratch size mismatch in ");
            bench_write(c->name);
            bench_write("\n");
            bench_exit(1);
        }
        const uint32_t ticks = measure(c->run, scratch);
        bench_write("case ");
        bench_write(c->name);
        bench_write(" ticks=");
        put_u32(ticks);
        bench_write(" checksum=");
        put_hex(fnv1a(bench_output + c->out_lead, c->out_size));
        bench_write("\n");
    }
    bench_write("MCUP-BENCH-DONE\n");
    return 0;
}
