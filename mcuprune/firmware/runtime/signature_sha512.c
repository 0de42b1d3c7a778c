/*
 * signature_sha512.c - SUPERCOP's SHA-512 (public domain, fetched by scripts/fetch_crypto.sh into
 * src/third_party/) for signature.c; compiled to nothing unless the firmware is signed (security.h).
 */
#include "security.h"

#if MCUP_SIGNED_UPDATES
/* SUPERCOP spells out all 80 rounds, so crypto_hashblocks is ~31 KB of Thumb-2 code (-Os saves only
 * 0.7 KB): most of what a signed build adds to flash (bench/RESULTS.md, "Signed updates"). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include "third_party/sha512-blocks.c"
#include "third_party/sha512-hash.c"
#pragma GCC diagnostic pop
#endif
