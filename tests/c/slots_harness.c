/*
 * slots_harness.c - host test of firmware/runtime/slots.c: the A/B slot state machine and its
 * power-cut safety. Built by tests/test_slots_c.py with gcc -fsanitize=address,undefined,
 * together with slots.c, blob.c, crc32.c, telemetry.c, the fake model (fake_model/) and the
 * blobs that test packs with mcuprune.codegen.blob (test_blobs.c).
 *
 *     slots_harness NAME    run one test; prints "ok NAME ..." and exits 0, or exits 1
 *
 * The slot region is an mmap'd buffer. This file replaces slots.c's weak mcup_store_write():
 * every byte stored into the region goes through it, so it can
 *  - cut the power after any number of bytes (longjmp out of the update, mid-memcpy included),
 *  - refuse a store into the active slot (its record or data) at any time,
 *  - with the region read-only outside it, show that slots.c stores nothing any other way.
 * A "reboot" forgets all RAM state (mcup_slots_init_region, fake_reset) and runs
 * mcup_slots_boot() on the same memory.
 */
#define _DEFAULT_SOURCE /* mmap flags and mprotect under -std=c11 */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "blob.h"
#include "crc32.h"
#include "model.h"
#include "protocol.h"
#include "slots.h"
#include "test_blobs.h"

#define REGION_SIZE (MCUP_SLOT_DATA_OFFSET + 2u * TEST_CAPACITY)
#define CHUNK 97u /* odd, so chunks land at unaligned offsets */

static uint8_t *region;
static long cut_context = -1; /* the cut point being tested, for failure messages */

static void check_at(int ok, const char *what, int line)
{
    if (!ok) {
        fprintf(stderr, "slots_harness.c:%d: check failed: %s (cut point %ld)\n", line, what, cut_context);
        exit(1);
    }
}
#define CHECK(cond) check_at((cond) != 0, #cond, __LINE__)

/* --- the store interposer ------------------------------------------------------------------ */

static long cut_after = -1; /* bytes that may still be stored before the power fails; -1: never */
static long stored;         /* bytes stored since the last run_with_cut / count reset */
static int guarded;         /* the region is read-only outside mcup_store_write */
static jmp_buf power_fail;

static void set_writable(int writable)
{
    CHECK(mprotect(region, REGION_SIZE, writable ? PROT_READ | PROT_WRITE : PROT_READ) == 0);
}

static int overlaps(uintptr_t a, uintptr_t n, uintptr_t lo, uintptr_t hi)
{
    return a < hi && a + n > lo;
}

void mcup_store_write(void *dst, const void *src, uint32_t n)
{
    const uintptr_t a = (uintptr_t)dst;
    const uintptr_t base = (uintptr_t)region;
    CHECK(a >= base && n <= REGION_SIZE && a - base <= REGION_SIZE - n);
    const uint8_t act = mcup_slots_active();
    if (act <= 1u) { /* the active slot's record and data are never written */
        const uintptr_t rec = base + act * MCUP_SLOT_RECORD_STRIDE;
        const uintptr_t data = base + MCUP_SLOT_DATA_OFFSET + act * mcup_slots_capacity();
        CHECK(!overlaps(a, n, rec, rec + MCUP_SLOT_RECORD_STRIDE));
        CHECK(!overlaps(a, n, data, data + mcup_slots_capacity()));
    }
    if (guarded) {
        set_writable(1);
    }
    uint8_t *d = dst;
    const uint8_t *s = src;
    for (uint32_t i = 0; i < n; i++) {
        if (cut_after == 0) {
            if (guarded) {
                set_writable(0);
            }
            longjmp(power_fail, 1); /* the power fails before byte i */
        }
        d[i] = s[i];
        stored++;
        if (cut_after > 0) {
            cut_after--;
        }
    }
    if (guarded) {
        set_writable(0);
    }
}

/* Run `action` with the power failing after `budget` stored bytes (-1: never). 1 if it failed. */
static int run_with_cut(void (*action)(void), long budget)
{
    stored = 0;
    cut_after = budget;
    if (setjmp(power_fail) != 0) {
        cut_after = -1;
        return 1;
    }
    action();
    cut_after = -1;
    return 0;
}

/* --- helpers --------------------------------------------------------------------------------- */

static void power_on(void)
{
    fake_reset();
    mcup_slots_init_region(region, REGION_SIZE);
}

static int reboot(void)
{
    power_on();
    return mcup_slots_boot();
}

static const uint8_t *slot_data(uint32_t slot)
{
    return region + MCUP_SLOT_DATA_OFFSET + slot * mcup_slots_capacity();
}

static long resumed; /* full_update calls that resumed past the header */

static uint32_t blob_id(const test_blob *b)
{
    return mcup_get_u32(b->data + 16);
}

static mcup_slot_record record(uint32_t slot)
{
    mcup_slot_record r;
    mcup_slots_record(slot, &r);
    return r;
}

