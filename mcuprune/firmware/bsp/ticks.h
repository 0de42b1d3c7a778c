/*
 * ticks.h - a free-running 32-bit tick counter built on SysTick.
 *
 * SysTick counts the processor clock (MCUP_CLOCK_HZ) down from 0xFFFFFF; its wrap interrupt
 * supplies the upper 8 bits. Cortex-M3/M4 under QEMU have no DWT cycle counter, but with
 * `-icount shift=0` one instruction is 1 ns of virtual time, so one tick is
 * 1e9 / MCUP_CLOCK_HZ instructions (40 at 25 MHz): a deterministic instruction-count proxy.
 * The counter wraps after 2^32 ticks (172 s at 25 MHz); differences stay correct across it.
 */
#ifndef MCUP_TICKS_H
#define MCUP_TICKS_H

#include <stdint.h>

/* Start SysTick: reload 0xFFFFFF, processor clock, wrap interrupt on. Enables interrupts. */
void mcup_ticks_init(void);

/* Ticks since mcup_ticks_init(). Needs interrupts enabled (for the wrap count). */
uint32_t mcup_ticks_now(void);

#endif /* MCUP_TICKS_H */
