"""Building the firmware's C for the host in tests: one set of flags, one build function.

Two kinds of build: shared libraries called through ctypes (-O2, like the firmware) and
executables under AddressSanitizer and UndefinedBehaviorSanitizer (-O1 -g, so a report names the
line). Both with the firmware's warnings as errors. Compiler errors fail the test with the
command and gcc's output.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from mcuprune.model.ops import kernel_sources
from mcuprune.resources import INCLUDE_DIR

HOST_CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror"]
SHARED_CFLAGS = ["-O2", "-shared", "-fPIC"]
SANITIZE_CFLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                   "-fno-sanitize-recover=all"]  # fmt: skip
# The DSP kernels build on the host with portable C definitions of the intrinsics (mcup_dsp.h).
VARIANT_DEFINES = {"reference": (), "dsp": ("MCUP_EMULATE_DSP",)}


def require(tool: str) -> str:
    """The tool's path; a test without it is skipped, or fails in CI (CI must run everything)."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI")
        pytest.skip(f"{tool} not installed")
    return path


def host_build(out: Path, sources: Iterable[Path | str], includes: Iterable[Path | str] = (),
               defines: Iterable[str] = (), shared: bool = False, text: str | None = None) -> Path:
    """Compiles `sources` with the host gcc into `out`: a shared library if `shared`, else an
    executable under ASan + UBSan. `defines` are NAME or NAME=VALUE. `text`: the C of one more
    source (a harness kept in the test module), written next to `out` as <out>.c."""
    gcc = require("gcc")
    sources = list(sources)
    if text is not None:
        sources.append(out.with_suffix(".c"))
        sources[-1].write_text(text)
    cmd = [gcc, *HOST_CFLAGS, *(SHARED_CFLAGS if shared else SANITIZE_CFLAGS), *(f"-D{d}" for d in defines),
           *(f"-I{i}" for i in includes), *map(str, sources), "-o", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-4000:]}"
    return out


def kernel_library(out: Path, variant: str, kernels, extra_sources: Iterable[Path] = ()) -> ctypes.CDLL:
    """The `variant` kernels of `kernels` ((op, format) pairs) and extra_sources as a shared
    library at `out`, loaded."""
    sources = [*kernel_sources(variant, kernels), *extra_sources]
    host_build(out, sources, [INCLUDE_DIR], VARIANT_DEFINES[variant], shared=True)
    return ctypes.CDLL(str(out))
