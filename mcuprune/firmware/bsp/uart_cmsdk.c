/*
 * uart_cmsdk.c - Arm CMSDK APB UART (ARM DDI0479C), the UART of Arm's FPGA prototyping boards.
 * Registers: DATA +0x00, STATE +0x04 (bit0 TX full, bit1 RX full), CTRL +0x08 (bit0 TX en,
 * bit1 RX en), BAUDDIV +0x10 (>= 16). The UART has a single-byte buffer each way, no FIFO.
 */
#include "uart.h"

#ifndef MCUP_UART_BASE
#error "MCUP_UART_BASE must be defined (the Makefile takes it from the board file)"
#endif
#ifndef MCUP_CLOCK_HZ
#error "MCUP_CLOCK_HZ must be defined (the Makefile takes it from the board file)"
#endif
#ifndef MCUP_UART_BAUD
#define MCUP_UART_BAUD 115200u
#endif

#define UART_REG(off) (*(volatile uint32_t *)((uintptr_t)(MCUP_UART_BASE) + (off)))
#define UART_DATA UART_REG(0x00u)
#define UART_STATE UART_REG(0x04u)
#define UART_CTRL UART_REG(0x08u)
#define UART_BAUDDIV UART_REG(0x10u)

#define STATE_TX_FULL 0x1u
#define STATE_RX_FULL 0x2u
#define CTRL_TX_EN 0x1u
#define CTRL_RX_EN 0x2u

/* The UART clock is the CPU clock on the boards we know; the hardware rejects dividers below 16. */
#define UART_BAUDDIV_VALUE ((uint32_t)(MCUP_CLOCK_HZ) / (uint32_t)(MCUP_UART_BAUD))
_Static_assert(UART_BAUDDIV_VALUE >= 16u, "CMSDK UART needs BAUDDIV >= 16: baud too high for clock");

void mcup_uart_init(void)
{
    UART_BAUDDIV = UART_BAUDDIV_VALUE;
    UART_CTRL = CTRL_TX_EN | CTRL_RX_EN;
}

void mcup_uart_putc(uint8_t c)
{
    while (UART_STATE & STATE_TX_FULL) {
    }
    UART_DATA = c;
}

uint8_t mcup_uart_getc(void)
{
    while (!(UART_STATE & STATE_RX_FULL)) {
    }
    return (uint8_t)UART_DATA;
}

void mcup_uart_write(const void *data, uint32_t len)
{
    const uint8_t *p = data;
    for (uint32_t i = 0; i < len; i++) {
        mcup_uart_putc(p[i]);
    }
}

void mcup_uart_flush(void)
{
    while (UART_STATE & STATE_TX_FULL) {
    }
}
