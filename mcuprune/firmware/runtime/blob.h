/*
 * blob.h - the model blob: every parameter of an updatable (--params blob) firmware, in one
 * byte string with a header, an array table and the arrays (docs/protocol.md, "Model blob").
 * Python twin: mcuprune/blob.py.
 *
 * blob.c checks what is independent of the model (header fields, CRCs); the generated model.c
 * checks the array table against the architecture and binds the layer structs (mcup_bind).
 */
#ifndef MCUP_BLOB_H
#define MCUP_BLOB_H

#include <stdint.h>

#define MCUP_BLOB_MAGIC 0x4250434Du /* "MCPB" */
#define MCUP_BLOB_FORMAT 1u
#define MCUP_BLOB_HEADER_BYTES 32u
#define MCUP_BLOB_TABLE_ENTRY_BYTES 8u /* u32 offset, u32 length */

typedef struct {
    uint32_t magic;
    uint16_t format;
    uint16_t header_bytes;
    uint32_t arch_hash;
    uint32_t length;   /* whole blob, header included */
    uint32_t blob_id;
    uint16_t n_arrays;
    uint16_t reserved;
    uint32_t data_crc;   /* CRC-32 of bytes 32..length */
    uint32_t header_crc; /* CRC-32 of bytes 0..28 */
} mcup_blob_header;

/*
 * Parse and check the 32-byte header at `hdr`: magic, format, header bytes, header CRC, and
 * 32 + 8 * n_arrays <= length <= capacity. Does not check the architecture hash (the caller
 * compares it with MCUP_ARCH_HASH, to report ARCH_MISMATCH separately). 0 or an mcup_error_code.
 */
int mcup_blob_parse_header(const uint8_t *hdr, uint32_t capacity, mcup_blob_header *out);

/* CRC-32 of the blob's bytes 32..h->length, compared with h->data_crc: 1 if it matches. */
int mcup_blob_data_ok(const uint8_t *blob, const mcup_blob_header *h);

/* Little-endian reads, for the generated mcup_bind() and the protocol handlers. */
static inline uint32_t mcup_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint16_t mcup_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

#endif /* MCUP_BLOB_H */
