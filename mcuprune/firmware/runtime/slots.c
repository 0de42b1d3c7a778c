/*
 * slots.c - A/B model-blob slots and the update state machine (slots.h, docs/protocol.md).
 * Only --params blob firmware (model.h defines MCUP_PARAMS_BLOB) has slots; in static builds
 * this file compiles to nothing.
 */
#include "model.h"

#ifdef MCUP_PARAMS_BLOB

#include "slots.h"

#include <string.h>

#include "blob.h"
#include "crc32.h"
#include "protocol.h"
#include "security.h"
#if MCUP_SIGNED_UPDATES
#include "signature.h"
#endif

_Static_assert(sizeof(mcup_slot_record) == MCUP_SLOT_RECORD_CRC_BYTES + 4u, "record: 9 u32, no padding");
_Static_assert(sizeof(mcup_slot_record) <= MCUP_SLOT_RECORD_STRIDE, "record must fit its 64 bytes");
_Static_assert(2u * MCUP_SLOT_RECORD_STRIDE <= MCUP_SLOT_DATA_OFFSET, "records must lie before the data");

static uint8_t *region;   /* slot region base, set by mcup_slots_init_region */
static uint32_t capacity; /* bytes per slot data area */
static mcup_slot_record records[2]; /* each record as last read or written (zeros: EMPTY) */
static uint8_t active = MCUP_SLOT_NONE;    /* slot whose blob is bound */
static uint8_t open_slot = MCUP_SLOT_NONE; /* slot of the update in progress */

#if MCUP_SIGNED_UPDATES
/*
 * The security record: the device's security counter (the highest counter of any blob it
 * committed; blobs and rollback targets below it are refused) and its boot epoch (the high word
 * of the authorization nonce, +1 at every boot). Two copies at region + 128 and + 192, each
 * written body first, CRC last, alternately: a torn write leaves the other, older copy, and both
 * values only ever grow, so a power cut never makes them smaller than before the write started.
 */
#define SECURITY_MAGIC 0x4353434Du /* "MCSC" */
#define SECURITY_OFFSET 128u
#define SECURITY_CRC_BYTES 16u
typedef struct {
    uint32_t magic;
    uint32_t seq; /* which copy is newer */
    uint32_t counter;
    uint32_t epoch;
    uint32_t crc; /* CRC-32 of the 16 bytes above */
} security_record;
_Static_assert(SECURITY_OFFSET + 2u * 64u <= MCUP_SLOT_DATA_OFFSET, "security records before the data");
static security_record security;   /* the newest valid copy (zeros: none) */
static uint32_t slot_counter[2];   /* security counter of each slot's blob, once verified */

static uint8_t *security_addr(uint32_t copy)
{
    return region + SECURITY_OFFSET + copy * 64u;
}

static void read_security(void)
{
    memset(&security, 0, sizeof security);
    for (uint32_t copy = 0; copy < 2u; copy++) {
        security_record r;
        memcpy(&r, security_addr(copy), sizeof r);
        if (r.magic == SECURITY_MAGIC && mcup_crc32(0u, &r, SECURITY_CRC_BYTES) == r.crc &&
            (security.magic == 0u || r.seq > security.seq)) {
            security = r;
        }
    }
}

/* Store `counter` and `epoch` (never smaller than before) into the older copy. */
static void write_security(uint32_t counter, uint32_t epoch)
{
    security_record r = security;
    r.magic = SECURITY_MAGIC;
    r.seq = security.seq + 1u;
    r.counter = counter;
    r.epoch = epoch;
    r.crc = mcup_crc32(0u, &r, SECURITY_CRC_BYTES);
    uint8_t *dst = security_addr(r.seq & 1u);
    mcup_store_write(dst, &r, SECURITY_CRC_BYTES);
    mcup_store_write(dst + SECURITY_CRC_BYTES, &r.crc, 4u);
    security = r;
}

/* The lowest counter a blob may have to be served: the stored counter, or the active blob's if a
 * power cut came between the switch to it and the store that raises the stored one. */
static uint32_t counter_floor(void)
{
    const uint32_t active_counter = active == MCUP_SLOT_NONE ? 0u : slot_counter[active];
    return security.counter > active_counter ? security.counter : active_counter;
}

uint32_t mcup_slots_security_counter(void)
{
    return counter_floor();
}

uint32_t mcup_slots_epoch(void)
{
    return security.epoch;
}

/* The signature and the counter of the blob in `slot` (or, slot 2, the factory blob at `blob`). */
static int check_signature(const uint8_t *blob, const mcup_blob_header *h, uint32_t slot)
{
    uint32_t counter = 0;
    const int rc = mcup_sig_check_blob(blob, h->length, h->reserved, &counter);
    if (rc != 0) {
        return rc;
    }
    if (counter < counter_floor()) {
        return MCUP_ERR_OLD_COUNTER;
    }
    if (slot < 2u) {
        slot_counter[slot] = counter;
    }
    return 0;
}

