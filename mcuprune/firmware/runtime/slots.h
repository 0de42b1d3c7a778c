/*
 * slots.h - the two model-blob slots of an updatable (--params blob) firmware and the update
 * state machine over them (docs/protocol.md, "Slots and their persistence" and "Update").
 *
 * Region [base, base + size): slot record A at base, B at base + 64, slot data A at base + 4096,
 * B at base + 4096 + capacity, capacity = ((size - 4096) / 2) rounded down to 4096.
 *
 * Power-cut safety rests on the order of stores, so every store into the region goes through
 * mcup_store_write(), one call per step of the order:
 *  - slot data before the record that vouches for it;
 *  - a record is rewritten body first (the 32 bytes before its CRC), CRC last: a torn record has a
 *    wrong CRC and reads as EMPTY;
 *  - an update only ever rewrites the record of the slot that is not active; the switch to a new
 *    model is the last byte of the CRC of its VALID record, generation = active + 1.
 * All functions return 0 or an mcup_error_code (protocol.h).
 */
#ifndef MCUP_SLOTS_H
#define MCUP_SLOTS_H

#include <stdint.h>

#define MCUP_SLOT_RECORD_MAGIC 0x4C53434Du /* "MCSL" */
#define MCUP_SLOT_RECORD_STRIDE 64u        /* record B is at base + 64 */
#define MCUP_SLOT_DATA_OFFSET 4096u        /* slot data A is at base + 4096 */
#define MCUP_SLOT_ALIGN 4096u              /* capacity is a multiple of this */
#define MCUP_SLOT_RECORD_CRC_BYTES 32u     /* the record CRC covers the 8 fields before it */
#define MCUP_SLOT_NONE 0xFFu               /* no active slot / no open update */

enum mcup_slot_state {
    MCUP_SLOT_EMPTY = 0, /* never written, torn, or not a record at all */
    MCUP_SLOT_WRITING = 1,
    MCUP_SLOT_VALID = 2,
    MCUP_SLOT_INVALID = 3,
};

/* The record exactly as stored: nine little-endian u32 (Cortex-M and the host test are LE). */
typedef struct {
    uint32_t magic;
    uint32_t state;
    uint32_t generation;
    uint32_t length;
    uint32_t blob_id;
    uint32_t data_crc;
    uint32_t arch_hash;
    uint32_t watermark; /* WRITING: bytes [0, watermark) of the blob are stored */
    uint32_t crc;       /* CRC-32 of the 32 bytes above */
} mcup_slot_record;

/*
 * Copy n bytes to dst inside the slot region and make them land before any later store
 * (memory barrier). The only writer of the region. Weak: the host power-cut test replaces it
 * with one that counts bytes and cuts power mid-copy.
 */
void mcup_store_write(void *dst, const void *src, uint32_t n);

/* Use [base, base + size) as the slot region (4-aligned) and forget all RAM state (a "reset"). */
void mcup_slots_init_region(uint8_t *base, uint32_t size);

/*
 * Read both records and bind the active slot: the VALID one of this architecture with the
 * highest generation whose blob verifies (header, data CRC, mcup_bind). A VALID record of this
 * architecture that does not verify is marked INVALID. With no active slot, the factory blob is
 * copied into slot A as VALID generation 1 and bound. 0 once a blob is bound.
 */
int mcup_slots_boot(void);

/*
 * UPDATE_BEGIN with the 32-byte header `hdr` (any alignment). Opens an update of the inactive
 * slot: resumed if its record is WRITING with this very header, else started afresh.
 * On success *slot is the slot written and *next_offset the first byte the host should send.
 */
int mcup_slots_begin(const uint8_t *hdr, uint8_t *slot, uint32_t *next_offset);

/*
 * UPDATE_CHUNK: store len bytes (any alignment) at blob offset `offset` of the open update.
 * *watermark receives the end of the contiguous prefix stored so far.
 */
int mcup_slots_chunk(uint32_t offset, const uint8_t *data, uint32_t len, uint32_t *watermark);

/* UPDATE_COMMIT: verify the open update and switch to it. A blob that fails is marked INVALID. */
int mcup_slots_commit(uint32_t blob_id);

/* ROLLBACK: switch to the other slot if it is VALID, of this architecture and verifies. */
int mcup_slots_rollback(void);

/* The bound slot, 0 or 1, or MCUP_SLOT_NONE. */
uint8_t mcup_slots_active(void);

/* The slot's record as last read or written; all zeros (EMPTY) if it was not a valid record. */
void mcup_slots_record(uint32_t slot, mcup_slot_record *out);

/* Bytes per slot data area (0 if the region is too small for two slots). */
uint32_t mcup_slots_capacity(void);

/* Signed builds (security.h) only: the security counter below which no blob is committed, booted
 * or rolled back to, and the boot epoch (the high word of the authorization nonce). Both are kept
 * in the slot region and survive power cuts (slots.c, "security record"). */
uint32_t mcup_slots_security_counter(void);
uint32_t mcup_slots_epoch(void);

#endif /* MCUP_SLOTS_H */
