"""Every board file, end to end: the digits CNN compiled for it, run bit-exact in QEMU where QEMU
models the board, compiled and linked to fit for real boards; memory that cannot hold a model
is a one-line UserError with the numbers."""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mcuprune.device.qemu import QemuDevice
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import QuantModel
from mcuprune.target import build
from mcuprune.target.board import Board, MemoryRegion, check_fits, list_boards, load_board
from mcuprune.target.compile import choose_variant, compile_model, quantize_run
from mcuprune.train.datasets import to_int8

BOARDS = list_boards()
QEMU_BOARDS = [b.name for b in BOARDS if b.qemu_machine]
REAL_BOARDS = [b.name for b in BOARDS if b.flash_command]


def compile_for(model: QuantModel, board: Board, fw_dir: Path) -> build.BuildResult:
    """The compile stage for `board`, kernels chosen by its core (as `mcuprune compile` does)."""
    return compile_model(model, board, fw_dir, choose_variant(board, "auto")).build


@pytest.fixture(scope="module")
def digits_model(digits_run) -> tuple[QuantModel, np.ndarray, np.ndarray]:
    """(quantized digits CNN, int8 test inputs, the reference interpreter's logits for them)."""
    run_dir, ds = digits_run
    model = quantize_run(run_dir)
    x = to_int8(ds.x_test)
    return model, x, run_s8(model, x)


def test_boards_cover_the_issue() -> None:
    names = {b.name for b in BOARDS}
    assert {"mps2-an385", "mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547", "netduinoplus2"} <= set(QEMU_BOARDS)
    assert {"nucleo-f446re", "nucleo-h743zi", "nrf52840-dk"} <= set(REAL_BOARDS) <= names


# What the data sheets / QEMU sources say; the QEMU clocks are also measured by test_emulate's
# calibration loop (40, 40, 50, 31.25 and 5.95 instructions per tick).
FACTS = {
    # name: (core, dsp, clock_hz, flash origin, ram origin, uart type, uart base)
    "mps2-an500": ("cortex-m7", True, 25_000_000, 0x0000_0000, 0x2000_0000, "cmsdk", 0x4000_4000),
    "mps2-an505": ("cortex-m33", True, 20_000_000, 0x1000_0000, 0x3800_0000, "cmsdk", 0x4020_0000),
    "mps3-an547": ("cortex-m55", True, 32_000_000, 0x0000_0000, 0x2000_0000, "cmsdk", 0x4930_3000),
    "netduinoplus2": ("cortex-m4", True, 168_000_000, 0x0800_0000, 0x2000_0000, "stm32_usart", 0x4001_1000),
    "nucleo-f446re": ("cortex-m4", True, 16_000_000, 0x0800_0000, 0x2000_0000, "stm32_usart", 0x4000_4400),
    "nucleo-h743zi": ("cortex-m7", True, 64_000_000, 0x0800_0000, 0x2400_0000, "stm32_usart_v2", 0x4000_4800),
    "nrf52840-dk": ("cortex-m4", True, 64_000_000, 0x0000_0000, 0x2000_0000, "nrf_uarte", 0x4000_2000),
}


@pytest.mark.parametrize("name", sorted(FACTS))
def test_board_facts(name: str) -> None:
    core, dsp, clock, flash, ram, uart_type, uart_base = FACTS[name]
    board = load_board(name)
    assert (board.core, board.dsp, board.clock_hz) == (core, dsp, clock)
    assert (board.flash.origin, board.ram.origin) == (flash, ram)
    assert (board.uart.type, board.uart.base) == (uart_type, uart_base)
    assert f"-mcpu={core}" in board.cflags


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.name)
def test_dsp_flag_matches_the_compiler(board: Board) -> None:
    """`dsp = true` exactly when GCC, given the board's cflags, defines __ARM_FEATURE_DSP: the DSP
    kernels (which need it) are chosen for M4/M7/M33/M55 and the scalar ones for M3."""
    proc = subprocess.run(["arm-none-eabi-gcc", *board.cflags, "-dM", "-E", "-x", "c", "/dev/null"],
                          capture_output=True, text=True, check=True)
    assert ("#define __ARM_FEATURE_DSP 1" in proc.stdout) == board.dsp
    assert choose_variant(board, "auto") == ("dsp" if board.dsp else "reference")


@pytest.mark.qemu
@pytest.mark.parametrize("name", QEMU_BOARDS)
def test_digits_bit_exact_on_every_qemu_board(digits_model, tmp_path: Path, name: str,
                                              record_property: pytest.RecordProperty) -> None:
    model, x, expected = digits_model
    board = load_board(name)
    start = time.perf_counter()
    elf = compile_for(model, board, tmp_path / "fw").elf
    with QemuDevice(board, elf) as qemu:
        info = qemu.info()
        outs = qemu.infer_many(x, bulk=True)
    seconds = time.perf_counter() - start
    logits = np.stack([o.logits for o in outs])
    mismatches = int((logits != expected).any(axis=1).sum())
    instructions = float(np.mean([o.ticks for o in outs]) * board.instructions_per_tick)
    record_property("instructions_per_inference", round(instructions))
    print(f"{name}: {len(x)} images, {mismatches} mismatches, {instructions:,.0f} instructions/inference, "
          f"{seconds:.1f} s")
    assert (info.board, info.clock_hz) == (name, board.clock_hz)
    assert len(outs) == len(x) and mismatches == 0
    assert instructions > 0
    assert seconds < 15, f"{name} took {seconds:.1f} s: too slow for CI"


