/*
 * uart_stm32_usart_v2.c - the STM32 USART with ISR/ICR/RDR/TDR registers (F0/F3/F7/L4/G0/H7;
 * RM0433 section 48.7 for the H7), polled, 8N1, oversampling by 16, FIFO left disabled.
 *   CR1  +0x00  bit 0 UE, bit 2 RE, bit 3 TE (UE last)
 *   CR3  +0x08  bit 12 OVRDIS: an overrun keeps the old byte instead of stalling reception
 *   BRR  +0x0C  usart_ker_ck / baud
 *   ISR  +0x1C  bit 7 TXE, bit 6 TC, bit 5 RXNE
 *   ICR  +0x20  write 1 to clear error flags
 *   RDR  +0x24, TDR +0x28
 * usart_ker_ck is MCUP_UART_CLOCK_HZ ([uart] clock_hz); PRESC (+0x2C) stays 0 (divide by 1).
 * Clock gating and pin muxing come from the board file as [uart] init writes (MCUP_UART_INIT).
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
#define USART_CR1 UART_REG(0x00u)
#define USART_CR2 UART_REG(0x04u)
#define USART_CR3 UART_REG(0x08u)
#define USART_BRR UART_REG(0x0Cu)
#define USART_ISR UART_REG(0x1Cu)
#define USART_ICR UART_REG(0x20u)
#define USART_RDR UART_REG(0x24u)
#define USART_TDR UART_REG(0x28u)

#define CR1_UE (1u << 0)
#define CR1_RE (1u << 2)
#define CR1_TE (1u << 3)
#define CR3_OVRDIS (1u << 12)
#define ISR_TXE (1u << 7)
#define ISR_TC (1u << 6)
#define ISR_RXNE (1u << 5)
#define ICR_ALL 0x0012135Fu /* PE, FE, NE, ORE, IDLE, TXFE, TC, TCBGT, LBD, CTS, RTO, EOB, CM, WUC */

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
        (void)*reg; /* read back: the enabled peripheral needs a few clocks before it is accessed */
    }
#endif
}

void mcup_uart_init(void)
{
    apply_board_init();
    USART_CR1 = 0u; /* UE off: BRR and CR2/CR3 are only writable while disabled */
    USART_CR2 = 0u; /* 1 stop bit */
    USART_CR3 = CR3_OVRDIS;
    USART_BRR = USART_BRR_VALUE;
    USART_ICR = ICR_ALL;
    USART_CR1 = CR1_TE | CR1_RE; /* 8 data bits, no parity, FIFO off */
    USART_CR1 = CR1_TE | CR1_RE | CR1_UE;
}

void mcup_uart_putc(uint8_t c)
{
    while (!(USART_ISR & ISR_TXE)) {
    }
    USART_TDR = c;
}

uint8_t mcup_uart_getc(void)
{
    while (!(USART_ISR & ISR_RXNE)) {
    }
    return (uint8_t)USART_RDR;
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
    while (!(USART_ISR & ISR_TC)) {
    }
}