/* A refusal that says nothing about damage: the blob is intact but not acceptable (here). */
static int is_authority_error(int rc)
{
    return rc == MCUP_ERR_UNSIGNED || rc == MCUP_ERR_WRONG_KEY || rc == MCUP_ERR_BAD_SIGNATURE ||
           rc == MCUP_ERR_OLD_COUNTER;
}
#endif /* MCUP_SIGNED_UPDATES */

__attribute__((weak)) void mcup_store_write(void *dst, const void *src, uint32_t n)
{
    memcpy(dst, src, n);
    /* The compiler may not move later stores above this one, nor may the core retire them first. */
#if defined(__arm__)
    __asm__ volatile("dsb" ::: "memory");
#else
    __asm__ volatile("" ::: "memory");
#endif
}

static uint8_t *record_addr(uint32_t slot)
{
    return region + slot * MCUP_SLOT_RECORD_STRIDE;
}

static uint8_t *slot_data(uint32_t slot)
{
    return region + MCUP_SLOT_DATA_OFFSET + slot * capacity;
}

static uint32_t record_crc(const mcup_slot_record *r)
{
    return mcup_crc32(0u, r, MCUP_SLOT_RECORD_CRC_BYTES);
}

static void read_record(uint32_t slot)
{
    mcup_slot_record r;
    memcpy(&r, record_addr(slot), sizeof r);
    if (r.magic != MCUP_SLOT_RECORD_MAGIC || record_crc(&r) != r.crc || r.state > MCUP_SLOT_INVALID) {
        memset(&r, 0, sizeof r); /* torn, never written, or garbage: EMPTY */
    }
    records[slot] = r;
}

/* Body first: from the first byte that differs from the old body on, the old CRC mismatches,
 * so the record reads as EMPTY until store_record_crc. */
static void store_record_body(uint32_t slot, mcup_slot_record *r)
{
    r->magic = MCUP_SLOT_RECORD_MAGIC;
    r->crc = record_crc(r);
    mcup_store_write(record_addr(slot), r, MCUP_SLOT_RECORD_CRC_BYTES);
}

/* CRC last: the record takes effect with the last byte of this store. */
static void store_record_crc(uint32_t slot, const mcup_slot_record *r)
{
    mcup_store_write(record_addr(slot) + MCUP_SLOT_RECORD_CRC_BYTES, &r->crc, 4u);
    records[slot] = *r;
}

static void store_record(uint32_t slot, mcup_slot_record *r)
{
    store_record_body(slot, r);
    store_record_crc(slot, r);
}

static void mark_invalid(uint32_t slot)
{
    mcup_slot_record r = records[slot];
    r.state = MCUP_SLOT_INVALID;
    store_record(slot, &r);
}

/*
 * 0 if the slot holds a blob this firmware can run and that matches its record: header, record
 * fields, architecture, data CRC, mcup_bind's table and content checks. bind != 0 also binds it.
 */
static int check_slot(uint32_t slot, int bind, mcup_blob_header *h)
{
    const mcup_slot_record *r = &records[slot];
    const uint8_t *blob = slot_data(slot);
    int rc = mcup_blob_parse_header(blob, capacity, h);
    if (rc != 0) {
        return rc;
    }
    if (h->length != r->length || h->blob_id != r->blob_id || h->data_crc != r->data_crc ||
        h->arch_hash != r->arch_hash) {
        return MCUP_ERR_BAD_BLOB;
    }
    if (h->arch_hash != (uint32_t)MCUP_ARCH_HASH) {
        return MCUP_ERR_ARCH_MISMATCH;
    }
    if (!mcup_blob_data_ok(blob, h)) {
        return MCUP_ERR_BAD_BLOB_CRC;
    }
#if MCUP_SIGNED_UPDATES
    /* Before anything reads the arrays: what is not the owner's is never bound. */
    const int sig = check_signature(blob, h, slot);
    if (sig != 0) {
        return sig;
    }
#endif
    if (mcup_bind(blob, h, bind) != 0) {
        return MCUP_ERR_BAD_BLOB;
    }
    return 0;
}

/* Start writing `slot` from scratch: record WRITING with watermark 32; the header is stored
 * while the record is torn (body written, CRC not yet), so a cut leaves it EMPTY. */
