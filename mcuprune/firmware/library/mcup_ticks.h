/*
 * mcup_ticks.h - the clock of the per-layer timing in an exported C library (mcuprune export
 * --format c-library). It replaces the firmware's SysTick driver: a library must not take over
 * the application's SysTick, so timing is off unless the application opts in.
 *
 * Off (default): mcup_ticks_now() is 0 and mcup_layer_ticks[] stays 0; nothing to provide.
 * On (compile the library and the application with MCUP_LAYER_TIMING defined): the application
 * defines uint32_t mcup_ticks_now(void), any free-running 32-bit counter (DWT->CYCCNT, a timer,
 * k_cycle_get_32() on Zephyr); mcup_run stores the difference across each layer, wrap-safe.
 */
#ifndef MCUP_TICKS_H
#define MCUP_TICKS_H

#include <stdint.h>

#ifdef MCUP_LAYER_TIMING
uint32_t mcup_ticks_now(void);
#else
static inline uint32_t mcup_ticks_now(void)
{
    return 0u;
}
#endif

#endif /* MCUP_TICKS_H */
