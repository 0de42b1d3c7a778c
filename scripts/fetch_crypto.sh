#!/usr/bin/env bash
# Fetches the C code the signed-update firmware verifies Ed25519 signatures with (docs/protocol.md,
# "Signed updates"), from PyPI source distributions pinned by hash, into a folder that is not part of
# the repository: $MCUPRUNE_CRYPTO_DIR, default .venv/share/mcuprune-crypto (mcuprune/resources.py).
#   * Monocypher 4.0.2 (monocypher.c/.h; BSD-2-Clause or CC0-1.0), from the pymonocypher 4.0.2.8 sdist:
#     the curve arithmetic and the Ed25519 verification equation;
#   * SHA-512 from SUPERCOP (D. J. Bernstein, public domain), from the ed25519 1.5 sdist.
# Idempotent; works wherever pip reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${MCUPRUNE_CRYPTO_DIR:-.venv/share/mcuprune-crypto}
FILES=(monocypher.c monocypher.h sha512-blocks.c sha512-hash.c sha512.h LICENSE-monocypher LICENSE-ed25519)
if [ -f "$DEST/.complete" ]; then
  exit 0
fi
PIP=${PIP:-.venv/bin/pip}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/requirements.txt" <<'REQ'
pymonocypher==4.0.2.8 --hash=sha256:0f5bd73568ebff6301de328412855715e38937d63672021aa61185c1b02f3389
ed25519==1.5 --hash=sha256:02053ee019ceef0df97294be2d4d5a8fc120fc86e81e08bec1245fc0f9403358
REQ
echo "[setup] fetching Monocypher and SUPERCOP SHA-512 sources (PyPI sdists) -> $DEST"
"$PIP" download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
  --require-hashes -r "$tmp/requirements.txt" -d "$tmp" 2>/dev/null \
  || "$PIP" download -q --disable-pip-version-check --no-deps --no-binary :all: \
       --require-hashes -r "$tmp/requirements.txt" -d "$tmp"
tar -xzf "$tmp/pymonocypher-4.0.2.8.tar.gz" -C "$tmp"
tar -xzf "$tmp/ed25519-1.5.tar.gz" -C "$tmp"
mkdir -p "$DEST"
mono="$tmp/pymonocypher-4.0.2.8"
ref="$tmp/ed25519-1.5/src/ed25519-supercop-ref"
cp "$mono/monocypher.c" "$mono/monocypher.h" "$DEST/"
cp "$mono/LICENSE.txt" "$DEST/LICENSE-monocypher"
cp "$ref/sha512-blocks.c" "$ref/sha512-hash.c" "$ref/sha512.h" "$DEST/"
cp "$tmp/ed25519-1.5/LICENSE" "$DEST/LICENSE-ed25519"
for f in "${FILES[@]}"; do [ -f "$DEST/$f" ] || { echo "missing $f" >&2; exit 1; }; done
touch "$DEST/.complete"
