/*
 * blob.c - model blob header and CRC checks (blob.h). Independent of the model, so it builds in
 * every firmware; only --params blob firmware calls it.
 */
#include "blob.h"

#include "crc32.h"
#include "protocol.h"

int mcup_blob_parse_header(const uint8_t *hdr, uint32_t capacity, mcup_blob_header *out)
{
    mcup_blob_header h;
    h.magic = mcup_get_u32(hdr + 0);
    h.format = mcup_get_u16(hdr + 4);
    h.header_bytes = mcup_get_u16(hdr + 6);
    h.arch_hash = mcup_get_u32(hdr + 8);
    h.length = mcup_get_u32(hdr + 12);
    h.blob_id = mcup_get_u32(hdr + 16);
    h.n_arrays = mcup_get_u16(hdr + 20);
    h.reserved = mcup_get_u16(hdr + 22);
    h.data_crc = mcup_get_u32(hdr + 24);
    h.header_crc = mcup_get_u32(hdr + 28);

    if (h.magic != MCUP_BLOB_MAGIC || h.format != MCUP_BLOB_FORMAT || h.header_bytes != MCUP_BLOB_HEADER_BYTES) {
        return MCUP_ERR_BAD_BLOB;
    }
    if (mcup_crc32(0u, hdr, 28u) != h.header_crc) {
        return MCUP_ERR_BAD_BLOB;
    }
    /* n_arrays is a u16, so the table size cannot overflow a u32. */
    const uint32_t table_end = MCUP_BLOB_HEADER_BYTES + MCUP_BLOB_TABLE_ENTRY_BYTES * (uint32_t)h.n_arrays;
    if (h.length < table_end || h.length > capacity) {
        return MCUP_ERR_BAD_BLOB;
    }
    *out = h;
    return 0;
}

int mcup_blob_data_ok(const uint8_t *blob, const mcup_blob_header *h)
{
    const uint32_t n = h->length - MCUP_BLOB_HEADER_BYTES; /* parse_header ensured length >= 32 */
    return mcup_crc32(0u, blob + MCUP_BLOB_HEADER_BYTES, n) == h->data_crc;
}
