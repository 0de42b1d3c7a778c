/*
 * protocol.c - frame validation, the message dispatch table and the message handlers.
 * New messages are one handler and one table row. --params blob firmware (model.h defines
 * MCUP_PARAMS_BLOB) adds TELEMETRY, CAPTURE, the update messages (on slots.c), LABEL and the RESULT
 * sections; static builds answer those types UNKNOWN_TYPE and report params mode 0 in INFO.
 */
#include "protocol.h"

#include <string.h>

#include "cobs.h"
#include "crc32.h"
#include "model.h"
#include "security.h"
#include "semihost.h"
#include "ticks.h"
#include "uart.h"

#ifndef MCUP_BOARD_NAME
#error "MCUP_BOARD_NAME must be defined (the Makefile takes it from the board file)"
#endif
#ifndef MCUP_CLOCK_HZ
#error "MCUP_CLOCK_HZ must be defined (the Makefile takes it from the board file)"
#endif

#define INFO_FIXED_BYTES 16u /* version, fw major, fw minor, hash, clock, in, out, layers */
#define RESULT_BYTES (4u + 1u + (uint32_t)MCUP_OUTPUT_SIZE + 4u * (uint32_t)MCUP_NUM_LAYERS)

#ifdef MCUP_PARAMS_BLOB
#include "slots.h"

#define SECTION_TELEMETRY 1u
#define SECTION_CAPTURE 2u
#define SECTION_HEADER_BYTES 3u /* u8 tag, u16 length */
#define CAPTURE_INPUT 0u
#define CAPTURE_PENULTIMATE 1u
#define CAPTURE_MAX_BYTES \
    ((uint32_t)MCUP_INPUT_SIZE > (uint32_t)MCUP_PENULTIMATE_SIZE ? (uint32_t)MCUP_INPUT_SIZE \
                                                                   : (uint32_t)MCUP_PENULTIMATE_SIZE)
#define RESULT_MAX_BYTES \
    (RESULT_BYTES + SECTION_HEADER_BYTES + MCUP_TELEMETRY_BYTES + SECTION_HEADER_BYTES + 1u + CAPTURE_MAX_BYTES)
#define INFO_SLOT_BYTES 17u /* state, generation, length, blob id, watermark */
#define INFO_PARAMS_BYTES (1u + 1u + 2u * INFO_SLOT_BYTES + 4u + INFO_SECURITY_BYTES) /* mode, active, slots, capacity */
#define LARGEST_CHUNK (MCUP_MAX_PAYLOAD - 4u)                   /* UPDATE_CHUNK: u32 offset, data */
#define LABEL_COUNTED 0u /* LABEL status: the sample is in the ring, the counters moved */
#define LABEL_UNKNOWN 1u /* not in the ring (too old, never served, before a restart): not counted */
#define LABEL_NO_TOP1 0xFFu /* served top1 of an unknown sample */

_Static_assert(MCUP_PENULTIMATE_SIZE > 0, "capture needs the penultimate activations");
_Static_assert(RESULT_MAX_BYTES <= MCUP_MAX_PAYLOAD,
               "RESULT with telemetry and capture sections must fit in MCUP_MAX_PAYLOAD");
_Static_assert(MCUP_BLOB_HEADER_BYTES == 32u, "UPDATE_BEGIN carries the 32-byte header");
_Static_assert((MCUP_LABEL_RING & (MCUP_LABEL_RING - 1u)) == 0u,
               "LABEL's ring slot, sample id % MCUP_LABEL_RING, must stay consecutive across the count's wrap");
#else
#define INFO_PARAMS_BYTES (1u + INFO_SECURITY_BYTES) /* mode 0, security */
#endif

#if MCUP_SIGNED_UPDATES
#include "signature.h"
#ifndef MCUP_PARAMS_BLOB
#error "signed updates need --params blob firmware (the nonce epoch and the counter live in its slot region)"
#endif
/* INFO's security section: mode 1, key id, security counter, nonce (epoch, sequence). */
#define INFO_SECURITY_BYTES (1u + MCUP_KEY_ID_BYTES + 4u + MCUP_NONCE_BYTES)
#define AUTH 1 /* UPDATE_BEGIN, ROLLBACK, EXIT, INFER_FILE need an authorization */
#else
#define INFO_SECURITY_BYTES 1u /* mode 0: development, nothing needs authority */
#define AUTH 0
#endif

