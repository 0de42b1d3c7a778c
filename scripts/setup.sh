#!/usr/bin/env bash
# Sets up everything mcuprune needs on a Debian machine: the ARM toolchain, QEMU, the
# Fashion-MNIST package, and a virtualenv (.venv) with torch 2.13.0 (CPU) installed first.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# cmake, g++ and clang: the exported C library is built with CMake, its header with g++, and the
# library on the host with gcc and clang (tests/test_c_library.py).
APT_PACKAGES=(gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm dataset-fashion-mnist make gcc cmake g++ clang)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[setup] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
# torch first, pinned, so that nothing later pulls a CUDA build.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "[setup] pip install torch==2.13.0"
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
fi
echo "[setup] pip install -e .[test,tvm]"
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,tvm]"
# The Ed25519 verifier of signed-update firmware (Monocypher, SUPERCOP SHA-512), from PyPI sdists
# pinned by hash, into .venv/share/mcuprune-crypto: fetched, never committed (docs/protocol.md).
bash scripts/fetch_crypto.sh
echo "[setup] ready: $(.venv/bin/mcuprune --version), $(arm-none-eabi-gcc --version | head -1), $(qemu-system-arm --version | head -1)"
