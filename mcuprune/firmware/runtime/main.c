/*
 * main.c - boot banner, model init (--params blob: bind the active slot first), then serve
 * frames from the UART forever.
 * Garbage on the line never stops the loop: the COBS decoder cannot overrun its buffer and
 * mcup_proto_handle() answers or drops every frame.
 */
#include "cobs.h"
#include "model.h"
#include "protocol.h"
#include "security.h"
#include "semihost.h"
#include "ticks.h"
#include "uart.h"

#define STR2(x) #x
#define STR(x) STR2(x)

/* A text line for humans and logs; the 0x00 after it ends it as a (non-)frame for the host. */
static const char banner[] = "mcuprune fw " STR(MCUP_FW_VERSION_MAJOR) "." STR(MCUP_FW_VERSION_MINOR)
                             " proto " STR(MCUP_PROTO_VERSION) " board " MCUP_BOARD_NAME
                             " model " MCUP_MODEL_NAME "\r\n";
static const char init_failed[] = "mcuprune: mcup_init failed, INFER will answer ERROR\r\n";

#ifdef MCUP_PARAMS_BLOB
#include "slots.h"

#if !defined(MCUP_SLOTS_BASE) || !defined(MCUP_SLOTS_SIZE)
#error "--params blob firmware needs MCUP_SLOTS_BASE and MCUP_SLOTS_SIZE (the board file's [slots])"
#endif
static const char no_blob[] = "mcuprune: no model blob could be bound, INFER will answer ERROR\r\n";
/* The second line says who may change this device (security.h). */
#if MCUP_SIGNED_UPDATES
static const char authority[] = "mcuprune: signed updates, key " MCUP_UPDATE_KEY_ID_HEX
                                "; updates, rollback, exit and file reads need its authorization\r\n";
#else
static const char authority[] = "mcuprune: development build (--unsigned-updates): updates unsigned, "
                                "commands unauthenticated\r\n";
#endif
#endif

/* One byte more than the largest request body: a frame that fills it is too long. Aligned for INFER. */
static uint8_t rx_body[MCUP_MAX_REQUEST_BODY + 1u] __attribute__((aligned(4)));

int main(void)
{
    static const uint8_t delimiter = 0u;
    static mcup_proto_state state;
    static mcup_cobs_decoder decoder;

    mcup_uart_init();
    mcup_ticks_init();
    mcup_uart_write(banner, sizeof banner - 1u);
    mcup_uart_write(&delimiter, 1u);

#ifdef MCUP_PARAMS_BLOB
    mcup_uart_write(authority, sizeof authority - 1u);
    mcup_uart_write(&delimiter, 1u);
    /* Bind first: mcup_init may look at the bound layers. */
    mcup_slots_init_region((uint8_t *)MCUP_SLOTS_BASE, MCUP_SLOTS_SIZE);
    if (mcup_slots_boot() != 0) {
        mcup_uart_write(no_blob, sizeof no_blob - 1u); /* an UPDATE can still install one */
        mcup_uart_write(&delimiter, 1u);
    }
#endif
    state.model_ready = mcup_init() == 0;
    if (!state.model_ready) {
        mcup_uart_write(init_failed, sizeof init_failed - 1u);
        mcup_uart_write(&delimiter, 1u);
    }

    mcup_cobs_decoder_init(&decoder, rx_body, sizeof rx_body);
    for (;;) {
        int r = mcup_cobs_decoder_push(&decoder, mcup_uart_getc());
        if (r == MCUP_COBS_MORE) {
            continue;
        }
        if (r == MCUP_COBS_FRAME) {
            /* A body that filled rx_body is reported as longer than MCUP_MAX_REQUEST_BODY. */
            uint32_t len = decoder.len > MCUP_MAX_REQUEST_BODY ? MCUP_MAX_REQUEST_BODY : decoder.len;
            mcup_proto_handle(&state, rx_body, len, decoder.total);
        } /* EMPTY and BAD (undecodable) frames are dropped silently */
        mcup_cobs_decoder_reset(&decoder);
        if (state.exit_requested) {
            mcup_uart_flush();
            return state.exit_code;
        }
    }
}