def _section_addresses(elf: Path) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the allocated sections, from arm-none-eabi-objdump -h."""
    out = subprocess.run(["arm-none-eabi-objdump", "-h", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    sections = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0].isdigit():
            sections[parts[1]] = (int(parts[3], 16), int(parts[2], 16))  # VMA, size
    return sections


@pytest.mark.parametrize("name", REAL_BOARDS)
def test_digits_builds_and_fits_every_real_board(digits_model, tmp_path: Path, name: str) -> None:
    model, _, _ = digits_model
    board = load_board(name)
    sizes = compile_for(model, board, tmp_path / "fw")
    assert 0 < sizes.model_flash_bytes < sizes.flash_bytes <= board.flash.length
    assert board.stack_size < sizes.ram_bytes <= board.ram.length
    sections = _section_addresses(sizes.elf)
    assert sections[".isr_vector"][0] == board.flash.origin  # where the core fetches SP and PC
    flash_end, ram_end = board.flash.origin + board.flash.length, board.ram.origin + board.ram.length
    for sec in (".isr_vector", ".text", ".rodata"):
        address, size = sections[sec]
        assert board.flash.origin <= address and address + size <= flash_end, sec
    for sec in (".data", ".bss", ".stack"):
        address, size = sections[sec]
        assert board.ram.origin <= address and address + size <= ram_end, sec
    command = board.flash_command_for(sizes.elf)
    assert command is not None and str(sizes.elf) in command


def test_check_fits_names_the_numbers() -> None:
    board = load_board("nucleo-f446re")
    check_fits(board, board.flash.length, board.ram.length)  # exactly full is fine
    with pytest.raises(UserError) as info:
        check_fits(board, 600_000, 1000, what="model")
    message = str(info.value)
    assert message.startswith("model does not fit board nucleo-f446re")
    assert "600,000 B of flash" in message and "524,288 B" in message and "RAM" not in message
    assert "\n" not in message
    with pytest.raises(UserError, match=r"200,000 B of RAM but the RAM region is 131,072 B"):
        check_fits(board, 1000, 200_000)


def test_linker_overflow_becomes_a_user_error_with_numbers(digits_model, tmp_path: Path) -> None:
    """A board too small for the model: the linker's 'region overflowed' turns into one line."""
    model, _, _ = digits_model
    real = load_board("mps2-an385")
    tiny = replace(real, flash=MemoryRegion(real.flash.origin, 8 * 1024))
    with pytest.raises(UserError) as info:
        compile_for(model, tiny, tmp_path / "fw")
    message = str(info.value)
    assert "does not fit board mps2-an385" in message and "FLASH region is 8,192 B" in message
    assert "\n" not in message


MINIMAL_BOARD = """name = "broken"
description = "a board file with one bad new field"
core = "cortex-m4"
cflags = ["-mcpu=cortex-m4", "-mthumb"]
dsp = true
fpu = false
clock_hz = 16_000_000
{top}
[memory.flash]
origin = 0x08000000
length = 0x80000
[memory.ram]
origin = 0x20000000
length = 0x20000
[uart]
type = "stm32_usart"
base = 0x40004400
{tables}
"""


@pytest.mark.parametrize(
    ("top", "tables", "field"),
    [
        ('flash_command = "pyocd flash"', "", "flash_command"),  # no {elf} placeholder
        ("", '[renode]\nplatform = "platforms/cpus/stm32f4.repl"', "renode.platform"),  # its uart is missing
        ("", '[renode]\nplatform = "stm32f4"\nuart = "sysbus.usart2"', "renode.platform"),  # not a .repl
        ("", '[qemu]\nmachine = "x"\nwait_for_banner = 1', "qemu.wait_for_banner"),
    ],
)
def test_new_fields_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, top: str, tables: str,
                                  field: str) -> None:
    (tmp_path / "broken.toml").write_text(MINIMAL_BOARD.format(top=top, tables=tables))
    monkeypatch.setenv("MCUPRUNE_BOARDS_DIR", str(tmp_path))
    with pytest.raises(UserError) as info:
        load_board("broken")
    assert f"`{field}`" in str(info.value) and "broken.toml" in str(info.value)


def test_minimal_board_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.toml").write_text(MINIMAL_BOARD.format(top="", tables=""))
    monkeypatch.setenv("MCUPRUNE_BOARDS_DIR", str(tmp_path))
    board = load_board("broken")
    assert board.uart.clock_hz == board.clock_hz and board.uart.init == () and board.renode is None
    assert board.flash_command_for(Path("x.elf")) is None and not board.qemu_wait_for_banner


@pytest.mark.parametrize("init", ["[[0x40023830, 0, 1, 4]]", "[[0x40023830, 0, -1]]", "[0x40023830]"])
def test_uart_init_must_be_address_clear_set_triples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     init: str) -> None:
    text = load_board("nucleo-f446re").path.read_text()
    start = text.index("init = [")
    end = text.index("]\n", text.index("\n]", start)) + 1
    (tmp_path / "broken.toml").write_text(text[:start].replace('name = "nucleo-f446re"', 'name = "broken"')
                                          + f"init = {init}" + text[end:])
    monkeypatch.setenv("MCUPRUNE_BOARDS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="`uart.init`"):
        load_board("broken")