/* The blob bound is `b`, in place in the active slot's data area. */
static int serving(const test_blob *b)
{
    const uint8_t act = mcup_slots_active();
    const uint8_t *p = fake_bound_blob();
    return act <= 1u && mcup_is_bound() && p == slot_data(act) && memcmp(p, b->data, b->len) == 0;
}

/* Send b[from..] in CHUNK pieces, in order; every chunk must move the watermark to its end. */
static void send_from(const test_blob *b, uint32_t from)
{
    for (uint32_t off = from; off < b->len; off += CHUNK) {
        const uint32_t n = b->len - off < CHUNK ? b->len - off : CHUNK;
        uint32_t wm = 0;
        CHECK(mcup_slots_chunk(off, b->data + off, n, &wm) == 0);
        CHECK(wm == off + n);
    }
}

/* What the host does: begin (maybe resuming), send from the offset the device asks for, commit. */
static uint32_t full_update(const test_blob *b)
{
    uint8_t slot = 9;
    uint32_t next = 0;
    CHECK(mcup_slots_begin(b->data, &slot, &next) == 0);
    CHECK(slot <= 1u && slot != mcup_slots_active());
    CHECK(next >= MCUP_BLOB_HEADER_BYTES && next <= b->len);
    /* The device claims to hold [0, next): it must. */
    CHECK(memcmp(slot_data(slot), b->data, next) == 0);
    if (next > MCUP_BLOB_HEADER_BYTES) {
        resumed++;
    }
    send_from(b, next);
    CHECK(mcup_slots_commit(blob_id(b)) == 0);
    CHECK(mcup_slots_active() == slot);
    return next;
}

