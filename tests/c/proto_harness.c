/*
 * proto_harness.c - the device side of the frame protocol on the host: the firmware's
 * protocol.c, cobs.c, crc32.c, blob.c, slots.c and telemetry.c with the fake --params blob model
 * (fake_model/), under gcc -fsanitize=address,undefined. Built by tests/test_protocol_c.py.
 *
 *     proto_harness crc      print mcup_crc32("123456789") in hex
 *     proto_harness serve    wire bytes on stdin, handled as main.c does (COBS decoder into a
 *                            receive buffer of MCUP_MAX_BODY + 1 bytes, then mcup_proto_handle);
 *                            every byte the device writes to its UART goes to stdout
 *
 * Fakes: the UART writes to stdout; SysTick advances 1000 ticks per read; semihosting "opens"
 * only FAKE_FILE, which holds FILE_INPUTS inputs (an offered path: protocol.c opens no other kind);
 * EXIT is acknowledged and serving goes on.
 * The slot region is a heap buffer, booted (factory blob installed) before serving. Built with
 * -DFAKE_STATIC_PARAMS it is a static-params firmware instead (no slots, no blob messages).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cobs.h"
#include "crc32.h"
#include "model.h"
#include "protocol.h"
#include "semihost.h"
#include "slots.h"
#include "ticks.h"
#include "uart.h"

#define REGION_SIZE (MCUP_SLOT_DATA_OFFSET + 2u * TEST_CAPACITY)
#define FILE_INPUTS 3u

/* --- fakes of the board ------------------------------------------------------------------------ */

void mcup_uart_init(void)
{
}

void mcup_uart_putc(uint8_t c)
{
    putchar(c);
}

uint8_t mcup_uart_getc(void)
{
    return 0u; /* unused: the harness feeds the decoder itself */
}

void mcup_uart_write(const void *data, uint32_t len)
{
    fwrite(data, 1, len, stdout);
}

void mcup_uart_flush(void)
{
}

void mcup_ticks_init(void)
{
}

uint32_t mcup_ticks_now(void)
{
    static uint32_t now;
    now += 1000u;
    return now;
}

static uint32_t file_left; /* bytes left in the fake file */

int32_t mcup_semihost_open_read(const char *path, uint32_t path_len)
{
    static const char fake_file[] = "/tmp/mcuprune-offer-fake/mem.bin"; /* test_protocol_c.py FAKE_FILE */
    if (path_len != sizeof fake_file - 1u || memcmp(path, fake_file, path_len) != 0) {
        return -1;
    }
    file_left = FILE_INPUTS * MCUP_INPUT_SIZE;
    return 7;
}

int32_t mcup_semihost_read(int32_t handle, void *buf, uint32_t len)
{
    if (handle != 7) {
        return -1;
    }
    uint32_t n = len < file_left ? len : file_left;
    uint8_t *p = buf;
    for (uint32_t i = 0; i < n; i++) { /* input k of the file: bytes k*7 + i */
        const uint32_t pos = FILE_INPUTS * MCUP_INPUT_SIZE - file_left + i;
        p[i] = (uint8_t)((pos / MCUP_INPUT_SIZE) * 7u + pos % MCUP_INPUT_SIZE);
    }
    file_left -= n;
    return (int32_t)n;
}

void mcup_semihost_close(int32_t handle)
{
    (void)handle;
}

void mcup_semihost_exit(int code)
{
    exit(code);
}

/* --- main ---------------------------------------------------------------------------------------- */

static uint8_t rx_body[MCUP_MAX_BODY + 1u] __attribute__((aligned(4)));

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "crc") == 0) {
        printf("%08x\n", (unsigned)mcup_crc32(0u, "123456789", 9u));
        return 0;
    }
    if (argc != 2 || strcmp(argv[1], "serve") != 0) {
        fprintf(stderr, "usage: proto_harness crc|serve\n");
        return 2;
    }
    uint8_t *region = aligned_alloc(4096, REGION_SIZE);
    if (region == 0) {
        return 2;
    }
    memset(region, 0, REGION_SIZE);
#ifdef MCUP_PARAMS_BLOB
    mcup_slots_init_region(region, REGION_SIZE);
    if (mcup_slots_boot() != 0) {
        fprintf(stderr, "slots boot failed\n");
        return 2;
    }
#endif
    static mcup_proto_state state;
    state.model_ready = mcup_init() == 0;

    static mcup_cobs_decoder decoder;
    mcup_cobs_decoder_init(&decoder, rx_body, sizeof rx_body);
    int c;
    while ((c = getchar()) != EOF) {
        int r = mcup_cobs_decoder_push(&decoder, (uint8_t)c);
        if (r == MCUP_COBS_MORE) {
            continue;
        }
        if (r == MCUP_COBS_FRAME) {
            uint32_t len = decoder.len > MCUP_MAX_BODY ? MCUP_MAX_BODY : decoder.len;
            mcup_proto_handle(&state, rx_body, len, decoder.total);
        }
        mcup_cobs_decoder_reset(&decoder);
        state.exit_requested = 0; /* acknowledged; keep serving */
    }
    free(region);
    return 0;
}
