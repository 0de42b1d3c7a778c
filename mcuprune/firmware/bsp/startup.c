/*
 * startup.c - vector table and reset for Cortex-M3/M4 (Armv7-M).
 * Reset: enable the FPU if the build uses it, copy .data, zero .bss, run main, leave through
 * semihosting with main's return value. Any fault or unexpected exception prints one line on
 * the UART and exits with MCUP_EXIT_FAULT, so a crash never leaves QEMU hanging silently.
 */
#include <stdint.h>

#include "semihost.h"
#include "uart.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack; /* from common.ld */

int main(void);
void Reset_Handler(void);
void mcup_fault_handler(void);

/* Weak: a runtime file that needs one of these defines it (ticks.c defines SysTick_Handler). */
#define WEAK_HANDLER(name) void name(void) __attribute__((weak, alias("mcup_fault_handler")))
WEAK_HANDLER(NMI_Handler);
WEAK_HANDLER(HardFault_Handler);
WEAK_HANDLER(MemManage_Handler);
WEAK_HANDLER(BusFault_Handler);
WEAK_HANDLER(UsageFault_Handler);
WEAK_HANDLER(SVC_Handler);
WEAK_HANDLER(DebugMon_Handler);
WEAK_HANDLER(PendSV_Handler);
WEAK_HANDLER(SysTick_Handler);

#define NUM_EXTERNAL_IRQS 32 /* covers the boards in boards/; none is used, so all fault */

typedef void (*mcup_vector)(void);

__attribute__((section(".isr_vector"), used)) const mcup_vector mcup_vector_table[16 + NUM_EXTERNAL_IRQS] = {
    [0] = (mcup_vector)&_estack, /* initial main stack pointer */
    [1] = Reset_Handler,
    [2] = NMI_Handler,
    [3] = HardFault_Handler,
    [4] = MemManage_Handler,
    [5] = BusFault_Handler,
    [6] = UsageFault_Handler,
    [11] = SVC_Handler,
    [12] = DebugMon_Handler,
    [14] = PendSV_Handler,
    [15] = SysTick_Handler,
    [16 ... 16 + NUM_EXTERNAL_IRQS - 1] = mcup_fault_handler,
};

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

void Reset_Handler(void)
{
#if defined(__ARM_FP)
    /* Full access to CP10/CP11 before any compiler-generated FP instruction can run. */
    SCB_CPACR |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0u;
    }
    mcup_semihost_exit(main());
}

void mcup_fault_handler(void)
{
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    ipsr &= 0x1FFu;
    /* Leading and trailing 0x00 make the line a non-frame the host keeps as diagnostics. */
    char line[] = "\0mcuprune: fault: exception 000\r\n";
    line[sizeof line - 6u] = (char)('0' + ipsr / 100u);
    line[sizeof line - 5u] = (char)('0' + ipsr / 10u % 10u);
    line[sizeof line - 4u] = (char)('0' + ipsr % 10u);
    mcup_uart_init();
    mcup_uart_write(line, sizeof line); /* includes the terminating NUL as the 0x00 delimiter */
    mcup_uart_flush();
    mcup_semihost_exit(MCUP_EXIT_FAULT);
}