static void fill_garbage(uint8_t *p, uint32_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1u;
    for (uint32_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
}

/* Store a record with a correct CRC directly (test setup, as a previous firmware might have). */
static void forge_record(uint32_t slot, uint32_t state, uint32_t generation, const test_blob *b)
{
    mcup_slot_record r;
    memset(&r, 0, sizeof r);
    r.magic = MCUP_SLOT_RECORD_MAGIC;
    r.state = state;
    r.generation = generation;
    r.length = b->len;
    r.blob_id = blob_id(b);
    r.data_crc = mcup_get_u32(b->data + 24);
    r.arch_hash = mcup_get_u32(b->data + 8);
    r.watermark = b->len;
    r.crc = mcup_crc32(0u, &r, MCUP_SLOT_RECORD_CRC_BYTES);
    memcpy(region + slot * MCUP_SLOT_RECORD_STRIDE, &r, sizeof r);
}

static void fresh_device(void)
{
    memset(region, 0, REGION_SIZE);
    CHECK(reboot() == 0);
    CHECK(serving(&blob_factory));
}

/* --- functional tests ------------------------------------------------------------------------ */

static void test_crc_check_value(void)
{
    CHECK(mcup_crc32(0u, "123456789", 9u) == 0xCBF43926u);
    CHECK(mcup_crc32(mcup_crc32(0u, "12345", 5u), "6789", 4u) == 0xCBF43926u);
}

static void test_region_layout(void)
{
    power_on();
    CHECK(mcup_slots_capacity() == TEST_CAPACITY);
    mcup_slots_init_region(region, MCUP_SLOT_DATA_OFFSET + 2u * 4096u + 4095u);
    CHECK(mcup_slots_capacity() == 4096u); /* rounded down to 4096 */
    mcup_slots_init_region(region, MCUP_SLOT_DATA_OFFSET + 8191u);
    CHECK(mcup_slots_capacity() == 0u);
    CHECK(mcup_slots_boot() != 0 && !mcup_is_bound()); /* too small for two slots */
    mcup_slots_init_region(0, REGION_SIZE);
    CHECK(mcup_slots_capacity() == 0u && mcup_slots_boot() != 0);

    fresh_device();
    /* Record A at base, data A at base + 4096, exactly as docs/protocol.md lays them out. */
    mcup_slot_record r;
    memcpy(&r, region, sizeof r);
    CHECK(r.magic == MCUP_SLOT_RECORD_MAGIC && r.state == MCUP_SLOT_VALID && r.generation == 1u);
    CHECK(r.length == blob_factory.len && r.blob_id == blob_id(&blob_factory) && r.arch_hash == MCUP_ARCH_HASH);
    CHECK(r.data_crc == mcup_get_u32(blob_factory.data + 24) && r.watermark == blob_factory.len);
    CHECK(r.crc == mcup_crc32(0u, region, 32u));
    CHECK(memcmp(region + MCUP_SLOT_DATA_OFFSET, blob_factory.data, blob_factory.len) == 0);
    full_update(&blob_new);
    memcpy(&r, region + 64, sizeof r);
    CHECK(r.magic == MCUP_SLOT_RECORD_MAGIC && r.state == MCUP_SLOT_VALID && r.generation == 2u);
    CHECK(memcmp(region + MCUP_SLOT_DATA_OFFSET + TEST_CAPACITY, blob_new.data, blob_new.len) == 0);
}

static void test_fresh_boot_installs_factory(void)
{
    fresh_device();
    CHECK(mcup_slots_active() == 0u);
    CHECK(record(0).state == MCUP_SLOT_VALID && record(0).generation == 1u);
    CHECK(record(1).state == MCUP_SLOT_EMPTY);
    /* The next boot finds it and stores nothing. */
    stored = 0;
    CHECK(reboot() == 0 && serving(&blob_factory) && stored == 0);
}

static void test_garbage_boot(void)
{
    for (uint32_t seed = 1; seed <= 20; seed++) {
        fill_garbage(region, REGION_SIZE, seed);
        CHECK(reboot() == 0);
        CHECK(serving(&blob_factory) && mcup_slots_active() == 0u);
        CHECK(reboot() == 0 && serving(&blob_factory));
    }
    /* A record that checks out but vouches for garbage: refused, marked INVALID, factory used. */
    fill_garbage(region, REGION_SIZE, 99);
    forge_record(1, MCUP_SLOT_VALID, 7, &blob_new);
    CHECK(reboot() == 0 && serving(&blob_factory));
    CHECK(record(1).state == MCUP_SLOT_INVALID);
    /* The right header but one flipped data byte: the data CRC catches it. */
    fill_garbage(region, REGION_SIZE, 98);
    memcpy(region + MCUP_SLOT_DATA_OFFSET + TEST_CAPACITY, blob_new.data, blob_new.len);
    region[MCUP_SLOT_DATA_OFFSET + TEST_CAPACITY + blob_new.len - 1u] ^= 0x10u;
    forge_record(1, MCUP_SLOT_VALID, 7, &blob_new);
    CHECK(reboot() == 0 && serving(&blob_factory) && record(1).state == MCUP_SLOT_INVALID);
    /* Intact: it is used, the newest of this architecture. */
    region[MCUP_SLOT_DATA_OFFSET + TEST_CAPACITY + blob_new.len - 1u] ^= 0x10u;
    forge_record(1, MCUP_SLOT_VALID, 7, &blob_new);
    CHECK(reboot() == 0 && serving(&blob_new) && mcup_slots_active() == 1u);
    /* A record in an unknown state reads as EMPTY. */
    forge_record(1, 4, 8, &blob_new);
    CHECK(reboot() == 0 && serving(&blob_factory) && record(1).state == MCUP_SLOT_EMPTY);
}

static void test_other_arch_slots_are_kept(void)
{
    /* After a re-flash to this firmware, slot A holds a blob of the previous architecture. */
    memset(region, 0, REGION_SIZE);
    memcpy(region + MCUP_SLOT_DATA_OFFSET + TEST_CAPACITY, blob_other_arch.data, blob_other_arch.len);
    forge_record(1, MCUP_SLOT_VALID, 5, &blob_other_arch);
    CHECK(reboot() == 0 && serving(&blob_factory));
    CHECK(record(1).state == MCUP_SLOT_VALID && record(1).generation == 5u); /* left alone */
    full_update(&blob_new); /* the update overwrites it: it is the inactive slot */
    CHECK(serving(&blob_new) && mcup_slots_active() == 1u && record(1).generation == 2u);
}

static void test_update_and_reboot(void)
{
    fresh_device();
    const uint32_t binds = fake_bind_count();
    CHECK(full_update(&blob_new) == MCUP_BLOB_HEADER_BYTES);
    CHECK(serving(&blob_new) && fake_bind_count() == binds + 1u);
    CHECK(record(1).state == MCUP_SLOT_VALID && record(1).generation == 2u && record(1).blob_id == blob_id(&blob_new));
    CHECK(record(0).state == MCUP_SLOT_VALID && record(0).generation == 1u); /* the rollback target */
    CHECK(reboot() == 0 && serving(&blob_new));
    /* The next update goes to the other slot, one generation up. */
    full_update(&blob_third);
    CHECK(serving(&blob_third) && mcup_slots_active() == 0u && record(0).generation == 3u);
    CHECK(reboot() == 0 && serving(&blob_third));
}

static void test_duplicate_and_reordered_chunks(void)
{
    fresh_device();
    const test_blob *b = &blob_new;
    uint8_t slot;
    uint32_t next, wm;
    CHECK(mcup_slots_begin(b->data, &slot, &next) == 0 && slot == 1u && next == 32u);
    /* c = [32, 132), [132, 232), [232, 332), then the rest */
    CHECK(mcup_slots_chunk(132, b->data + 132, 100, &wm) == 0 && wm == 32u);  /* ahead: stored, no move */
    CHECK(mcup_slots_chunk(32, b->data + 32, 100, &wm) == 0 && wm == 132u);   /* fills the gap */
    CHECK(mcup_slots_chunk(32, b->data + 32, 100, &wm) == 0 && wm == 132u);   /* duplicate */
    CHECK(mcup_slots_chunk(40, b->data + 40, 10, &wm) == 0 && wm == 132u);    /* inside the prefix */
    CHECK(mcup_slots_chunk(232, b->data + 232, 100, &wm) == 0 && wm == 132u); /* ahead again */
    /* Starts inside the prefix, ends past it: moves it to its end, not past the stored 232..332. */
    CHECK(mcup_slots_chunk(100, b->data + 100, 100, &wm) == 0 && wm == 200u);
    CHECK(mcup_slots_chunk(200, b->data + 200, 32, &wm) == 0 && wm == 232u);
    CHECK(mcup_slots_chunk(232, b->data + 232, 100, &wm) == 0 && wm == 332u);
    CHECK(record(1).state == MCUP_SLOT_WRITING && record(1).watermark == 332u);
    send_from(b, 332);
    CHECK(mcup_slots_commit(blob_id(b)) == 0 && serving(b));
}

static void test_chunk_out_of_range(void)
{
    fresh_device();
    const test_blob *b = &blob_new;
    uint8_t slot;
    uint32_t next, wm = 12345;
    CHECK(mcup_slots_chunk(32, b->data + 32, 10, &wm) == MCUP_ERR_NO_UPDATE);
    CHECK(mcup_slots_begin(b->data, &slot, &next) == 0);
    stored = 0;
    CHECK(mcup_slots_chunk(0, b->data, 32, &wm) == MCUP_ERR_BAD_LENGTH);  /* the header */
    CHECK(mcup_slots_chunk(31, b->data + 31, 5, &wm) == MCUP_ERR_BAD_LENGTH);
    CHECK(mcup_slots_chunk(32, b->data + 32, 0, &wm) == MCUP_ERR_BAD_LENGTH);
    CHECK(mcup_slots_chunk(b->len - 4u, b->data, 5, &wm) == MCUP_ERR_BAD_LENGTH); /* one past the end */
    CHECK(mcup_slots_chunk(b->len, b->data, 1, &wm) == MCUP_ERR_BAD_LENGTH);
    CHECK(mcup_slots_chunk(0xFFFFFFF0u, b->data, 32, &wm) == MCUP_ERR_BAD_LENGTH); /* wraps a u32 */
    CHECK(mcup_slots_chunk(40, b->data, 0xFFFFFFF0u, &wm) == MCUP_ERR_BAD_LENGTH);
    CHECK(stored == 0 && wm == 12345u);
    CHECK(mcup_slots_chunk(b->len - 4u, b->data + b->len - 4u, 4, &wm) == 0 && wm == 32u); /* the last bytes */
    send_from(b, 32);
    CHECK(mcup_slots_commit(blob_id(b)) == 0 && serving(b));
    CHECK(mcup_slots_chunk(32, b->data + 32, 10, &wm) == MCUP_ERR_NO_UPDATE); /* closed by the commit */
}

static void test_commit_errors(void)
{
    fresh_device();
    const test_blob *b = &blob_new;
    uint8_t slot;
    uint32_t next, wm;
    CHECK(mcup_slots_commit(blob_id(b)) == MCUP_ERR_NO_UPDATE);
    CHECK(mcup_slots_begin(b->data, &slot, &next) == 0);
    CHECK(mcup_slots_commit(blob_id(b) ^ 1u) == MCUP_ERR_NO_UPDATE);
    CHECK(mcup_slots_commit(blob_id(b)) == MCUP_ERR_INCOMPLETE);
    CHECK(mcup_slots_chunk(32, b->data + 32, 100, &wm) == 0);
    CHECK(mcup_slots_commit(blob_id(b)) == MCUP_ERR_INCOMPLETE);
    CHECK(mcup_slots_chunk(b->len - 10u, b->data + b->len - 10u, 10, &wm) == 0 && wm == 132u);
    CHECK(mcup_slots_commit(blob_id(b)) == MCUP_ERR_INCOMPLETE); /* a gap is still a gap */
    CHECK(serving(&blob_factory) && mcup_slots_active() == 0u);
    send_from(b, 132); /* the update is still open after those refusals */
    CHECK(mcup_slots_commit(blob_id(b)) == 0 && serving(b));
    CHECK(mcup_slots_commit(blob_id(b)) == MCUP_ERR_NO_UPDATE); /* nothing open any more */
}

static void test_wrong_arch_refused(void)
{
    fresh_device();
    uint8_t slot = 7;
    uint32_t next = 7;
    stored = 0;
    CHECK(mcup_slots_begin(blob_other_arch.data, &slot, &next) == MCUP_ERR_ARCH_MISMATCH);
    CHECK(stored == 0 && slot == 7u && next == 7u && record(1).state == MCUP_SLOT_EMPTY);
    uint32_t wm;
    CHECK(mcup_slots_chunk(32, blob_other_arch.data + 32, 10, &wm) == MCUP_ERR_NO_UPDATE);
}

static void test_bad_headers(void)
{
    fresh_device();
    uint8_t slot;
    uint32_t next;
    uint8_t h[32];
    stored = 0;
    for (uint32_t i = 0; i < 32u * 8u; i++) { /* every single bit flip is refused */
        memcpy(h, blob_new.data, 32);
        h[i / 8u] ^= (uint8_t)(1u << (i % 8u));
        const int rc = mcup_slots_begin(h, &slot, &next);
        CHECK(rc == MCUP_ERR_BAD_BLOB);
    }
    CHECK(stored == 0);
    /* Lengths: a well-formed header (fixed CRC) that is too long, or too short for its table. */
    memcpy(h, blob_new.data, 32);
    uint32_t len = TEST_CAPACITY + 1u;
    memcpy(h + 12, &len, 4);
    uint32_t crc = mcup_crc32(0u, h, 28u);
    memcpy(h + 28, &crc, 4);
    CHECK(mcup_slots_begin(h, &slot, &next) == MCUP_ERR_BAD_BLOB);
    len = 32u + 8u * MCUP_BLOB_ARRAYS - 1u;
    memcpy(h + 12, &len, 4);
    crc = mcup_crc32(0u, h, 28u);
    memcpy(h + 28, &crc, 4);
    CHECK(mcup_slots_begin(h, &slot, &next) == MCUP_ERR_BAD_BLOB);
    CHECK(mcup_slots_begin(blob_too_big.data, &slot, &next) == MCUP_ERR_BAD_BLOB);
    CHECK(stored == 0);
    /* A blob of exactly the capacity fits; the header is read from an unaligned copy too. */
    uint8_t unaligned[33];
    memcpy(unaligned + 1, blob_fits.data, 32);
    CHECK(mcup_slots_begin(unaligned + 1, &slot, &next) == 0 && next == 32u);
    send_from(&blob_fits, next);
    CHECK(mcup_slots_commit(blob_id(&blob_fits)) == 0 && serving(&blob_fits));
    CHECK(reboot() == 0 && serving(&blob_fits));
}

static void test_data_crc_corrupted(void)
{
    fresh_device();
    const test_blob *b = &blob_new;
    uint8_t slot;
    uint32_t next, wm;
    CHECK(mcup_slots_begin(b->data, &slot, &next) == 0);
    send_from(b, next);
    uint8_t bad = (uint8_t)(b->data[500] ^ 0x01u);
    CHECK(mcup_slots_chunk(500, &bad, 1, &wm) == 0 && wm == b->len); /* a duplicate with a wrong byte */
    CHECK(mcup_slots_commit(blob_id(b)) == MCUP_ERR_BAD_BLOB_CRC);
    CHECK(serving(&blob_factory) && mcup_slots_active() == 0u);
    CHECK(record(1).state == MCUP_SLOT_INVALID);
    CHECK(mcup_slots_chunk(500, b->data + 500, 1, &wm) == MCUP_ERR_NO_UPDATE); /* closed */
    CHECK(reboot() == 0 && serving(&blob_factory));
    /* Beginning again starts over instead of resuming into the bad bytes. */
    CHECK(full_update(b) == MCUP_BLOB_HEADER_BYTES && serving(b));
}

static void test_bad_bind_refused(void)
{
    fresh_device();
    uint8_t slot;
    uint32_t next;
    CHECK(mcup_slots_begin(blob_bad_bind.data, &slot, &next) == 0);
    send_from(&blob_bad_bind, next);
    CHECK(mcup_slots_commit(blob_id(&blob_bad_bind)) == MCUP_ERR_BAD_BLOB);
    CHECK(serving(&blob_factory) && record(1).state == MCUP_SLOT_INVALID);
    CHECK(reboot() == 0 && serving(&blob_factory));
}

static void test_rollback(void)
{
    fresh_device();
    CHECK(mcup_slots_rollback() == MCUP_ERR_NO_ROLLBACK); /* B is empty */
    full_update(&blob_new);
    CHECK(record(1).generation == 2u);
    CHECK(mcup_slots_rollback() == 0 && serving(&blob_factory) && mcup_slots_active() == 0u);
    CHECK(record(0).generation == 3u && record(1).state == MCUP_SLOT_VALID);
    CHECK(reboot() == 0 && serving(&blob_factory));
    CHECK(mcup_slots_rollback() == 0 && serving(&blob_new) && record(1).generation == 4u);
    CHECK(reboot() == 0 && serving(&blob_new));
    /* With an update open the other slot is WRITING: nothing to roll back to. */
    uint8_t slot;
    uint32_t next;
    CHECK(mcup_slots_begin(blob_third.data, &slot, &next) == 0 && slot == 0u);
    CHECK(mcup_slots_rollback() == MCUP_ERR_NO_ROLLBACK && serving(&blob_new));
    /* A damaged other slot is no rollback target (and is not touched). */
    CHECK(reboot() == 0);
    memset(region, 0, REGION_SIZE);
    fresh_device();
    full_update(&blob_new);
    region[MCUP_SLOT_DATA_OFFSET + 100u] ^= 0x80u; /* slot A's data */
    CHECK(mcup_slots_rollback() == MCUP_ERR_NO_ROLLBACK && serving(&blob_new));
    CHECK(record(0).state == MCUP_SLOT_VALID);
}

static void test_resume_after_reboot(void)
{
    fresh_device();
    const test_blob *b = &blob_new;
    uint8_t slot;
    uint32_t next, wm;
    CHECK(mcup_slots_begin(b->data, &slot, &next) == 0 && next == 32u);
    CHECK(mcup_slots_chunk(32, b->data + 32, 400, &wm) == 0 && wm == 432u);
    CHECK(mcup_slots_chunk(600, b->data + 600, 50, &wm) == 0 && wm == 432u);
    /* Resuming without a reboot gives the same offset. */
    CHECK(mcup_slots_begin(b->data, &slot, &next) == 0 && next == 432u);
    CHECK(reboot() == 0 && serving(&blob_factory));
    uint32_t dummy;
    CHECK(mcup_slots_chunk(432, b->data + 432, 10, &dummy) == MCUP_ERR_NO_UPDATE); /* must begin first */
    CHECK(full_update(b) == 432u && serving(b));
}

static void test_begin_other_blob_restarts(void)
{
    fresh_device();
    uint8_t slot;
    uint32_t next, wm;
    CHECK(mcup_slots_begin(blob_new.data, &slot, &next) == 0);
    CHECK(mcup_slots_chunk(32, blob_new.data + 32, 300, &wm) == 0 && wm == 332u);
    CHECK(mcup_slots_begin(blob_third.data, &slot, &next) == 0 && next == 32u && slot == 1u);
    CHECK(record(1).length == blob_third.len && record(1).watermark == 32u);
    CHECK(mcup_slots_commit(blob_id(&blob_new)) == MCUP_ERR_NO_UPDATE);
    CHECK(full_update(&blob_third) == 32u); /* resumes the third blob, which has just its header */
    CHECK(serving(&blob_third) && mcup_slots_active() == 1u);
    /* The next update goes to A, which holds the factory blob (VALID): it starts afresh. */
    CHECK(mcup_slots_begin(blob_new.data, &slot, &next) == 0 && next == 32u && slot == 0u);
    CHECK(record(0).state == MCUP_SLOT_WRITING);
}

static void test_broken_factory(void)
{
    /* Built with a factory blob the fake mcup_bind refuses: nothing to boot, but updatable. */
    memset(region, 0, REGION_SIZE);
    CHECK(reboot() != 0 && !mcup_is_bound() && mcup_slots_active() == MCUP_SLOT_NONE);
    CHECK(record(0).state == MCUP_SLOT_EMPTY); /* checked in flash, never copied */
    CHECK(mcup_slots_rollback() == MCUP_ERR_NO_ROLLBACK);
    full_update(&blob_new);
    CHECK(serving(&blob_new) && mcup_slots_active() == 1u && record(1).generation == 1u);
    CHECK(reboot() == 0 && serving(&blob_new));
}

/* --- power cuts ------------------------------------------------------------------------------ */

static uint8_t *snapshot;

static void take_snapshot(void)
{
    memcpy(snapshot, region, REGION_SIZE);
}

static void restore_snapshot(void)
{
    memcpy(region, snapshot, REGION_SIZE);
}

static void act_boot(void)
{
    (void)reboot();
}

/* An update as a host with a lossy link might send it: one chunk ahead of the watermark, one
 * duplicate, the rest in order. */
static void act_update_new(void)
{
    CHECK(reboot() == 0);
    const test_blob *b = &blob_new;
    uint8_t slot;
    uint32_t next, wm;
    CHECK(mcup_slots_begin(b->data, &slot, &next) == 0 && next == 32u);
    CHECK(mcup_slots_chunk(700, b->data + 700, 150, &wm) == 0 && wm == 32u);
    CHECK(mcup_slots_chunk(32, b->data + 32, CHUNK, &wm) == 0 && wm == 32u + CHUNK);
    CHECK(mcup_slots_chunk(32, b->data + 32, CHUNK, &wm) == 0 && wm == 32u + CHUNK);
    send_from(b, 32u + CHUNK);
    CHECK(mcup_slots_commit(blob_id(b)) == 0 && serving(b));
}

static void act_resume_new(void)
{
    full_update(&blob_new);
}

static void act_rollback(void)
{
    CHECK(reboot() == 0);
    CHECK(mcup_slots_rollback() == 0);
}

static void act_commit_bad_crc(void)
{
    CHECK(reboot() == 0);
    uint8_t slot;
    uint32_t next, wm;
    CHECK(mcup_slots_begin(blob_new.data, &slot, &next) == 0);
    send_from(&blob_new, next);
    const uint8_t bad = (uint8_t)(blob_new.data[300] ^ 0x40u);
    CHECK(mcup_slots_chunk(300, &bad, 1, &wm) == 0);
    CHECK(mcup_slots_commit(blob_id(&blob_new)) == MCUP_ERR_BAD_BLOB_CRC);
}

/* Run `action` from the snapshot once per cut point 0..total-1 and once uncut; returns total. */
static long cut_points(void (*action)(void), void (*after_cut)(long k))
{
    for (long k = 0;; k++) {
        restore_snapshot();
        cut_context = k;
        if (!run_with_cut(action, k)) {
            cut_context = -1;
            CHECK(stored == k); /* the uncut run stores exactly k bytes: every byte was a cut point */
            return k;
        }
        CHECK(stored == k);
        after_cut(k);
    }
}

static long second_cuts; /* cuts during the retried update */

/* After a cut during an update: the old model serves; the host's retry completes, even when
 * the power fails again during it. */
static void after_update_cut(long k)
{
    CHECK(reboot() == 0);
    CHECK(serving(&blob_factory)); /* the switch is the very last byte: any earlier cut keeps the old */
    /* Second cut at a pseudo-random point of the retry. */
    const long k2 = (long)(((unsigned long)k * 2654435761u) % 3000u);
    if (run_with_cut(act_resume_new, k2)) {
        second_cuts++;
        CHECK(reboot() == 0 && serving(&blob_factory));
    } else {
        CHECK(serving(&blob_new));
        CHECK(reboot() == 0);
    }
    if (serving(&blob_factory)) {
        full_update(&blob_new);
    }
    CHECK(serving(&blob_new));
    CHECK(reboot() == 0 && serving(&blob_new));
    CHECK(record(mcup_slots_active()).generation == 2u);
}

static void test_power_cut_update(void)
{
    fresh_device();
    take_snapshot();
    resumed = 0;
    const long total = cut_points(act_update_new, after_update_cut);
    CHECK(serving(&blob_new));
    CHECK(reboot() == 0 && serving(&blob_new));
    CHECK(resumed > 0 && second_cuts > 0);
    printf("ok power_cut_update: %ld cut points, %ld retries resumed past the header, %ld cut again\n",
           total, resumed, second_cuts);
}

static long rollback_lost; /* cuts that tore the rollback target's record */

static void after_rollback_cut(long k)
{
    (void)k;
    CHECK(reboot() == 0 && serving(&blob_new));
    const int rc = mcup_slots_rollback();
    if (rc == 0) {
        CHECK(serving(&blob_factory));
    } else {
        CHECK(rc == MCUP_ERR_NO_ROLLBACK && serving(&blob_new) && record(0).state == MCUP_SLOT_EMPTY);
        rollback_lost++;
    }
    CHECK(reboot() == 0);
    CHECK(serving(rc == 0 ? &blob_factory : &blob_new));
}

static void test_power_cut_rollback(void)
{
    fresh_device();
    full_update(&blob_new);
    take_snapshot();
    const long total = cut_points(act_rollback, after_rollback_cut);
    CHECK(serving(&blob_factory) && record(0).generation == 3u);
    CHECK(reboot() == 0 && serving(&blob_factory));
    printf("ok power_cut_rollback: %ld cut points, %ld left no rollback target\n", total, rollback_lost);
}

static void after_boot_cut(long k)
{
    (void)k;
    CHECK(reboot() == 0 && serving(&blob_factory));
    CHECK(reboot() == 0 && serving(&blob_factory));
}

static void test_power_cut_factory_install(void)
{
    memset(region, 0, REGION_SIZE);
    take_snapshot();
    const long zero = cut_points(act_boot, after_boot_cut);
    fill_garbage(region, REGION_SIZE, 5);
    take_snapshot();
    const long garbage = cut_points(act_boot, after_boot_cut);
    CHECK(zero == garbage && zero > (long)blob_factory.len);
    printf("ok power_cut_factory_install: %ld cut points on zeroed and %ld on garbage memory\n", zero, garbage);
}

static void test_power_cut_boot_marks_invalid(void)
{
    fresh_device();
    full_update(&blob_new);
    region[MCUP_SLOT_DATA_OFFSET + TEST_CAPACITY + 77u] ^= 0x04u; /* the active blob is damaged */
    take_snapshot();
    const long total = cut_points(act_boot, after_boot_cut);
    CHECK(record(1).state == MCUP_SLOT_INVALID && serving(&blob_factory));
    printf("ok power_cut_boot_marks_invalid: %ld cut points\n", total);
}

static long bad_resumed; /* cuts after which the retry resumed into the bad byte */

/* The host retries with the right bytes. A cut after the bad byte was stored but before the
 * record was marked INVALID leaves a WRITING record that vouches for it: the retry resumes, its
 * commit fails again (and marks it), and the next attempt starts over. */
static void after_bad_commit_cut(long k)
{
    (void)k;
    CHECK(reboot() == 0 && serving(&blob_factory));
    uint8_t slot;
    uint32_t next;
    CHECK(mcup_slots_begin(blob_new.data, &slot, &next) == 0);
    send_from(&blob_new, next);
    const int rc = mcup_slots_commit(blob_id(&blob_new));
    if (rc != 0) {
        CHECK(rc == MCUP_ERR_BAD_BLOB_CRC && next == blob_new.len && serving(&blob_factory));
        bad_resumed++;
        CHECK(full_update(&blob_new) == MCUP_BLOB_HEADER_BYTES);
    }
    CHECK(serving(&blob_new));
    CHECK(reboot() == 0 && serving(&blob_new));
}

static void test_power_cut_bad_commit(void)
{
    fresh_device();
    take_snapshot();
    const long total = cut_points(act_commit_bad_crc, after_bad_commit_cut);
    CHECK(serving(&blob_factory) && record(1).state == MCUP_SLOT_INVALID);
    /* The cut right after the bad byte, and the 4 inside the mark's (unchanged) magic; from the
     * state byte on, the record is torn and the retry starts over. */
    CHECK(bad_resumed == 1 + 4);
    printf("ok power_cut_bad_commit: %ld cut points, %ld retries resumed into the bad byte\n", total, bad_resumed);
}

/* Everything again with the region read-only outside mcup_store_write. */
static void test_no_stray_stores(void)
{
    guarded = 1;
    set_writable(1);
    memset(region, 0, REGION_SIZE);
    set_writable(0);
    CHECK(reboot() == 0 && serving(&blob_factory));
    full_update(&blob_new);
    CHECK(mcup_slots_rollback() == 0);
    full_update(&blob_third);
    uint8_t slot;
    uint32_t next, wm;
    CHECK(mcup_slots_begin(blob_bad_bind.data, &slot, &next) == 0);
    send_from(&blob_bad_bind, next);
    CHECK(mcup_slots_commit(blob_id(&blob_bad_bind)) == MCUP_ERR_BAD_BLOB);
    CHECK(mcup_slots_chunk(40, blob_new.data, 4, &wm) == MCUP_ERR_NO_UPDATE);
    /* Now A (bad blob) is INVALID and B (third) serves. Damage B: boot marks it and, with no
     * slot left, installs the factory blob into A. */
    CHECK(reboot() == 0 && serving(&blob_third) && mcup_slots_active() == 1u);
    CHECK(record(0).state == MCUP_SLOT_INVALID);
    set_writable(1);
    region[MCUP_SLOT_DATA_OFFSET + TEST_CAPACITY + 40u] ^= 1u;
    set_writable(0);
    CHECK(reboot() == 0 && serving(&blob_factory) && record(1).state == MCUP_SLOT_INVALID);
    CHECK(record(0).state == MCUP_SLOT_VALID && record(0).generation == 1u);
    guarded = 0;
    set_writable(1);
}

/* --- main ------------------------------------------------------------------------------------ */

typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

static const test_case tests[] = {
    {"crc_check_value", test_crc_check_value},
    {"region_layout", test_region_layout},
    {"fresh_boot_installs_factory", test_fresh_boot_installs_factory},
    {"garbage_boot", test_garbage_boot},
    {"other_arch_slots_are_kept", test_other_arch_slots_are_kept},
    {"update_and_reboot", test_update_and_reboot},
    {"duplicate_and_reordered_chunks", test_duplicate_and_reordered_chunks},
    {"chunk_out_of_range", test_chunk_out_of_range},
    {"commit_errors", test_commit_errors},
    {"wrong_arch_refused", test_wrong_arch_refused},
    {"bad_headers", test_bad_headers},
    {"data_crc_corrupted", test_data_crc_corrupted},
    {"bad_bind_refused", test_bad_bind_refused},
    {"rollback", test_rollback},
    {"resume_after_reboot", test_resume_after_reboot},
    {"begin_other_blob_restarts", test_begin_other_blob_restarts},
    {"broken_factory", test_broken_factory},
    {"power_cut_update", test_power_cut_update},
    {"power_cut_rollback", test_power_cut_rollback},
    {"power_cut_factory_install", test_power_cut_factory_install},
    {"power_cut_boot_marks_invalid", test_power_cut_boot_marks_invalid},
    {"power_cut_bad_commit", test_power_cut_bad_commit},
    {"no_stray_stores", test_no_stray_stores},
};

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: slots_harness TEST\n");
        return 2;
    }
    region = mmap(0, REGION_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    snapshot = malloc(REGION_SIZE);
    CHECK(region != MAP_FAILED && snapshot != 0);
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (strcmp(argv[1], tests[i].name) == 0) {
            tests[i].fn();
            printf("ok %s\n", tests[i].name);
            free(snapshot);
            return 0;
        }
    }
    fprintf(stderr, "unknown test %s\n", argv[1]);
    return 2;
}
