/*
 * signature.h - Ed25519 checks of signed model blobs and of authorised requests (docs/protocol.md,
 * "Signed updates"); only built into firmware with MCUP_SIGNED_UPDATES (security.h).
 *
 * A signed blob has bit 0 of the header's flags field (bytes 22..24, "reserved" in format 1) set
 * and ends with an 80-byte trailer: u32 magic "MCSG", u32 security counter, u8 key id[8] (the first
 * 8 bytes of SHA-512 of the signer's public key), u8 signature[64]. The signature is Ed25519 (RFC
 * 8032) over the 104-byte manifest
 *     "mcuprune blob v1" | blob bytes 0..24 | SHA-512(blob bytes 32..length-64)
 * so it covers the header (architecture hash, length, blob id, array count, flags) and everything
 * after it up to the signature, the counter and key id included; the two CRCs (bytes 24..32)
 * follow from those bytes and the signature, and are checked as before.
 *
 * An authorization is 72 bytes appended to a request's payload: the device nonce (u32 boot epoch,
 * u32 sequence; INFO reports it) and an Ed25519 signature over the 93-byte message
 *     "mcuprune auth v1" | nonce | u32 architecture hash | u8 request type | SHA-512(payload before it)
 * The nonce changes after every accepted authorization and at every boot, so each one works once.
 *
 * The curve arithmetic and the verification equation are Monocypher's (crypto_eddsa_reduce,
 * crypto_eddsa_check_equation), SHA-512 is SUPERCOP's; scripts/fetch_crypto.sh fetches both.
 */
#ifndef MCUP_SIGNATURE_H
#define MCUP_SIGNATURE_H

#include <stdint.h>

#define MCUP_BLOB_FLAG_SIGNED 1u
#define MCUP_SIG_MAGIC 0x4753434Du /* "MCSG" */
#define MCUP_SIG_TRAILER_BYTES 80u
#define MCUP_SIG_BYTES 64u
#define MCUP_KEY_ID_BYTES 8u
#define MCUP_NONCE_BYTES 8u
#define MCUP_AUTH_BYTES (MCUP_NONCE_BYTES + MCUP_SIG_BYTES) /* appended to an authorised request */

/*
 * Check the signature of the `length`-byte blob at `blob` whose header flags are `flags`: 0 and
 * its security counter in *counter, or MCUP_ERR_UNSIGNED (no signature trailer),
 * MCUP_ERR_WRONG_KEY (signed by another key) or MCUP_ERR_BAD_SIGNATURE (the signature does not
 * verify: the blob was changed after signing, or forged).
 */
int mcup_sig_check_blob(const uint8_t *blob, uint32_t length, uint32_t flags, uint32_t *counter);

/* 0 if `sig` is the owner's signature of the authorization message of (nonce, type, payload). */
int mcup_sig_check_auth(const uint8_t nonce[MCUP_NONCE_BYTES], uint8_t type, const uint8_t *payload,
                        uint32_t len, const uint8_t sig[MCUP_SIG_BYTES]);

/* The owner's key id (MCUP_KEY_ID_BYTES). */
const uint8_t *mcup_sig_key_id(void);

#endif /* MCUP_SIGNATURE_H */
