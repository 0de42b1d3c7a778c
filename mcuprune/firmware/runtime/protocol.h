/*
 * protocol.h - the host <-> device frame protocol (docs/protocol.md; Python twin in
 * mcuprune/protocol.py).
 *
 * Wire: COBS(body) 0x00.  body = version u8 | type u8 | seq u16 LE | payload | crc32 u32 LE,
 * CRC-32/IEEE over version..payload. Replies carry type | 0x80 and the request's seq; ERROR is
 * type 0xFF. All multi-byte fields are little-endian.
 */
#ifndef MCUP_PROTOCOL_H
#define MCUP_PROTOCOL_H

#include <stdint.h>

#include "telemetry.h"

/* No integer suffixes: main.c also turns these into the banner text. */
#define MCUP_PROTO_VERSION 1
#define MCUP_FW_VERSION_MAJOR 0
#define MCUP_FW_VERSION_MINOR 1

#define MCUP_MAX_PAYLOAD 2048u
#define MCUP_FRAME_HEADER 4u                                      /* version, type, seq */
#define MCUP_FRAME_OVERHEAD (MCUP_FRAME_HEADER + 4u)              /* + crc32 */
#define MCUP_MAX_BODY (MCUP_MAX_PAYLOAD + MCUP_FRAME_OVERHEAD)
/* Requests may be longer than MCUP_MAX_PAYLOAD by as much as an INFER of a model with a larger input
 * (an image of 96x96x3 is 27,648 bytes): the receive buffer is sized by this, replies are not. Used
 * where model.h is included. */
#define MCUP_MAX_REQUEST_PAYLOAD \
    ((uint32_t)MCUP_INPUT_SIZE > MCUP_MAX_PAYLOAD ? (uint32_t)MCUP_INPUT_SIZE : MCUP_MAX_PAYLOAD)
#define MCUP_MAX_REQUEST_BODY (MCUP_MAX_REQUEST_PAYLOAD + MCUP_FRAME_OVERHEAD)

enum mcup_msg_type {
    MCUP_MSG_INFO = 0x01,  /* () -> version, sizes, hash, names */
    MCUP_MSG_INFER = 0x02, /* (int8 input[MCUP_INPUT_SIZE]) -> RESULT */
    /* 0x03..0x09: --params blob firmware only (static builds answer UNKNOWN_TYPE). */
    MCUP_MSG_TELEMETRY = 0x03,     /* (u8 mode) -> u8 mode, last telemetry record */
    MCUP_MSG_CAPTURE = 0x04,       /* (u8 which, u16 count) -> u8 which, u16 count, u16 bytes */
    MCUP_MSG_UPDATE_BEGIN = 0x05,  /* (blob header[32]) -> u8 slot, u32 next offset, u16 largest chunk */
    MCUP_MSG_UPDATE_CHUNK = 0x06,  /* (u32 offset, data[1..2044]) -> u32 watermark */
    MCUP_MSG_UPDATE_COMMIT = 0x07, /* (u32 blob id) -> u8 active slot, u32 generation, u32 blob id */
    MCUP_MSG_ROLLBACK = 0x08,      /* () -> as UPDATE_COMMIT */
    MCUP_MSG_LABEL = 0x09,         /* (u32 sample id, u8 class) -> u32 sample id, u8 class, u8 status,
                                    * u8 served top1, u32 labeled, u32 correct */
    MCUP_MSG_INFER_FILE = 0x0E, /* (u32 count, host path\0) -> count RESULTs, then u32 done.
                                 * Emulation only: inputs come through semihosting file reads. */
    MCUP_MSG_EXIT = 0x0F,  /* (u8 code) -> ack, then semihosting exit(code) */
    MCUP_MSG_REPLY = 0x80, /* reply type = request type | MCUP_MSG_REPLY */
    MCUP_MSG_ERROR = 0xFF, /* (u8 error code, u8 offending type) */
};

