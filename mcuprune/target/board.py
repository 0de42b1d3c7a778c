"""Target boards: one TOML file per board in the repo's ``boards/`` folder, validated by one schema.

Adding a board means adding a file (see docs/boards.md); nothing in the code names a board.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcuprune.errors import UserError
from mcuprune.resources import BOARDS_DIR

# Under QEMU's `-icount shift=0` every guest instruction advances virtual time by 2**0 ns.
NS_PER_INSTRUCTION = 1.0

DEFAULT_STACK_SIZE = 8192  # bytes reserved for the main stack when a board file does not say
DEFAULT_UART_BAUD = 115200

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # also safe to splice into a Makefile and a C string


@dataclass(frozen=True)
class MemoryRegion:
    origin: int  # bytes
    length: int  # bytes


@dataclass(frozen=True)
class RegisterWrite:
    """One read-modify-write the UART driver does before touching the UART: `*address = (*address & ~clear) | set`.

    Board files use these for what belongs to the board, not the UART: clock gates, pin muxing.
    """

    address: int
    clear: int  # bits cleared first
    set: int  # then these bits set


@dataclass(frozen=True)
class Uart:
    type: str  # selects firmware/runtime/uart_<type>.c
    base: int  # register block address
    baud: int
    clock_hz: int  # the clock the UART's baud-rate generator divides (APB clock on STM32), Hz
    init: tuple[RegisterWrite, ...] = ()  # board-level register writes before the UART is configured


@dataclass(frozen=True)
class Renode:
    platform: str  # Renode platform description, e.g. "platforms/cpus/stm32f4.repl" (shipped with Renode)
    uart: str  # the Renode peripheral wired to [uart], e.g. "sysbus.usart2"


SLOT_PERSISTENCE = ("qemu-memory-backend",)  # how a [slots] region survives a reset / power cut
SLOT_HEADER_BYTES = 4096  # the two slot records; the data areas start after them (docs/protocol.md)
SLOT_ALIGN = 4096  # slot data areas are whole multiples of this


@dataclass(frozen=True)
class SlotsRegion:
    """Persistent memory for the two model-blob slots of --params blob firmware (docs/protocol.md).

    ``qemu-memory-backend``: the QEMU machine's RAM, backed by a file through
    ``-object memory-backend-file``, so stores survive a killed QEMU.
    """

    base: int  # bytes
    size: int  # bytes
    persistence: str  # one of SLOT_PERSISTENCE

    @property
    def capacity(self) -> int:
        """Bytes per slot data area: half of what follows the records, rounded down to SLOT_ALIGN."""
        return (self.size - SLOT_HEADER_BYTES) // 2 // SLOT_ALIGN * SLOT_ALIGN


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    core: str  # GCC -mcpu name, e.g. "cortex-m4"
    cflags: tuple[str, ...]  # -mcpu/-mthumb/-mfloat-abi/-mfpu flags, compile and link
    dsp: bool  # core has the DSP extension -> DSP kernels
    fpu: bool
    clock_hz: int  # CPU and SysTick clock
    flash: MemoryRegion  # code + read-only data (+ .data load image)
    ram: MemoryRegion
    uart: Uart
    stack_size: int  # bytes
    qemu_machine: str | None  # `qemu-system-arm -M` name; None for boards QEMU does not model
    path: Path  # the file this board was read from
    renode: Renode | None = None  # None for boards Renode does not model
    qemu_wait_for_banner: bool = False  # QEMU's UART model drops input sent before the firmware is up
    flash_command: str | None = None  # shell command template for real hardware, "{elf}" is the ELF path
    slots: SlotsRegion | None = None  # None: no persistent blob slots, so no --params blob firmware

    def flash_command_for(self, elf: Path) -> str | None:
        """The command that programs `elf` into a real board of this kind (None: not a real board)."""
        return None if self.flash_command is None else self.flash_command.replace("{elf}", str(elf))

    @property
    def instructions_per_tick(self) -> float:
        """Guest instructions per SysTick tick when run under `-icount shift=0` (1 instruction = 1 ns)."""
        return 1e9 / self.clock_hz / NS_PER_INSTRUCTION


# The one schema: dotted key -> (expected type, required). "list[str]" is a list of strings.
_SCHEMA: dict[str, tuple[str, bool]] = {
    "name": ("str", True),
    "description": ("str", True),
    "core": ("str", True),
    "cflags": ("list[str]", True),
    "dsp": ("bool", True),
    "fpu": ("bool", True),
    "clock_hz": ("int", True),
    "stack_size": ("int", False),
    "memory.flash.origin": ("int", True),
    "memory.flash.length": ("int", True),
    "memory.ram.origin": ("int", True),
    "memory.ram.length": ("int", True),
    "uart.type": ("str", True),
    "uart.base": ("int", True),
    "uart.baud": ("int", False),
    "uart.clock_hz": ("int", False),
    "uart.init": ("list[reg]", False),
    "qemu.machine": ("str", False),
    "qemu.wait_for_banner": ("bool", False),
    "renode.platform": ("str", False),
    "renode.uart": ("str", False),
    "flash_command": ("str", False),
    "slots.base": ("int", False),
    "slots.size": ("int", False),
    "slots.persistence": ("str", False),
}
_TABLES = {"memory", "memory.flash", "memory.ram", "uart", "qemu", "renode", "slots"}
_SLOT_KEYS = ("slots.base", "slots.size", "slots.persistence")


def boards_dir() -> Path:
    """The folder holding the board files: $MCUPRUNE_BOARDS_DIR, else the boards/ folder shipped in the package."""
    env = os.environ.get("MCUPRUNE_BOARDS_DIR")
    return Path(env) if env else BOARDS_DIR


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)  # TOML true is not a number
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str) and value != ""
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    if kind == "list[reg]":  # [[address, clear, set], ...], each a 32-bit unsigned integer
        return isinstance(value, list) and all(
            isinstance(v, list) and len(v) == 3 and all(_type_ok(x, "int") and 0 <= x < 2**32 for x in v)
            for v in value
        )
    raise AssertionError(kind)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted in _TABLES:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _validate(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Check `data` against the schema; returns the flat dotted-key view. UserError names file and field."""
    flat = _flatten(data)
    for key in flat:
        if key not in _SCHEMA:
            raise UserError(f"board file {path}: unknown field `{key}`")
    for key, (kind, required) in _SCHEMA.items():
        if key not in flat:
            if required:
                raise UserError(f"board file {path}: missing field `{key}` ({kind})")
            continue
        if not _type_ok(flat[key], kind):
            raise UserError(f"board file {path}: field `{key}` must be {kind}, got {flat[key]!r}")
    name = flat["name"]
    if not _NAME_RE.match(name) or name != path.stem:
        raise UserError(f"board file {path}: field `name` must be lower-case [a-z0-9._-] and equal the "
                        f"file name ({path.stem!r}), got {name!r}")
    for key in ("clock_hz", "memory.flash.length", "memory.ram.length", "uart.baud", "uart.clock_hz", "stack_size"):
        if key in flat and flat[key] <= 0:
            raise UserError(f"board file {path}: field `{key}` must be > 0, got {flat[key]}")
    for key in ("memory.flash.origin", "memory.ram.origin", "uart.base"):
        if not 0 <= flat[key] < 2**32:
            raise UserError(f"board file {path}: field `{key}` must be a 32-bit address, got {flat[key]:#x}")
    if not re.match(r"^[a-z0-9_]+$", flat["uart.type"]):
        raise UserError(f"board file {path}: field `uart.type` must be [a-z0-9_], got {flat['uart.type']!r}")
    if ("renode.platform" in flat) != ("renode.uart" in flat):
        raise UserError(f"board file {path}: fields `renode.platform` and `renode.uart` go together")
    if "renode.platform" in flat and not re.match(r"^[A-Za-z0-9_./-]+\.repl$", flat["renode.platform"]):
        raise UserError(f"board file {path}: field `renode.platform` must be a .repl path, "
                        f"got {flat['renode.platform']!r}")
    if "renode.uart" in flat and not re.match(r"^[A-Za-z0-9_.]+$", flat["renode.uart"]):
        raise UserError(f"board file {path}: field `renode.uart` must be a Renode peripheral name, "
                        f"got {flat['renode.uart']!r}")
    if "flash_command" in flat and "{elf}" not in flat["flash_command"]:
        raise UserError(f"board file {path}: field `flash_command` must contain {{elf}}, got {flat['flash_command']!r}")
    if any(key in flat for key in _SLOT_KEYS) or isinstance(data.get("slots"), dict):
        _validate_slots(path, flat)
    return flat


