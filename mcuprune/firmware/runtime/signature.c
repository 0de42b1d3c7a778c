/*
 * signature.c - Ed25519 verification of signed blobs and authorised requests (signature.h).
 * Compiled to nothing unless the firmware was built with a signing key (security.h).
 *
 * The third-party code is compiled here (Monocypher) and in signature_sha512.c (SHA-512), as part of
 * those files, from src/third_party/ (copied into the firmware project by the compile stage from what
 * scripts/fetch_crypto.sh fetched): it is not ours to reformat, so its warnings are silenced there
 * rather than the project's -Werror relaxed. Two files, because both define a static `iv`.
 */
#include "security.h"

#if MCUP_SIGNED_UPDATES

#include "signature.h"

#include <string.h>

#include "model.h"
#include "protocol.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wconversion"
#include "third_party/monocypher.c"
#pragma GCC diagnostic pop
#include "third_party/sha512.h" /* SUPERCOP's, compiled in signature_sha512.c */

#define DIGEST_BYTES 64u
#define DOMAIN_BYTES 16u
#define BLOB_MANIFEST_BYTES (DOMAIN_BYTES + 24u + DIGEST_BYTES)
#define AUTH_MESSAGE_BYTES (DOMAIN_BYTES + MCUP_NONCE_BYTES + 4u + 1u + DIGEST_BYTES)
#define MAX_MESSAGE_BYTES BLOB_MANIFEST_BYTES

_Static_assert(AUTH_MESSAGE_BYTES <= MAX_MESSAGE_BYTES, "the buffer holds both messages");

static const uint8_t public_key[32] = MCUP_UPDATE_PUBLIC_KEY;
static const uint8_t key_id[MCUP_KEY_ID_BYTES] = MCUP_UPDATE_KEY_ID;

const uint8_t *mcup_sig_key_id(void)
{
    return key_id;
}

static void sha512(uint8_t out[DIGEST_BYTES], const uint8_t *data, uint32_t len)
{
    crypto_hash_sha512(out, data, len);
}

/* RFC 8032 verification of `sig` over the message: h = SHA-512(R | A | message) reduced mod L,
 * then Monocypher's check of [s]B = R + [h]A (s < L, points on the curve). 0 if it holds. */
static int ed25519_check(const uint8_t sig[MCUP_SIG_BYTES], const uint8_t *message, uint32_t len)
{
    uint8_t buf[64u + MAX_MESSAGE_BYTES];
    uint8_t hram[DIGEST_BYTES];
    uint8_t h[32];
    memcpy(buf, sig, 32u);             /* R */
    memcpy(buf + 32u, public_key, 32u); /* A */
    memcpy(buf + 64u, message, len);
    sha512(hram, buf, 64u + len);
    crypto_eddsa_reduce(h, hram);
    return crypto_eddsa_check_equation(sig, public_key, h) == 0 ? 0 : -1;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

int mcup_sig_check_blob(const uint8_t *blob, uint32_t length, uint32_t flags, uint32_t *counter)
{
    if ((flags & MCUP_BLOB_FLAG_SIGNED) == 0u || length < 32u + MCUP_SIG_TRAILER_BYTES) {
        return MCUP_ERR_UNSIGNED;
    }
    const uint8_t *trailer = blob + length - MCUP_SIG_TRAILER_BYTES;
    if (get_u32(trailer) != MCUP_SIG_MAGIC) {
        return MCUP_ERR_UNSIGNED;
    }
    if (memcmp(trailer + 8u, key_id, MCUP_KEY_ID_BYTES) != 0) {
        return MCUP_ERR_WRONG_KEY;
    }
    uint8_t manifest[BLOB_MANIFEST_BYTES];
    memcpy(manifest, "mcuprune blob v1", DOMAIN_BYTES);
    memcpy(manifest + DOMAIN_BYTES, blob, 24u);
    sha512(manifest + DOMAIN_BYTES + 24u, blob + 32u, length - 32u - MCUP_SIG_BYTES);
    if (ed25519_check(trailer + 16u, manifest, sizeof manifest) != 0) {
        return MCUP_ERR_BAD_SIGNATURE;
    }
    *counter = get_u32(trailer + 4u);
    return 0;
}

int mcup_sig_check_auth(const uint8_t nonce[MCUP_NONCE_BYTES], uint8_t type, const uint8_t *payload,
                        uint32_t len, const uint8_t sig[MCUP_SIG_BYTES])
{
    uint8_t message[AUTH_MESSAGE_BYTES];
    const uint32_t arch = (uint32_t)MCUP_ARCH_HASH;
    uint32_t n = 0;
    memcpy(message, "mcuprune auth v1", DOMAIN_BYTES);
    n += DOMAIN_BYTES;
    memcpy(message + n, nonce, MCUP_NONCE_BYTES);
    n += MCUP_NONCE_BYTES;
    for (uint32_t i = 0; i < 4u; i++) {
        message[n++] = (uint8_t)(arch >> (8u * i));
    }
    message[n++] = type;
    sha512(message + n, payload, len);
    return ed25519_check(sig, message, sizeof message);
}

#endif /* MCUP_SIGNED_UPDATES */