static void open_write(uint32_t slot, const uint8_t *hdr, const mcup_blob_header *h)
{
    mcup_slot_record r;
    memset(&r, 0, sizeof r);
    r.state = MCUP_SLOT_WRITING;
    r.length = h->length;
    r.blob_id = h->blob_id;
    r.data_crc = h->data_crc;
    r.arch_hash = h->arch_hash;
    r.watermark = MCUP_BLOB_HEADER_BYTES;
    store_record_body(slot, &r);
    mcup_store_write(slot_data(slot), hdr, MCUP_BLOB_HEADER_BYTES);
    store_record_crc(slot, &r);
}

/* Data before the record that counts it: the watermark moves only after the bytes are stored. */
static uint32_t write_data(uint32_t slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    mcup_store_write(slot_data(slot) + offset, data, len);
    mcup_slot_record r = records[slot];
    if (offset <= r.watermark && offset + len > r.watermark) {
        r.watermark = offset + len;
        store_record(slot, &r);
    }
    return records[slot].watermark;
}

/* The switch: once this record's CRC is stored, `slot` is the newest VALID slot. */
static void seal(uint32_t slot, uint32_t generation)
{
    mcup_slot_record r = records[slot];
    r.state = MCUP_SLOT_VALID;
    r.generation = generation;
    store_record(slot, &r);
}

/* The blob compiled into flash, copied into slot A as VALID generation 1 and bound. */
static int install_factory(void)
{
    const uint8_t *blob = mcup_param_factory_blob;
    mcup_blob_header h;
    int rc = mcup_blob_parse_header(blob, capacity, &h);
    if (rc != 0) {
        return rc;
    }
    /* Check it in flash first: a broken factory blob must not be copied again at every boot. */
    if (h.length != (uint32_t)MCUP_FACTORY_BLOB_BYTES || h.arch_hash != (uint32_t)MCUP_ARCH_HASH ||
        !mcup_blob_data_ok(blob, &h)) {
        return MCUP_ERR_BAD_BLOB;
    }
#if MCUP_SIGNED_UPDATES
    rc = check_signature(blob, &h, 2u); /* below the security counter: not installed again */
    if (rc != 0) {
        return rc;
    }
#endif
    if (mcup_bind(blob, &h, 0) != 0) {
        return MCUP_ERR_BAD_BLOB;
    }
    open_write(0u, blob, &h);
    (void)write_data(0u, MCUP_BLOB_HEADER_BYTES, blob + MCUP_BLOB_HEADER_BYTES, h.length - MCUP_BLOB_HEADER_BYTES);
    seal(0u, 1u);
    rc = check_slot(0u, 1, &h);
    if (rc != 0) {
        return rc;
    }
    active = 0u;
    return 0;
}

void mcup_slots_init_region(uint8_t *base, uint32_t size)
{
    region = base;
    capacity = 0u;
    if (base != 0 && size > MCUP_SLOT_DATA_OFFSET) {
        capacity = (size - MCUP_SLOT_DATA_OFFSET) / 2u / MCUP_SLOT_ALIGN * MCUP_SLOT_ALIGN;
    }
    memset(records, 0, sizeof records);
    active = MCUP_SLOT_NONE;
    open_slot = MCUP_SLOT_NONE;
}

int mcup_slots_boot(void)
{
    active = MCUP_SLOT_NONE;
    open_slot = MCUP_SLOT_NONE;
    if (capacity == 0u) {
        return MCUP_ERR_MODEL;
    }
#if MCUP_SIGNED_UPDATES
    read_security();
    slot_counter[0] = slot_counter[1] = 0u;
    /* A new epoch before any nonce is handed out: an authorization recorded before this boot is
     * stale. A cut tearing this store leaves the old epoch, which no nonce of this boot used. */
    write_security(security.counter, security.epoch + 1u);
#endif
    read_record(0u);
    read_record(1u);
    /* Newest first; on equal generations A first. */
    const uint32_t first = records[1].generation > records[0].generation ? 1u : 0u;
    for (uint32_t k = 0; k < 2u; k++) {
        const uint32_t slot = k == 0u ? first : 1u - first;
        if (records[slot].state != MCUP_SLOT_VALID || records[slot].arch_hash != (uint32_t)MCUP_ARCH_HASH) {
            continue; /* blobs of another architecture stay as they are, for that firmware */
        }
        mcup_blob_header h;
        const int rc = check_slot(slot, 1, &h);
        if (rc == 0) {
            active = (uint8_t)slot;
            return 0;
        }
#if MCUP_SIGNED_UPDATES
        if (is_authority_error(rc)) {
            continue; /* intact, but not this owner's or below the counter: never served, kept as is */
        }
#endif
        mark_invalid(slot); /* its data is damaged: it can never verify again */
    }
    return install_factory();
}

