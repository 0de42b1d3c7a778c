#include "ticks.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

#define CSR_ENABLE 0x1u
#define CSR_TICKINT 0x2u
#define CSR_CLKSOURCE 0x4u /* 1 = processor clock, not the board's reference clock */

#define RELOAD 0xFFFFFFu /* 24-bit counter: one period is 2^24 ticks */

static volatile uint32_t wraps; /* completed SysTick periods */

void SysTick_Handler(void);

void SysTick_Handler(void)
{
    wraps++;
}

void mcup_ticks_init(void)
{
    SYST_CSR = 0u;
    SYST_RVR = RELOAD;
    SYST_CVR = 0u; /* any write clears the counter; it reloads on the next clock */
    wraps = 0u;
    SYST_CSR = CSR_ENABLE | CSR_TICKINT | CSR_CLKSOURCE;
    __asm__ volatile("cpsie i" ::: "memory");
}

uint32_t mcup_ticks_now(void)
{
    uint32_t hi;
    uint32_t cur;
    /* If the counter wraps between the two reads, the interrupt bumps `wraps` and we read again. */
    do {
        hi = wraps;
        cur = SYST_CVR;
    } while (hi != wraps);
    return (hi << 24) + (RELOAD - cur);
}