enum mcup_error_code {
    MCUP_ERR_BAD_CRC = 1,
    MCUP_ERR_BAD_VERSION = 2,
    MCUP_ERR_UNKNOWN_TYPE = 3,
    MCUP_ERR_BAD_LENGTH = 4,
    MCUP_ERR_TOO_LONG = 5,
    MCUP_ERR_MODEL = 6, /* mcup_init() or mcup_run() returned non-zero */
    MCUP_ERR_IO = 7,    /* INFER_FILE: the host file could not be opened or was too short */
    MCUP_ERR_ARCH_MISMATCH = 8, /* UPDATE_BEGIN: blob for another architecture (re-flash needed) */
    MCUP_ERR_BAD_BLOB = 9,      /* header invalid, or array table/contents invalid at commit */
    MCUP_ERR_BAD_BLOB_CRC = 10, /* UPDATE_COMMIT: data CRC mismatch */
    MCUP_ERR_NO_UPDATE = 11,    /* UPDATE_CHUNK/COMMIT with no update open, or another blob id */
    MCUP_ERR_INCOMPLETE = 12,   /* UPDATE_COMMIT before the watermark reached the length */
    MCUP_ERR_NO_ROLLBACK = 13,  /* ROLLBACK with no other valid slot */
    MCUP_ERR_NO_MONITOR = 14,   /* reserved */
    /* Signed builds (security.h, signature.h): */
    MCUP_ERR_UNSIGNED = 15,      /* UPDATE_COMMIT: the blob carries no signature */
    MCUP_ERR_WRONG_KEY = 16,     /* UPDATE_COMMIT: the blob is signed with another key */
    MCUP_ERR_BAD_SIGNATURE = 17, /* UPDATE_COMMIT: the signature does not verify (blob changed or forged) */
    MCUP_ERR_OLD_COUNTER = 18,   /* UPDATE_COMMIT, ROLLBACK: security counter below the device's */
    MCUP_ERR_REPLAYED = 19,      /* authorization for another nonce (recorded, or the device restarted) */
    MCUP_ERR_UNAUTHORISED = 20,  /* a command that needs authority came without a valid authorization */
    MCUP_ERR_BAD_LABEL = 21,     /* LABEL: the class is not one of the model's MCUP_OUTPUT_SIZE outputs */
};

/* LABEL: how many of the last served samples (sample id, top1) the device remembers. The id is the
 * telemetry count of the sample's RESULT, so the ring costs RAM only, never a RESULT byte. */
#define MCUP_LABEL_RING 256u

/* Params modes in INFO. */
#define MCUP_PARAMS_MODE_STATIC 0u
#define MCUP_PARAMS_MODE_BLOB 1u

typedef struct {
    int model_ready;     /* mcup_init() succeeded (blob builds also need a bound blob to infer) */
    int exit_requested;  /* an EXIT was acknowledged: main leaves with exit_code */
    int exit_code;
    /* --params blob firmware only: */
    uint8_t telemetry_on;      /* RESULTs carry the telemetry section */
    uint8_t capture_which;     /* 0 input, 1 penultimate activations */
    uint16_t capture_left;     /* RESULTs still to carry the capture section */
    mcup_telemetry telemetry;  /* the last inference's record; count = inferences since boot */
    uint32_t labeled;          /* LABELs since boot whose sample was still in the ring */
    uint32_t correct;          /* ... and whose class was the top1 served for it */
} mcup_proto_state;

/*
 * Handle one COBS-decoded body of `total` bytes, of which the first `len` (<= total) are in
 * `body`; total > len means the frame was longer than the receive buffer. Replies on the UART.
 * Bodies too short to hold a seq (< 4 bytes) are dropped silently; every other bad body gets an
 * ERROR reply. `body` must be 4-byte aligned: INFER hands body + 4 to mcup_run().
 */
void mcup_proto_handle(mcup_proto_state *st, const uint8_t *body, uint32_t len, uint32_t total);

/* Send one frame: header, payload, CRC, COBS-encoded, then 0x00. */
void mcup_proto_send(uint8_t type, uint16_t seq, const uint8_t *payload, uint32_t len);

#endif /* MCUP_PROTOCOL_H */