def _validate_slots(path: Path, flat: dict[str, Any]) -> None:
    """[slots]: all three fields, page-aligned, room for two slots, clear of FLASH and RAM."""
    for key in _SLOT_KEYS:
        if key not in flat:
            raise UserError(f"board file {path}: table [slots] needs field `{key}`")
    base, size, persistence = (flat[key] for key in _SLOT_KEYS)
    if persistence not in SLOT_PERSISTENCE:
        raise UserError(f"board file {path}: field `slots.persistence` must be one of "
                        f"{', '.join(SLOT_PERSISTENCE)}, got {persistence!r}")
    if not 0 <= base < 2**32 or base % SLOT_ALIGN:
        raise UserError(f"board file {path}: field `slots.base` must be a 32-bit address aligned to "
                        f"{SLOT_ALIGN}, got {base:#x}")
    minimum = SLOT_HEADER_BYTES + 2 * SLOT_ALIGN
    if size < minimum or base + size > 2**32:
        raise UserError(f"board file {path}: field `slots.size` must be at least {minimum} and end below 4 GiB, "
                        f"got {size:#x}")
    for region in ("flash", "ram"):
        origin, length = flat[f"memory.{region}.origin"], flat[f"memory.{region}.length"]
        if base < origin + length and origin < base + size:
            raise UserError(f"board file {path}: [slots] {base:#x}+{size:#x} overlaps the {region.upper()} "
                            f"region {origin:#x}+{length:#x}")