_Static_assert(MCUP_INPUT_SIZE > 0, "a model takes at least one input byte");
_Static_assert(MCUP_INPUT_SIZE <= 0xFFFF && MCUP_OUTPUT_SIZE > 0 && MCUP_OUTPUT_SIZE <= 0xFFFF,
               "INFO carries the sizes as u16");
_Static_assert(MCUP_NUM_LAYERS <= 0xFF, "INFO carries the layer count as u8");
_Static_assert(RESULT_BYTES <= MCUP_MAX_PAYLOAD, "RESULT payload must fit in MCUP_MAX_PAYLOAD");
_Static_assert(INFO_FIXED_BYTES + sizeof(MCUP_BOARD_NAME) + sizeof(MCUP_MODEL_NAME) + INFO_PARAMS_BYTES <=
                   MCUP_MAX_PAYLOAD,
               "INFO payload must fit in MCUP_MAX_PAYLOAD");

/* Returns the reply payload length written to `reply`, or -(mcup_error_code). */
typedef int32_t (*mcup_handler_fn)(mcup_proto_state *st, uint16_t seq, const uint8_t *payload,
                                   uint32_t len, uint8_t *reply);

typedef struct {
    uint8_t type;
    int32_t payload_len; /* exact length required, or -1 for "the handler checks" (authorization excluded) */
    mcup_handler_fn fn;
    uint8_t auth; /* signed builds: the payload ends with an authorization (signature.h) */
} mcup_handler;

static uint8_t reply_buf[MCUP_MAX_PAYLOAD] __attribute__((aligned(4)));
static int8_t logits[MCUP_OUTPUT_SIZE] __attribute__((aligned(4)));
static int8_t file_input[MCUP_INPUT_SIZE] __attribute__((aligned(4)));

static uint32_t put_u16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return 2u;
}

static uint32_t put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
    return 4u;
}