int mcup_slots_begin(const uint8_t *hdr, uint8_t *slot, uint32_t *next_offset)
{
    mcup_blob_header h;
    int rc = mcup_blob_parse_header(hdr, capacity, &h);
    if (rc != 0) {
        return rc;
    }
    if (h.arch_hash != (uint32_t)MCUP_ARCH_HASH) {
        return MCUP_ERR_ARCH_MISMATCH;
    }
    const uint32_t target = active == 1u ? 0u : 1u;
    const mcup_slot_record *r = &records[target];
    /* The header bytes in the slot are the ones the record's CRC vouched for (open_write). */
    const int resume = r->state == MCUP_SLOT_WRITING && r->length == h.length && r->blob_id == h.blob_id &&
                       r->data_crc == h.data_crc && r->arch_hash == h.arch_hash &&
                       r->watermark >= MCUP_BLOB_HEADER_BYTES && r->watermark <= r->length &&
                       memcmp(slot_data(target), hdr, MCUP_BLOB_HEADER_BYTES) == 0;
    if (!resume) {
        open_write(target, hdr, &h);
    }
    open_slot = (uint8_t)target;
    *slot = (uint8_t)target;
    *next_offset = records[target].watermark;
    return 0;
}

int mcup_slots_chunk(uint32_t offset, const uint8_t *data, uint32_t len, uint32_t *watermark)
{
    if (open_slot == MCUP_SLOT_NONE) {
        return MCUP_ERR_NO_UPDATE;
    }
    const uint32_t length = records[open_slot].length;
    if (len == 0u || offset < MCUP_BLOB_HEADER_BYTES || offset > length || len > length - offset) {
        return MCUP_ERR_BAD_LENGTH;
    }
    *watermark = write_data(open_slot, offset, data, len);
    return 0;
}

/*
 * The switch: seal `slot` VALID with `generation` (its record CRC is the last store, so a power cut
 * leaves either the old or the new model active), close any open update and bind the slot.
 * `h` passed the same checks just before; `err` is returned if binding fails all the same.
 */
static int switch_to(uint32_t slot, uint32_t generation, const mcup_blob_header *h, int err)
{
    seal(slot, generation);
    open_slot = MCUP_SLOT_NONE;
    if (mcup_bind(slot_data(slot), h, 1) != 0) {
        return err;
    }
    active = (uint8_t)slot;
    return 0;
}

int mcup_slots_commit(uint32_t blob_id)
{
    if (open_slot == MCUP_SLOT_NONE || records[open_slot].blob_id != blob_id) {
        return MCUP_ERR_NO_UPDATE;
    }
    const uint32_t slot = open_slot;
    if (records[slot].watermark != records[slot].length) {
        return MCUP_ERR_INCOMPLETE;
    }
    mcup_blob_header h;
    int rc = check_slot(slot, 0, &h);
    if (rc != 0) {
        /* What was received is not this blob: start over rather than resume into it. */
        mark_invalid(slot);
        open_slot = MCUP_SLOT_NONE;
        return rc;
    }
    const uint32_t generation = (active == MCUP_SLOT_NONE ? 0u : records[active].generation) + 1u;
    rc = switch_to(slot, generation, &h, MCUP_ERR_BAD_BLOB);
#if MCUP_SIGNED_UPDATES
    /* After the switch: a cut before this store leaves the new blob active, and counter_floor()
     * counts the active blob's counter, so nothing below it is accepted in the meantime. */
    if (rc == 0 && slot_counter[slot] > security.counter) {
        write_security(slot_counter[slot], security.epoch);
    }
#endif
    return rc;
}

int mcup_slots_rollback(void)
{
    if (active == MCUP_SLOT_NONE) {
        return MCUP_ERR_NO_ROLLBACK;
    }
    const uint32_t other = 1u - active;
    if (records[other].state != MCUP_SLOT_VALID || records[other].arch_hash != (uint32_t)MCUP_ARCH_HASH) {
        return MCUP_ERR_NO_ROLLBACK;
    }
    mcup_blob_header h;
    const int rc = check_slot(other, 0, &h);
#if MCUP_SIGNED_UPDATES
    if (rc == MCUP_ERR_OLD_COUNTER) {
        return rc; /* the rollback would go below the security counter */
    }
#endif
    if (rc != 0) {
        return MCUP_ERR_NO_ROLLBACK;
    }
    return switch_to(other, records[active].generation + 1u, &h, MCUP_ERR_NO_ROLLBACK);
}

uint8_t mcup_slots_active(void)
{
    return active;
}

void mcup_slots_record(uint32_t slot, mcup_slot_record *out)
{
    *out = records[slot & 1u];
}

uint32_t mcup_slots_capacity(void)
{
    return capacity;
}

#endif /* MCUP_PARAMS_BLOB */