def _read_board(path: Path) -> Board:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"board file {path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"board file {path}: invalid TOML: {exc}") from None
    f = _validate(path, data)
    return Board(
        name=f["name"],
        description=f["description"],
        core=f["core"],
        cflags=tuple(f["cflags"]),
        dsp=f["dsp"],
        fpu=f["fpu"],
        clock_hz=f["clock_hz"],
        flash=MemoryRegion(f["memory.flash.origin"], f["memory.flash.length"]),
        ram=MemoryRegion(f["memory.ram.origin"], f["memory.ram.length"]),
        uart=Uart(
            type=f["uart.type"],
            base=f["uart.base"],
            baud=f.get("uart.baud", DEFAULT_UART_BAUD),
            clock_hz=f.get("uart.clock_hz", f["clock_hz"]),
            init=tuple(RegisterWrite(*w) for w in f.get("uart.init", [])),
        ),
        stack_size=f.get("stack_size", DEFAULT_STACK_SIZE),
        qemu_machine=f.get("qemu.machine"),
        path=path,
        renode=Renode(f["renode.platform"], f["renode.uart"]) if "renode.platform" in f else None,
        flash_command=f.get("flash_command"),
        qemu_wait_for_banner=f.get("qemu.wait_for_banner", False),
        slots=SlotsRegion(f["slots.base"], f["slots.size"], f["slots.persistence"]) if "slots.base" in f else None,
    )


def list_boards() -> list[Board]:
    """Every board file in boards_dir(), validated, sorted by name."""
    folder = boards_dir()
    if not folder.is_dir():
        raise UserError(f"boards folder {folder} does not exist (set MCUPRUNE_BOARDS_DIR?)")
    return [_read_board(p) for p in sorted(folder.glob("*.toml"))]


def load_board(name: str) -> Board:
    """The board called `name`; unknown names raise a UserError listing the known boards."""
    path = boards_dir() / f"{name}.toml"
    if not _NAME_RE.match(name) or not path.is_file():
        known = ", ".join(p.stem for p in sorted(boards_dir().glob("*.toml"))) or "none"
        raise UserError(f"unknown board {name!r}; known boards: {known}")
    return _read_board(path)


def check_fits(board: Board, flash_bytes: int, ram_bytes: int, what: str = "firmware") -> None:
    """UserError, with the numbers, if `flash_bytes`/`ram_bytes` exceed the board's FLASH/RAM regions.

    Call it with the model's own needs before building (parameters in flash; activation arena,
    kernel scratch and the stack in RAM) to fail before the linker does, and with the linked
    sizes after (build.build_project does).
    """
    over = []
    if flash_bytes > board.flash.length:
        over.append(f"{flash_bytes:,} B of flash but the FLASH region is {board.flash.length:,} B")
    if ram_bytes > board.ram.length:
        over.append(f"{ram_bytes:,} B of RAM but the RAM region is {board.ram.length:,} B")
    if over:
        raise UserError(f"{what} does not fit board {board.name}: it needs " + " and ".join(over)
                        + f" ({board.path.name}); {_boards_that_fit(flash_bytes, ram_bytes)}")


def _boards_that_fit(flash_bytes: int, ram_bytes: int) -> str:
    """What to do when a model does not fit: the known boards whose regions would hold it."""
    fits = [b.name for b in list_boards() if flash_bytes <= b.flash.length and ram_bytes <= b.ram.length]
    if not fits:
        return "no known board holds it: use a smaller model (prune it)"
    return f"use a smaller model or a board that holds it: {', '.join(fits)}"
