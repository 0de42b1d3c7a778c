/*
 * cobs.h - Consistent Overhead Byte Stuffing, streaming in both directions.
 *
 * COBS turns a byte string into one without 0x00 (at most 1 extra byte per 254, plus 1), so
 * 0x00 can delimit frames on the wire: COBS(body) 0x00. Both directions work a byte at a time,
 * so the firmware needs no buffer for the encoded form:
 *  - mcup_cobs_writer holds at most one 254-byte block before handing it to `put`;
 *  - mcup_cobs_decoder writes decoded bytes into a caller-owned buffer and never past `cap`;
 *    it keeps counting past `cap`, so an over-long frame is detected and its head kept.
 * The encoding is the canonical one (a final full block has no trailing 0x01), the same bytes
 * mcuprune/protocol.py produces.
 */
#ifndef MCUP_COBS_H
#define MCUP_COBS_H

#include <stdint.h>

/* Largest encoded size of `n` bytes, without the 0x00 delimiter. */
#define MCUP_COBS_MAX_ENCODED(n) ((n) + (n) / 254u + 1u)

typedef void (*mcup_cobs_put_fn)(const void *data, uint32_t len);

typedef struct {
    mcup_cobs_put_fn put;
    uint8_t block[254]; /* data bytes of the block being built */
    uint32_t n;         /* bytes in block, 0..254 */
} mcup_cobs_writer;

void mcup_cobs_writer_begin(mcup_cobs_writer *w, mcup_cobs_put_fn put);
void mcup_cobs_writer_push(mcup_cobs_writer *w, const void *data, uint32_t len);
/* Emit the last block and the 0x00 delimiter. */
void mcup_cobs_writer_end(mcup_cobs_writer *w);

enum {
    MCUP_COBS_MORE = 0,  /* byte consumed, frame not finished */
    MCUP_COBS_FRAME = 1, /* delimiter: a well-formed frame of d->total bytes ended */
    MCUP_COBS_EMPTY = 2, /* delimiter with nothing before it: ignore */
    MCUP_COBS_BAD = 3,   /* delimiter inside a block: the frame is truncated or not COBS */
};

typedef struct {
    uint8_t *buf;          /* caller's buffer for decoded bytes */
    uint32_t cap;          /* its size */
    uint32_t len;          /* decoded bytes stored, <= cap */
    uint32_t total;        /* decoded bytes seen, may exceed cap (saturates at UINT32_MAX) */
    uint8_t remaining;     /* data bytes left in the current block */
    uint8_t zero_pending;  /* current block ends in an implicit 0x00 if another block follows */
    uint8_t started;       /* at least one non-delimiter byte since the last reset */
} mcup_cobs_decoder;

void mcup_cobs_decoder_init(mcup_cobs_decoder *d, uint8_t *buf, uint32_t cap);
/* Forget the current frame (call after handling a FRAME/EMPTY/BAD result). */
void mcup_cobs_decoder_reset(mcup_cobs_decoder *d);
/* Feed one wire byte; returns one of the MCUP_COBS_* results above. */
int mcup_cobs_decoder_push(mcup_cobs_decoder *d, uint8_t byte);

#endif /* MCUP_COBS_H */
