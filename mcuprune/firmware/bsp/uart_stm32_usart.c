/*
 * uart_stm32_usart.c - the STM32F1/F2/F4 USART ("v1": SR/DR/BRR/CR1 at +0x00/+0x04/+0x08/+0x0C,
 * RM0090 section 30.6), polled, 8N1, oversampling by 16.
 *   SR   +0x00  bit 7 TXE (data register empty), bit 6 TC (transmission complete), bit 5 RXNE
 *   DR   +0x04  write: transmit, read: receive (clears RXNE)
 *   BRR  +0x08  fck / baud in 1/16 units (mantissa << 4 | fraction)
 *   CR1  +0x0C  bit 13 UE, bit 3 TE, bit 2 RE
 * fck is the APB clock of the bus the USART sits on (MCUP_UART_CLOCK_HZ, from [uart] clock_hz).
 * Clock gating and pin muxing are board facts, not USART facts: the board file lists them as
 * [uart] init register writes, applied here before the USART is touched (MCUP_UART_INIT).
 */
#include "uart.h"

#ifndef MCUP_UART_BASE
#error "MCUP_UART_BASE must be defined (the Makefile takes it from the board file)"
#endif
#ifndef MCUP_UART_CLOCK_HZ
#error "MCUP_UART_CLOCK_HZ must be defined (the Makefile takes it from the board file)"
#endif
#ifndef MCUP_UART_BAUD
#define MCUP_UART_BAUD 115200u
#endif

#define UART_REG(off) (*(volatile uint32_t *)((uintptr_t)(MCUP_UART_BASE) + (off)))
#define USART_SR UART_REG(0x00u)
#define USART_DR UART_REG(0x04u)
#define USART_BRR UART_REG(0x08u)
#define USART_CR1 UART_REG(0x0Cu)
#define USART_CR2 UART_REG(0x10u)
#define USART_CR3 UART_REG(0x14u)

#define SR_TXE (1u << 7)
#define SR_TC (1u << 6)
#define SR_RXNE (1u << 5)
#define CR1_UE (1u << 13)
#define CR1_TE (1u << 3)
#define CR1_RE (1u << 2)

/* BRR = fck / baud rounded: the 12.4 fixed-point USARTDIV of the reference manual, times 16. */
#define USART_BRR_VALUE (((uint32_t)(MCUP_UART_CLOCK_HZ) + (uint32_t)(MCUP_UART_BAUD) / 2u) / (uint32_t)(MCUP_UART_BAUD))
_Static_assert(USART_BRR_VALUE >= 16u && USART_BRR_VALUE <= 0xFFFFu, "STM32 USART: baud out of range for the clock");

/* Board-specific register writes (clock enables, pin muxing): {address, clear mask, set bits}. */
static void apply_board_init(void)
{
#ifdef MCUP_UART_INIT
    static const uint32_t writes[][3] = MCUP_UART_INIT;
    for (uint32_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        volatile uint32_t *reg = (volatile uint32_t *)(uintptr_t)writes[i][0];
        *reg = (*reg & ~writes[i][1]) | writes[i][2];
        (void)*reg; /* read back: on STM32 a peripheral needs 2 clocks after its enable bit is set */
    }
#endif
}

void mcup_uart_init(void)
{
    apply_board_init();
    USART_CR1 = 0u; /* UE off while configuring */
    USART_CR2 = 0u; /* 1 stop bit */
    USART_CR3 = 0u; /* no flow control, no DMA */
    USART_BRR = USART_BRR_VALUE;
    USART_CR1 = CR1_UE | CR1_TE | CR1_RE; /* 8 data bits, no parity */
}

void mcup_uart_putc(uint8_t c)
{
    while (!(USART_SR & SR_TXE)) {
    }
    USART_DR = c;
}

uint8_t mcup_uart_getc(void)
{
    while (!(USART_SR & SR_RXNE)) {
    }
    return (uint8_t)USART_DR;
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
    while (!(USART_SR & SR_TC)) {
    }
}
