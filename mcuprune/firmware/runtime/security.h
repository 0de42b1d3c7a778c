/*
 * security.h - who may change or stop this firmware (docs/protocol.md, "Signed updates").
 *
 * A firmware compiled with `--signing-key` gets a generated src/mcup_security.h that defines
 * MCUP_SIGNED_UPDATES 1, the owner's Ed25519 public key and its key id; then every model blob must
 * carry a valid signature by that key, and UPDATE_BEGIN, ROLLBACK, EXIT and INFER_FILE must carry an
 * authorization (signature.h). Without it (development builds, `--unsigned-updates`, and every
 * static-parameter build) MCUP_SIGNED_UPDATES is 0 and no command needs authority.
 */
#ifndef MCUP_SECURITY_H
#define MCUP_SECURITY_H

#if defined(__has_include)
#if __has_include("mcup_security.h")
#include "mcup_security.h"
#endif
#endif

#ifndef MCUP_SIGNED_UPDATES
#define MCUP_SIGNED_UPDATES 0
#endif

#endif /* MCUP_SECURITY_H */
