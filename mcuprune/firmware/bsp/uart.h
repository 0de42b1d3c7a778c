/*
 * uart.h - the one UART API of the mcuprune runtime.
 *
 * One implementation per UART type lives beside this file as uart_<type>.c; the board file's
 * [uart] type picks it and the Makefile passes -DMCUP_UART_BASE, -DMCUP_UART_BAUD and
 * -DMCUP_CLOCK_HZ. All calls poll: no interrupts, no buffering beyond the hardware.
 */
#ifndef MCUP_UART_H
#define MCUP_UART_H

#include <stdint.h>

/* Program the baud rate and enable TX and RX. Safe to call again (the fault handler does). */
void mcup_uart_init(void);

/* Send one byte, waiting while the transmitter is busy. */
void mcup_uart_putc(uint8_t c);

/* Receive one byte, waiting until one arrives. */
uint8_t mcup_uart_getc(void);

/* Send `len` bytes from `data`. */
void mcup_uart_write(const void *data, uint32_t len);

/* Wait until the last byte written has left the transmit buffer. */
void mcup_uart_flush(void);

#endif /* MCUP_UART_H */
