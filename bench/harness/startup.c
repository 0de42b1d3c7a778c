/*
 * startup.c - minimal bare-metal runtime of the benchmark harness on mps2-an385/an386.
 *
 * Self-contained on purpose (the product runtime lives in firmware/runtime/): vector table,
 * reset handler (copy .data, zero .bss, enable the FPU, call main), semihosting output and exit
 * so QEMU prints to the host's stdout and returns main's status.
 */
#include <stdint.h>

#include "bench_io.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

/* Semihosting call: BKPT 0xAB with the operation in r0 and its argument in r1. */
static int32_t semihost(int32_t op, const void *arg)
{
    register int32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void bench_write(const char *s)
{
    semihost(0x04, s); /* SYS_WRITE0: NUL-terminated string to the host console */
}

void bench_exit(int status)
{
    /* SYS_EXIT with ADP_Stopped_ApplicationExit (QEMU exits 0) or RunTimeErrorUnknown (1). */
    semihost(0x18, (const void *)(uintptr_t)(status == 0 ? 0x20026u : 0x20023u));
    for (;;) {
    }
}

void Reset_Handler(void)
{
    uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata; dst++) {
        *dst = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss; dst++) {
        *dst = 0;
    }
    SCB_CPACR |= 0xFu << 20; /* CP10/CP11 full access: -mfloat-abi=hard code may use the FPU */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    bench_exit(main());
}

static void Fault_Handler(void)
{
    bench_write("FAULT: the benchmark took an exception (unaligned LDRD/LDM?)\n");
    bench_exit(1);
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&_estack, /* initial stack pointer */
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
};
