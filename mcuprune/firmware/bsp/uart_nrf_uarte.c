/*
 * uart_nrf_uarte.c - Nordic nRF52 UARTE (UART with EasyDMA; nRF52840 Product Specification 6.34),
 * polled, 8N1. Every transfer goes through a RAM buffer because EasyDMA cannot read flash.
 *   TASKS_STARTRX +0x000, TASKS_STARTTX +0x008, TASKS_STOPTX +0x00C
 *   EVENTS_ENDRX  +0x110, EVENTS_ENDTX  +0x120, EVENTS_ERROR +0x124 (write 0 to clear)
 *   ERRORSRC +0x480, ENABLE +0x500 (8 = UARTE), BAUDRATE +0x524
 *   RXD.PTR +0x534, RXD.MAXCNT +0x538, TXD.PTR +0x544, TXD.MAXCNT +0x548
 * The pins (PSEL.TXD +0x50C, PSEL.RXD +0x514, PSEL.RTS/CTS) and CONFIG (+0x56C, bit 0 HWFC) are
 * board facts: the board file sets them with [uart] init writes, applied here while the UARTE
 * is disabled (the only time PSEL may change). With hardware flow control on, RTS goes inactive
 * while the receiver has no buffer, so bytes sent during an inference wait in the host instead
 * of being lost. The UARTE runs from the fixed 16 MHz peripheral clock whatever [uart] clock_hz
 * says; BAUDRATE is baud * 2^32 / 16 MHz rounded to the 4096 step the hardware uses.
 */
#include "uart.h"

#ifndef MCUP_UART_BASE
#error "MCUP_UART_BASE must be defined (the Makefile takes it from the board file)"
#endif
#ifndef MCUP_UART_BAUD
#define MCUP_UART_BAUD 115200u
#endif

#define UART_REG(off) (*(volatile uint32_t *)((uintptr_t)(MCUP_UART_BASE) + (off)))
#define UARTE_TASKS_STARTRX UART_REG(0x000u)
#define UARTE_TASKS_STARTTX UART_REG(0x008u)
#define UARTE_EVENTS_ENDRX UART_REG(0x110u)
#define UARTE_EVENTS_ENDTX UART_REG(0x120u)
#define UARTE_EVENTS_ERROR UART_REG(0x124u)
#define UARTE_ERRORSRC UART_REG(0x480u)
#define UARTE_ENABLE UART_REG(0x500u)
#define UARTE_BAUDRATE UART_REG(0x524u)
#define UARTE_RXD_PTR UART_REG(0x534u)
#define UARTE_RXD_MAXCNT UART_REG(0x538u)
#define UARTE_TXD_PTR UART_REG(0x544u)
#define UARTE_TXD_MAXCNT UART_REG(0x548u)

#define ENABLE_UARTE 8u
#define PERIPHERAL_CLOCK_HZ 16000000ull

/* 115200 -> 0x01D7E000 and 9600 -> 0x00275000, the values in the product specification's table. */
#define UARTE_BAUDRATE_VALUE \
    ((uint32_t)((((uint64_t)(MCUP_UART_BAUD) << 32) / PERIPHERAL_CLOCK_HZ + 0x800u) & ~(uint64_t)0xFFFu))
_Static_assert(UARTE_BAUDRATE_VALUE > 0u, "nRF UARTE: baud too low");

#define TX_CHUNK 64u
static uint8_t tx_buf[TX_CHUNK]; /* .bss is RAM: EasyDMA can read it */
static volatile uint8_t rx_byte;
static uint8_t rx_armed; /* a one-byte reception is pending in rx_byte */

static void apply_board_init(void)
{
#ifdef MCUP_UART_INIT
    static const uint32_t writes[][3] = MCUP_UART_INIT;
    for (uint32_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        volatile uint32_t *reg = (volatile uint32_t *)(uintptr_t)writes[i][0];
        *reg = (*reg & ~writes[i][1]) | writes[i][2];
    }
#endif
}

static void arm_rx(void)
{
    UARTE_RXD_PTR = (uint32_t)(uintptr_t)&rx_byte;
    UARTE_RXD_MAXCNT = 1u;
    UARTE_EVENTS_ENDRX = 0u;
    UARTE_TASKS_STARTRX = 1u;
    rx_armed = 1u;
}

void mcup_uart_init(void)
{
    UARTE_ENABLE = 0u; /* PSEL and CONFIG may only change while disabled */
    apply_board_init();
    UARTE_BAUDRATE = UARTE_BAUDRATE_VALUE;
    UARTE_EVENTS_ENDTX = 0u;
    UARTE_EVENTS_ERROR = 0u;
    UARTE_ERRORSRC = UARTE_ERRORSRC; /* write 1s to clear */
    UARTE_ENABLE = ENABLE_UARTE;
    rx_armed = 0u;
}

static void send(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        tx_buf[i] = p[i];
    }
    UARTE_TXD_PTR = (uint32_t)(uintptr_t)tx_buf;
    UARTE_TXD_MAXCNT = n;
    UARTE_EVENTS_ENDTX = 0u;
    UARTE_TASKS_STARTTX = 1u;
    while (UARTE_EVENTS_ENDTX == 0u) { /* synchronous: tx_buf is free again on return */
    }
}

void mcup_uart_putc(uint8_t c)
{
    send(&c, 1u);
}

uint8_t mcup_uart_getc(void)
{
    if (!rx_armed) {
        arm_rx();
    }
    while (UARTE_EVENTS_ENDRX == 0u) {
    }
    rx_armed = 0u;
    return rx_byte;
}

void mcup_uart_write(const void *data, uint32_t len)
{
    const uint8_t *p = data;
    while (len > 0u) {
        uint32_t n = len < TX_CHUNK ? len : TX_CHUNK;
        send(p, n);
        p += n;
        len -= n;
    }
}

void mcup_uart_flush(void)
{
    /* send() waits for ENDTX: nothing is left in flight. */
}