static uint32_t put_str(uint8_t *p, const char *s)
{
    uint32_t n = 0;
    do {
        p[n] = (uint8_t)s[n];
    } while (s[n++] != '\0');
    return n;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void send_error(uint16_t seq, uint8_t code, uint8_t offending_type);

#ifdef MCUP_PARAMS_BLOB

static int params_bound(void)
{
    return mcup_is_bound();
}

/* INFO tail: mode 1, active slot, per slot state, generation, length, blob id, watermark; capacity. */
static uint32_t put_params_info(uint8_t *r)
{
    uint32_t n = 0;
    r[n++] = MCUP_PARAMS_MODE_BLOB;
    r[n++] = mcup_slots_active();
    for (uint32_t slot = 0; slot < 2u; slot++) {
        mcup_slot_record rec;
        mcup_slots_record(slot, &rec);
        r[n++] = (uint8_t)rec.state;
        n += put_u32(r + n, rec.generation);
        n += put_u32(r + n, rec.length);
        n += put_u32(r + n, rec.blob_id);
        n += put_u32(r + n, rec.watermark);
    }
    n += put_u32(r + n, mcup_slots_capacity());
    return n;
}

/*
 * The last MCUP_LABEL_RING served samples, for LABEL. Sample ids are consecutive, so id % RING is the
 * slot: a slot holds the latest id with that remainder, i.e. one of the last RING served. `served`
 * marks slots written since boot: zeroed RAM would otherwise claim sample id 0 (a real id only once
 * the count wraps). Kept here, not in mcup_proto_state, so static builds do not carry its 2 KB of RAM.
 */
typedef struct {
    uint32_t sample_id; /* telemetry count of the sample's RESULT */
    uint8_t top1;       /* the class the RESULT served */
    uint8_t served;
} mcup_label_sample;

static mcup_label_sample label_ring[MCUP_LABEL_RING];

static uint32_t capture_bytes(uint8_t which)
{
    return which == CAPTURE_INPUT ? (uint32_t)MCUP_INPUT_SIZE : (uint32_t)MCUP_PENULTIMATE_SIZE;
}

/* After a successful mcup_run that served `top1`: update the telemetry record, remember the sample for
 * LABEL, append the enabled RESULT sections. */
static uint32_t after_inference(mcup_proto_state *st, const int8_t *input, uint8_t top1, uint8_t *r)
{
    const uint32_t count = st->telemetry.count + 1u; /* mcup_monitor fills all but the count */
    mcup_monitor(logits, &st->telemetry);
    st->telemetry.count = count;
    /* Telemetry on or off: the count (the sample id) advances either way, and a host may learn it
     * later (TELEMETRY's record), so a sample is labelled the same whatever the host had switched on. */
    mcup_label_sample *sample = &label_ring[count % MCUP_LABEL_RING];
    sample->sample_id = count;
    sample->top1 = top1;
    sample->served = 1u;

    uint32_t n = 0;
    if (st->telemetry_on) {
        r[n++] = SECTION_TELEMETRY;
        n += put_u16(r + n, MCUP_TELEMETRY_BYTES);
        n += mcup_telemetry_pack(&st->telemetry, r + n);
    }
    if (st->capture_left > 0u) {
        const int8_t *tensor = st->capture_which == CAPTURE_INPUT ? input : mcup_penultimate();
        const uint32_t bytes = capture_bytes(st->capture_which);
        r[n++] = SECTION_CAPTURE;
        n += put_u16(r + n, 1u + bytes);
        r[n++] = st->capture_which;
        for (uint32_t i = 0; i < bytes; i++) {
            r[n++] = (uint8_t)tensor[i];
        }
        st->capture_left--;
    }
    return n;
}

#else /* static parameters: always bound, no sections */

static int params_bound(void)
{
    return 1;
}

static uint32_t put_params_info(uint8_t *r)
{
    r[0] = MCUP_PARAMS_MODE_STATIC;
    return 1u;
}

static uint32_t after_inference(mcup_proto_state *st, const int8_t *input, uint8_t top1, uint8_t *r)
{
    (void)st;
    (void)input;
    (void)top1;
    (void)r;
    return 0u;
}

#endif /* MCUP_PARAMS_BLOB */

#if MCUP_SIGNED_UPDATES
static uint32_t auth_seq; /* the nonce's low word: authorizations accepted since boot */

static void current_nonce(uint8_t nonce[MCUP_NONCE_BYTES])
{
    put_u32(nonce, mcup_slots_epoch());
    put_u32(nonce + 4, auth_seq);
}

/* INFO tail: mode 1, key id, security counter, nonce. */
static uint32_t put_security_info(uint8_t *r)
{
    uint32_t n = 0;
    r[n++] = 1u;
    for (uint32_t i = 0; i < MCUP_KEY_ID_BYTES; i++) {
        r[n++] = mcup_sig_key_id()[i];
    }
    n += put_u32(r + n, mcup_slots_security_counter());
    current_nonce(r + n);
    return n + MCUP_NONCE_BYTES;
}

/*
 * The authorization at the end of a request's payload: the current nonce and the owner's signature
 * (signature.h). On success *len loses the authorization's bytes and the nonce moves on, so the
 * same authorization never works twice.
 */
static int check_authorization(uint8_t type, const uint8_t *payload, uint32_t *len)
{
    if (*len < MCUP_AUTH_BYTES) {
        return MCUP_ERR_UNAUTHORISED;
    }
    const uint32_t n = *len - MCUP_AUTH_BYTES;
    uint8_t nonce[MCUP_NONCE_BYTES];
    current_nonce(nonce);
    for (uint32_t i = 0; i < MCUP_NONCE_BYTES; i++) {
        if (payload[n + i] != nonce[i]) {
            return MCUP_ERR_REPLAYED; /* signed for an earlier nonce, or before a restart */
        }
    }
    if (mcup_sig_check_auth(nonce, type, payload, n, payload + n + MCUP_NONCE_BYTES) != 0) {
        return MCUP_ERR_UNAUTHORISED;
    }
    auth_seq++;
    *len = n;
    return 0;
}
#else
static uint32_t put_security_info(uint8_t *r)
{
    r[0] = 0u; /* development: updates unsigned, nothing needs authority */
    return 1u;
}
#endif

static int32_t handle_info(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                           uint8_t *r)
{
    (void)st;
    (void)seq;
    (void)payload;
    (void)len;
    uint32_t n = 0;
    r[n++] = MCUP_PROTO_VERSION;
    r[n++] = MCUP_FW_VERSION_MAJOR;
    r[n++] = MCUP_FW_VERSION_MINOR;
    n += put_u32(r + n, (uint32_t)MCUP_ARCH_HASH);
    n += put_u32(r + n, (uint32_t)MCUP_CLOCK_HZ);
    n += put_u16(r + n, (uint32_t)MCUP_INPUT_SIZE);
    n += put_u16(r + n, (uint32_t)MCUP_OUTPUT_SIZE);
    r[n++] = (uint8_t)MCUP_NUM_LAYERS;
    n += put_str(r + n, MCUP_BOARD_NAME);
    n += put_str(r + n, MCUP_MODEL_NAME);
    n += put_params_info(r + n);
    n += put_security_info(r + n);
    return (int32_t)n;
}

/* Run the model on `input` and write the RESULT payload into `r`. */
static int32_t run_model(mcup_proto_state *st, const int8_t *input, uint8_t *r)
{
    if (!st->model_ready || !params_bound()) {
        return -MCUP_ERR_MODEL;
    }
    uint32_t start = mcup_ticks_now();
    int rc = mcup_run(input, logits);
    uint32_t ticks = mcup_ticks_now() - start;
    if (rc != 0) {
        return -MCUP_ERR_MODEL;
    }
    uint32_t best = 0; /* argmax; the first index wins ties */
    for (uint32_t k = 1; k < (uint32_t)MCUP_OUTPUT_SIZE; k++) {
        if (logits[k] > logits[best]) {
            best = k;
        }
    }
    uint32_t n = put_u32(r, ticks);
    r[n++] = (uint8_t)best;
    for (uint32_t k = 0; k < (uint32_t)MCUP_OUTPUT_SIZE; k++) {
        r[n++] = (uint8_t)logits[k];
    }
    for (uint32_t i = 0; i < (uint32_t)MCUP_NUM_LAYERS; i++) {
        n += put_u32(r + n, mcup_layer_ticks[i]);
    }
    n += after_inference(st, input, (uint8_t)best, r + n);
    return (int32_t)n;
}

static int32_t handle_infer(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                            uint8_t *r)
{
    (void)seq;
    (void)len;
    return run_model(st, (const int8_t *)payload, r);
}

/*
 * Semihosting opens any file the emulator's user can read, so INFER_FILE takes only the files the
 * host offers for it: an absolute path whose file name ends in ".bin" and whose folder's name
 * starts with "mcuprune-offer-" (the host makes a fresh one per batch, device/link.py
 * OFFER_PREFIX), with no "." or ".." component and no backslash or ':' (semihosting's ":tt").
 */
static int offered_path(const char *path, uint32_t len)
{
    static const char prefix[] = "mcuprune-offer-";
    static const char suffix[] = ".bin";
    const uint32_t n_prefix = sizeof prefix - 1u, n_suffix = sizeof suffix - 1u;
    if (len < 2u || path[0] != '/') {
        return 0;
    }
    uint32_t start = 1u; /* first byte of the component being read */
    uint32_t parent = 0u, parent_len = 0u, name = 0u;
    for (uint32_t i = 1u; i <= len; i++) {
        if (i < len && (path[i] == '\\' || path[i] == ':')) {
            return 0;
        }
        if (i < len && path[i] != '/') {
            continue;
        }
        const uint32_t n = i - start;
        if (n == 0u || (path[start] == '.' && (n == 1u || (n == 2u && path[start + 1u] == '.')))) {
            return 0; /* empty, "." or ".." */
        }
        if (i < len) {
            parent = start;
            parent_len = n;
        } else {
            name = start;
        }
        start = i + 1u;
    }
    if (parent_len <= n_prefix || len - name <= n_suffix) {
        return 0;
    }
    return memcmp(path + parent, prefix, n_prefix) == 0 && memcmp(path + len - n_suffix, suffix, n_suffix) == 0;
}

/*
 * INFER_FILE: QEMU's UART model takes one byte per emulator main-loop turn (tens of us), so
 * inputs are the slow direction. Here they come from a host file through semihosting instead,
 * MCUP_INPUT_SIZE bytes each; results go back over the UART as RESULT frames numbered seq+1,
 * seq+2, ... A failed input gets an ERROR with its own seq; then the reply carries the count.
 */
static int32_t handle_infer_file(mcup_proto_state *st, uint16_t seq, const uint8_t *payload,
                                 uint32_t len, uint8_t *r)
{
    if (len < 6u || payload[len - 1u] != 0u) {
        return -MCUP_ERR_BAD_LENGTH; /* u32 count and a non-empty, NUL-terminated path */
    }
    const char *path = (const char *)payload + 4;
    uint32_t path_len = 0;
    while (path[path_len] != '\0') {
        path_len++;
    }
    if (!offered_path(path, path_len)) {
        return -MCUP_ERR_IO; /* not a file the host offered: never opened */
    }
    const uint32_t count = get_u32(payload);
    const int32_t handle = mcup_semihost_open_read(path, path_len);
    if (handle < 0) {
        return -MCUP_ERR_IO;
    }
    uint32_t done = 0;
    for (; done < count; done++) {
        if (mcup_semihost_read(handle, file_input, MCUP_INPUT_SIZE) != MCUP_INPUT_SIZE) {
            break;
        }
        const uint16_t item_seq = (uint16_t)(seq + 1u + done);
        int32_t n = run_model(st, file_input, r);
        if (n < 0) {
            send_error(item_seq, (uint8_t)-n, MCUP_MSG_INFER);
        } else {
            mcup_proto_send(MCUP_MSG_INFER | MCUP_MSG_REPLY, item_seq, r, (uint32_t)n);
        }
    }
    mcup_semihost_close(handle);
    if (done != count) {
        return -MCUP_ERR_IO;
    }
    return (int32_t)put_u32(r, done);
}

static int32_t handle_exit(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                           uint8_t *r)
{
    (void)seq;
    (void)len;
    (void)r;
    st->exit_requested = 1;
    st->exit_code = payload[0];
    return 0;
}

#ifdef MCUP_PARAMS_BLOB

static int32_t handle_telemetry(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                                uint8_t *r)
{
    (void)seq;
    (void)len;
    if (payload[0] > 1u) {
        return -MCUP_ERR_BAD_LENGTH; /* modes are 0 (off) and 1 (on) */
    }
    st->telemetry_on = payload[0];
    r[0] = st->telemetry_on;
    return (int32_t)(1u + mcup_telemetry_pack(&st->telemetry, r + 1));
}

static int32_t handle_capture(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                              uint8_t *r)
{
    (void)seq;
    (void)len;
    const uint8_t which = payload[0];
    if (which != CAPTURE_INPUT && which != CAPTURE_PENULTIMATE) {
        return -MCUP_ERR_BAD_LENGTH;
    }
    st->capture_which = which;
    st->capture_left = (uint16_t)(payload[1] | (payload[2] << 8));
    uint32_t n = 0;
    r[n++] = which;
    n += put_u16(r + n, st->capture_left);
    n += put_u16(r + n, capture_bytes(which));
    return (int32_t)n;
}

static int32_t handle_update_begin(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                                   uint8_t *r)
{
    (void)st;
    (void)seq;
    (void)len;
    uint8_t slot = 0;
    uint32_t next_offset = 0;
    int rc = mcup_slots_begin(payload, &slot, &next_offset);
    if (rc != 0) {
        return -rc;
    }
    uint32_t n = 0;
    r[n++] = slot;
    n += put_u32(r + n, next_offset);
    n += put_u16(r + n, LARGEST_CHUNK);
    return (int32_t)n;
}

static int32_t handle_update_chunk(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                                   uint8_t *r)
{
    (void)st;
    (void)seq;
    if (len < 5u) {
        return -MCUP_ERR_BAD_LENGTH; /* u32 offset and at least one byte */
    }
    uint32_t watermark = 0;
    int rc = mcup_slots_chunk(get_u32(payload), payload + 4, len - 4u, &watermark);
    if (rc != 0) {
        return -rc;
    }
    return (int32_t)put_u32(r, watermark);
}

/* COMMIT and ROLLBACK reply: u8 active slot, u32 generation, u32 blob id. */
static int32_t put_active(uint8_t *r)
{
    const uint8_t slot = mcup_slots_active();
    mcup_slot_record rec;
    mcup_slots_record(slot, &rec);
    uint32_t n = 0;
    r[n++] = slot;
    n += put_u32(r + n, rec.generation);
    n += put_u32(r + n, rec.blob_id);
    return (int32_t)n;
}

static int32_t handle_update_commit(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                                    uint8_t *r)
{
    (void)st;
    (void)seq;
    (void)len;
    int rc = mcup_slots_commit(get_u32(payload));
    if (rc != 0) {
        return -rc;
    }
    return put_active(r);
}

static int32_t handle_rollback(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                               uint8_t *r)
{
    (void)st;
    (void)seq;
    (void)payload;
    (void)len;
    int rc = mcup_slots_rollback();
    if (rc != 0) {
        return -rc;
    }
    return put_active(r);
}

/*
 * LABEL: the true class of a served sample, learned later by the host. Counted when the sample is
 * still in the ring; a LABEL repeated for the same sample counts again (the device keeps no record
 * of what was labelled: the host decides what to send). Changes nothing but the two counters, so it
 * needs no authorization.
 */
static int32_t handle_label(mcup_proto_state *st, uint16_t seq, const uint8_t *payload, uint32_t len,
                            uint8_t *r)
{
    (void)seq;
    (void)len;
    const uint32_t sample_id = get_u32(payload);
    const uint32_t label = payload[4]; /* u32: no always-false compare for a model of 256+ classes */
    if (label >= (uint32_t)MCUP_OUTPUT_SIZE) {
        return -MCUP_ERR_BAD_LABEL;
    }
    const mcup_label_sample *sample = &label_ring[sample_id % MCUP_LABEL_RING];
    const int known = sample->served && sample->sample_id == sample_id;
    if (known) {
        st->labeled++;
        st->correct += label == sample->top1 ? 1u : 0u;
    }
    uint32_t n = put_u32(r, sample_id);
    r[n++] = (uint8_t)label;
    r[n++] = known ? LABEL_COUNTED : LABEL_UNKNOWN;
    r[n++] = known ? sample->top1 : LABEL_NO_TOP1;
    n += put_u32(r + n, st->labeled);
    n += put_u32(r + n, st->correct);
    return (int32_t)n;
}

#endif /* MCUP_PARAMS_BLOB */

/* UPDATE_CHUNK and UPDATE_COMMIT need no authorization of their own: they only act on the update an
 * authorised UPDATE_BEGIN opened, and the commit verifies the blob's signature. LABEL changes nothing
 * but its counters. */
static const mcup_handler handlers[] = {
    {MCUP_MSG_INFO, 0, handle_info, 0},
    {MCUP_MSG_INFER, MCUP_INPUT_SIZE, handle_infer, 0},
#ifdef MCUP_PARAMS_BLOB
    {MCUP_MSG_TELEMETRY, 1, handle_telemetry, 0},
    {MCUP_MSG_CAPTURE, 3, handle_capture, 0},
    {MCUP_MSG_UPDATE_BEGIN, MCUP_BLOB_HEADER_BYTES, handle_update_begin, AUTH},
    {MCUP_MSG_UPDATE_CHUNK, -1, handle_update_chunk, 0},
    {MCUP_MSG_UPDATE_COMMIT, 4, handle_update_commit, 0},
    {MCUP_MSG_ROLLBACK, 0, handle_rollback, AUTH},
    {MCUP_MSG_LABEL, 5, handle_label, 0},
#endif
    {MCUP_MSG_INFER_FILE, -1, handle_infer_file, AUTH},
    {MCUP_MSG_EXIT, 1, handle_exit, AUTH},
};

static void uart_put(const void *data, uint32_t len)
{
    mcup_uart_write(data, len);
}

void mcup_proto_send(uint8_t type, uint16_t seq, const uint8_t *payload, uint32_t len)
{
    uint8_t header[MCUP_FRAME_HEADER] = {MCUP_PROTO_VERSION, type, (uint8_t)seq, (uint8_t)(seq >> 8)};
    uint8_t crc_bytes[4];
    uint32_t crc = mcup_crc32(0u, header, sizeof header);
    crc = mcup_crc32(crc, payload, len);
    put_u32(crc_bytes, crc);

    static mcup_cobs_writer writer; /* static: 260 bytes off the stack */
    mcup_cobs_writer_begin(&writer, uart_put);
    mcup_cobs_writer_push(&writer, header, sizeof header);
    mcup_cobs_writer_push(&writer, payload, len);
    mcup_cobs_writer_push(&writer, crc_bytes, sizeof crc_bytes);
    mcup_cobs_writer_end(&writer);
}

static void send_error(uint16_t seq, uint8_t code, uint8_t offending_type)
{
    const uint8_t payload[2] = {code, offending_type};
    mcup_proto_send(MCUP_MSG_ERROR, seq, payload, sizeof payload);
}

void mcup_proto_handle(mcup_proto_state *st, const uint8_t *body, uint32_t len, uint32_t total)
{
    if (len < MCUP_FRAME_HEADER) {
        return; /* no seq to answer to */
    }
    const uint8_t type = body[1];
    const uint16_t seq = (uint16_t)(body[2] | (body[3] << 8));
    if (total > len) {
        send_error(seq, MCUP_ERR_TOO_LONG, type);
        return;
    }
    if (len < MCUP_FRAME_OVERHEAD) {
        send_error(seq, MCUP_ERR_BAD_LENGTH, type);
        return;
    }
    const uint32_t body_payload_len = len - MCUP_FRAME_OVERHEAD;
    if (mcup_crc32(0u, body, len - 4u) != get_u32(body + len - 4u)) {
        send_error(seq, MCUP_ERR_BAD_CRC, type);
        return;
    }
    if (body[0] != MCUP_PROTO_VERSION) {
        send_error(seq, MCUP_ERR_BAD_VERSION, type);
        return;
    }
    const mcup_handler *h = 0;
    for (uint32_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
        if (handlers[i].type == type) {
            h = &handlers[i];
            break;
        }
    }
    if (h == 0) {
        send_error(seq, MCUP_ERR_UNKNOWN_TYPE, type);
        return;
    }
    uint32_t payload_len = body_payload_len;
#if MCUP_SIGNED_UPDATES
    if (h->auth) {
        const int rc = check_authorization(type, body + MCUP_FRAME_HEADER, &payload_len);
        if (rc != 0) {
            send_error(seq, (uint8_t)rc, type);
            return;
        }
    }
#endif
    if (h->payload_len >= 0 && payload_len != (uint32_t)h->payload_len) {
        send_error(seq, MCUP_ERR_BAD_LENGTH, type);
        return;
    }
    int32_t n = h->fn(st, seq, body + MCUP_FRAME_HEADER, payload_len, reply_buf);
    if (n < 0) {
        send_error(seq, (uint8_t)-n, type);
        return;
    }
    mcup_proto_send((uint8_t)(type | MCUP_MSG_REPLY), seq, reply_buf, (uint32_t)n);
}
