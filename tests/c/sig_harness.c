/*
 * sig_harness.c - firmware/runtime/signature.c (Monocypher's Ed25519 check, SUPERCOP's SHA-512)
 * on the host under -fsanitize=address,undefined (tests/test_signing.py).
 *
 * stdin: cases, each u8 kind then
 *   kind 0 (blob): u32 length, the blob          -> stdout: i32 result, u32 counter (0 unless result 0)
 *   kind 1 (auth): u32 n, nonce[8], u8 type, signature[64], payload[n]  -> stdout: i32 result
 * Each input lives in a heap buffer of exactly its length, so ASan sees any read past it.
 */
#include <stdio.h>
#include <stdlib.h>

#include "signature.h"

static uint32_t read_u32(void)
{
    uint8_t b[4];
    if (fread(b, 1, 4, stdin) != 4) {
        exit(2);
    }
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

static uint8_t *read_exact(uint32_t n)
{
    uint8_t *p = malloc(n > 0 ? n : 1u);
    if (p == NULL || fread(p, 1, n, stdin) != n) {
        exit(2);
    }
    return p;
}

int main(void)
{
    int kind;
    while ((kind = getchar()) != EOF) {
        const uint32_t n = read_u32();
        int32_t out[2] = {0, 0};
        if (kind == 0) {
            uint8_t *blob = read_exact(n);
            const uint32_t flags = n >= 24u ? (uint32_t)blob[22] | ((uint32_t)blob[23] << 8) : 0u;
            uint32_t counter = 0;
            out[0] = n >= 32u ? mcup_sig_check_blob(blob, n, flags, &counter) : -1;
            out[1] = (int32_t)counter;
            fwrite(out, 4, 2, stdout);
            free(blob);
        } else {
            uint8_t *nonce = read_exact(MCUP_NONCE_BYTES);
            const int type = getchar();
            uint8_t *sig = read_exact(MCUP_SIG_BYTES);
            uint8_t *payload = read_exact(n);
            out[0] = mcup_sig_check_auth(nonce, (uint8_t)type, payload, n, sig);
            fwrite(out, 4, 1, stdout);
            free(nonce);
            free(sig);
            free(payload);
        }
    }
    return 0;
}
