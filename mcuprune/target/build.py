"""Assemble a self-contained firmware project for a board and build it with arm-none-eabi-gcc.

Project layout (fw_dir):
    Makefile, memory.ld      rendered from target/templates/ for the board
    common.ld                copied from firmware/bsp/
    src/                     board support + runtime + firmware/include headers + the chosen kernels; the code
                             generator adds model.h, model.c, model_data.c. Every src/*.c is built.
    build/firmware.elf       after `make` (or build_project)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from mcuprune import __version__
from mcuprune.errors import UserError, require_tool
from mcuprune.resources import BSP_DIR, INCLUDE_DIR, RUNTIME_DIR, TARGET_TEMPLATES_DIR
from mcuprune.target.board import Board, check_fits

PARAM_SYMBOL_PREFIX = "mcup_param_"  # model weights/constants; their sizes add up to model_flash_bytes
# Runtime sources only --params blob firmware compiles (model blob, slots, telemetry, mcup_bind's checks).
BLOB_ONLY_SOURCES = ("blob.c", "slots.c", "telemetry.c", "bind_check.c")
PARAMS_MODES = ("static", "blob")
_MANIFEST = ".mcuprune-files"  # what prepare_project copied, so a re-prepare can remove stale copies


@dataclass(frozen=True)
class BuildResult:
    elf: Path
    flash_bytes: int  # text + data: vector table, code, rodata, .data load image
    ram_bytes: int  # data + bss, including the reserved stack
    model_flash_bytes: int  # sum of the sizes of mcup_param_* symbols
    symbol_sizes: dict[str, int] = field(default_factory=dict)  # every sized symbol, bytes
    log: str = ""  # make's output


def _runtime_sources(board: Board, params: str = "static") -> list[Path]:
    """Runtime C/H files for the board: all of them, but only the UART driver of its UART type,
    and the BLOB_ONLY_SOURCES only for blob firmware (every header is copied either way)."""
    driver = BSP_DIR / f"uart_{board.uart.type}.c"
    if not driver.is_file():
        known = sorted(p.stem.removeprefix("uart_") for p in BSP_DIR.glob("uart_*.c"))
        raise UserError(f"board {board.name}: no UART driver for type {board.uart.type!r} "
                        f"(have: {', '.join(known)})")
    files = [p for folder in (BSP_DIR, RUNTIME_DIR) for p in sorted(folder.iterdir()) if p.suffix in (".c", ".h")]
    if params != "blob":
        files = [p for p in files if p.name not in BLOB_ONLY_SOURCES]
    return [p for p in files if not p.name.startswith("uart_") or p == driver]


def _render(template: str, **context: object) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TARGET_TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(template).render(version=__version__, **context)


def prepare_project(fw_dir: Path, board: Board, kernel_sources: list[Path], params: str = "static") -> None:
    """Copy runtime, headers, kernels and linker scripts into fw_dir and render Makefile and memory.ld.

    Files the code generator wrote into fw_dir/src (model.*) are left alone; files a previous
    prepare_project copied are removed first, so switching kernels or boards leaves nothing stale.
    `params` "blob" adds the blob-only runtime sources and the board's [slots] region
    (-DMCUP_SLOTS_BASE, -DMCUP_SLOTS_SIZE) to the build.
    """
    if params not in PARAMS_MODES:
        raise UserError(f"unknown params mode '{params}': choose one of {', '.join(PARAMS_MODES)}")
    if params == "blob" and board.slots is None:
        raise UserError(f"board {board.name} has no [slots] region: it cannot hold --params blob firmware")
    fw_dir = Path(fw_dir)
    src = fw_dir / "src"
    src.mkdir(parents=True, exist_ok=True)

    manifest = fw_dir / _MANIFEST
    if manifest.is_file():
        for name in manifest.read_text(encoding="utf-8").split():
            (fw_dir / name).unlink(missing_ok=True)

    copies: dict[str, Path] = {}  # destination relative to fw_dir -> source
    for path in _runtime_sources(board, params) + sorted(INCLUDE_DIR.glob("*.h")):
        copies[f"src/{path.name}"] = path
    for path in kernel_sources:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"kernel source {path} does not exist")
        dest = f"src/{path.name}"
        if dest in copies:
            raise UserError(f"kernel source {path} clashes with {copies[dest]}: same file name in src/ "
                            "(pass either the reference or the dsp twin, not both)")
        copies[dest] = path
    copies["common.ld"] = BSP_DIR / "common.ld"

    for dest, path in copies.items():
        shutil.copyfile(path, fw_dir / dest)
    context = {"board": board, "board_file": f"boards/{board.path.name}",
               "slots": board.slots if params == "blob" else None}
    (fw_dir / "Makefile").write_text(_render("Makefile.j2", **context), encoding="utf-8")
    (fw_dir / "memory.ld").write_text(_render("memory.ld.j2", **context), encoding="utf-8")
    manifest.write_text("\n".join(sorted(copies)) + "\n", encoding="utf-8")


def _first_error_line(output: str) -> str:
    lines = output.splitlines()
    for pattern in (r": (fatal )?error: ", r"undefined reference|multiple definition|will not fit|overflowed",
                    r"\*\*\* "):
        for line in lines:
            if re.search(pattern, line):
                return line.strip()
    return lines[-1].strip() if lines else "no output"


_OVERFLOW_RE = re.compile(r"region `(FLASH|RAM)' overflowed by (\d+) bytes")


def _raise_if_overflow(log: str, board: Board) -> None:
    """Turn ld's "region `FLASH' overflowed by N bytes" into one line with the board's numbers."""
    over = {region: int(n) for region, n in _OVERFLOW_RE.findall(log)}
    if not over:
        return
    sizes = {"FLASH": board.flash.length, "RAM": board.ram.length}
    check_fits(board, sizes["FLASH"] + over.get("FLASH", 0), sizes["RAM"] + over.get("RAM", 0))


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def build_project(fw_dir: Path, board: Board, jobs: int = 2) -> BuildResult:
    """Run make in fw_dir; returns the ELF and its flash/RAM/model sizes. Compiler errors -> UserError."""
    fw_dir = Path(fw_dir)
    require_tool("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    make = require_tool("make", "make")
    if not (fw_dir / "Makefile").is_file():
        raise UserError(f"{fw_dir} has no Makefile: run prepare_project first")
    if not (fw_dir / "src" / "model.h").is_file():
        raise UserError(f"{fw_dir / 'src'} has no model.h: generate the model code first")

    proc = _run([make, "-C", str(fw_dir), f"-j{max(1, jobs)}"])
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        _raise_if_overflow(log, board)
        raise UserError(f"firmware build for {board.name} failed: {_first_error_line(log)}")
    elf = fw_dir / "build" / "firmware.elf"

    size = _run([require_tool("arm-none-eabi-size", "binutils-arm-none-eabi"), "-B", "-d", str(elf)])
    # Berkeley format: "text data bss dec hex filename"; .stack is NOLOAD so it counts as bss.
    text, data, bss = (int(v) for v in size.stdout.splitlines()[1].split()[:3])

    nm = _run([require_tool("arm-none-eabi-nm", "binutils-arm-none-eabi"), "-S", "-t", "d", str(elf)])
    symbol_sizes: dict[str, int] = {}
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4:  # address size type name; unsized symbols have 3 fields
            symbol_sizes[parts[3]] = int(parts[1])
    model_bytes = sum(s for name, s in symbol_sizes.items() if name.startswith(PARAM_SYMBOL_PREFIX))
    check_fits(board, text + data, data + bss)
    return BuildResult(elf=elf, flash_bytes=text + data, ram_bytes=data + bss,
                       model_flash_bytes=model_bytes, symbol_sizes=symbol_sizes, log=log)
