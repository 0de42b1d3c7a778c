"""Where the files that ship inside the package live: C firmware, Jinja templates, board files, costs.

They are package data (pyproject.toml, ``[tool.setuptools.package-data]``), located through
``importlib.resources`` so that a wheel installed anywhere finds them, not only a source checkout.
The build copies them by path into a firmware project, so the package must be installed as files
(pip's default), not run from a zip archive.
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files
from pathlib import Path


def package_path(*parts: str) -> Path:
    """A file or folder inside the installed mcuprune package."""
    return Path(str(files("mcuprune").joinpath(*parts)))


FIRMWARE_DIR = package_path("firmware")
KERNEL_DIR = FIRMWARE_DIR / "kernels"  # reference/ and optimized twins (dsp/)
INCLUDE_DIR = FIRMWARE_DIR / "include"  # kernel headers
RUNTIME_DIR = FIRMWARE_DIR / "runtime"  # main loop, protocol, blob, slots, telemetry
BSP_DIR = FIRMWARE_DIR / "bsp"  # board support: startup, UART drivers, SysTick, semihosting, linker script
TVM_FIRMWARE_DIR = FIRMWARE_DIR / "tvm"
CODEGEN_TEMPLATES_DIR = package_path("codegen", "templates")
TARGET_TEMPLATES_DIR = package_path("target", "templates")
BOARDS_DIR = package_path("target", "boards")  # MCUPRUNE_BOARDS_DIR overrides it (target/board.py)
KERNEL_COSTS_PATH = package_path("model", "kernel_costs.json")
OP_COSTS_PATH = package_path("model", "op_costs.json")  # non-weighted ops and depthwise (model/op_costs.py)


# Third-party C of signed-update firmware (Monocypher, SUPERCOP SHA-512): fetched, not shipped, by
# scripts/fetch_crypto.sh (scripts/setup.sh runs it) into the virtualenv unless MCUPRUNE_CRYPTO_DIR says where.
CRYPTO_SOURCES = ("monocypher.c", "monocypher.h", "sha512-blocks.c", "sha512-hash.c", "sha512.h")


def crypto_dir() -> Path:
    return Path(os.environ.get("MCUPRUNE_CRYPTO_DIR") or Path(sys.prefix) / "share" / "mcuprune-crypto")
