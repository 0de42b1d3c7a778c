"""Renode scripts. Renode itself is not installed here, so the generated files are checked by
structure: the .resc commands and paths, the .robot sections and keywords, the platform and UART
against what Renode ships, and the banner the robot test waits for against the line the same
firmware really prints (in QEMU, for the board both emulators model)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from mcuprune.device.qemu import QemuDevice
from mcuprune.errors import UserError
from mcuprune.target.board import Board, list_boards, load_board
from mcuprune.target.build import build_project, prepare_project
from mcuprune.target.renode import boot_banner, renode_test_command, run_renode, write_renode_files

STUB = Path(__file__).parent / "fixtures" / "stub_model"
RENODE_BOARDS = [b for b in list_boards() if b.renode is not None]

# Platforms and UART peripherals as Renode ships them (renode/renode: platforms/cpus/stm32f4.repl,
# platforms/cpus/stm32h743.repl -> stm32h7.repl, platforms/boards/nrf52840dk_nrf52840.repl ->
# platforms/cpus/nrf52840.repl): (platform, peripheral) -> register base address.
RENODE_UARTS = {
    ("platforms/cpus/stm32f4.repl", "sysbus.usart1"): 0x4001_1000,
    ("platforms/cpus/stm32f4.repl", "sysbus.usart2"): 0x4000_4400,
    ("platforms/cpus/stm32h743.repl", "sysbus.usart3"): 0x4000_4800,
    ("platforms/boards/nrf52840dk_nrf52840.repl", "sysbus.uart0"): 0x4000_2000,
}


def _build_stub(fw_dir: Path, board: Board) -> Path:
    prepare_project(fw_dir, board, [])
    for name in ("model.h", "model.c"):
        shutil.copyfile(STUB / name, fw_dir / "src" / name)
    return build_project(fw_dir, board).elf


@pytest.fixture(scope="module", params=RENODE_BOARDS, ids=lambda b: b.name)
def renode_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Board, Path, Path, Path]:
    board = request.param
    fw_dir = tmp_path_factory.mktemp(board.name)
    _build_stub(fw_dir, board)
    resc, robot = write_renode_files(fw_dir, board)
    return board, fw_dir, resc, robot


def test_the_issue_boards_have_renode_platforms() -> None:
    assert {b.name for b in RENODE_BOARDS} >= {"nucleo-f446re", "nucleo-h743zi", "nrf52840-dk", "netduinoplus2"}


def _resc_commands(resc: Path) -> list[str]:
    """Monitor commands of a .resc: no header (`:key: value`), comments or blank lines."""
    lines = [line.strip() for line in resc.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith(("#", ":"))]


def test_resc_loads_platform_elf_and_uart(renode_files: tuple[Board, Path, Path, Path]) -> None:
    board, fw_dir, resc, _ = renode_files
    assert board.renode is not None
    assert resc.name == f"{board.name}.resc" and resc.parent == fw_dir.resolve()
    assert resc.read_text().startswith(f":name: mcuprune {board.name}\n")
    commands = _resc_commands(resc)
    variables = dict(re.fullmatch(r"\$(\w+)\?=(.*)", c).groups() for c in commands if c.startswith("$"))
    assert variables["name"] == f'"{board.name}"'
    elf = Path(variables["elf"].removeprefix("@"))
    assert elf.is_absolute() and elf == (fw_dir / "build" / "firmware.elf").resolve() and elf.is_file()
    body = [c for c in commands if not c.startswith("$")]
    assert body == [
        "mach create $name",
        f"machine LoadPlatformDescription @{board.renode.platform}",
        "sysbus LoadELF $elf",
        f"sysbus.cpu VectorTableOffset 0x{board.flash.origin:08X}",
        f"showAnalyzer {board.renode.uart}",
    ]


def test_platform_and_uart_are_what_renode_ships(renode_files: tuple[Board, Path, Path, Path]) -> None:
    board = renode_files[0]
    assert board.renode is not None
    assert RENODE_UARTS[(board.renode.platform, board.renode.uart)] == board.uart.base


def _robot_sections(robot: Path) -> dict[str, list[str]]:
    """`*** Name ***` -> its non-empty lines, as Robot Framework splits a file."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in robot.read_text().splitlines():
        header = re.fullmatch(r"\*\*\* (.+?) \*\*\*", line.strip())
        if header:
            current = header.group(1)
            sections[current] = []
        elif line.strip():
            assert current is not None, f"text before the first section: {line!r}"
            sections[current].append(line)
    return sections


def _cells(line: str) -> list[str]:
    """Robot's space-separated format: cells are separated by two or more spaces."""
    return re.split(r"\s{2,}", line.strip())


def test_robot_waits_for_the_banner_on_the_uart(renode_files: tuple[Board, Path, Path, Path]) -> None:
    board, fw_dir, resc, robot = renode_files
    assert board.renode is not None
    sections = _robot_sections(robot)
    assert list(sections) == ["Settings", "Variables", "Test Cases"]
    assert _cells(sections["Settings"][0])[0] == "Documentation"
    variables = dict(_cells(line) for line in sections["Variables"])
    assert variables == {"${UART}": board.renode.uart,
                         "${BANNER}": f"mcuprune fw 0.1 proto 1 board {board.name} model stub"}
    cases = sections["Test Cases"]
    assert not cases[0].startswith(" ")  # the test case name
    steps = [_cells(line) for line in cases[1:]]
    assert all(line.startswith("    ") for line in cases[1:])  # steps are indented
    assert [s[0] for s in steps] == ["Execute Command", "Execute Command", "Create Terminal Tester",
                                     "Start Emulation", "Wait For Line On Uart"]
    elf_step, include_step = steps[0][1], steps[1][1]
    assert elf_step == "$elf=@${CURDIR}/build/firmware.elf"
    assert (robot.parent / "build" / "firmware.elf").is_file()
    assert include_step == f"include @${{CURDIR}}/{resc.name}" and (robot.parent / resc.name).is_file()
    assert steps[2][1] == "${UART}" and steps[2][2].startswith("timeout=")
    assert steps[4][1:] == ["${BANNER}"]


@pytest.mark.qemu
def test_banner_is_what_the_firmware_prints(tmp_path: Path) -> None:
    """netduinoplus2 runs in QEMU and in Renode: the banner the robot file expects is the first
    line the same ELF writes to its UART."""
    board = load_board("netduinoplus2")
    elf = _build_stub(tmp_path, board)
    with QemuDevice(board, elf) as qemu:
        qemu.info()
        printed = qemu.device.last_output()
    assert printed == boot_banner(tmp_path, board)
    _, robot = write_renode_files(tmp_path, board)
    assert f"${{BANNER}}         {printed}\n" in robot.read_text()


def test_board_without_renode_platform_is_user_error(tmp_path: Path) -> None:
    board = next(b for b in list_boards() if b.renode is None)
    with pytest.raises(UserError, match="Renode does not model it"):
        write_renode_files(tmp_path, board)
    with pytest.raises(UserError, match="Renode does not model it"):
        run_renode(tmp_path, board)


def test_renode_files_need_a_built_firmware(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="build the firmware"):
        write_renode_files(tmp_path, RENODE_BOARDS[0])


def test_run_renode_without_renode_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board = RENODE_BOARDS[0]
    _build_stub(tmp_path / "fw", board)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no renode, no renode-test
    with pytest.raises(UserError) as info:
        run_renode(tmp_path / "fw", board)
    message = str(info.value)
    assert message.startswith("Renode is not installed") and "renode-test" in message and "renode.io" in message
    assert "\n" not in message


@pytest.mark.skipif(shutil.which("renode-test") is None, reason="Renode is not installed on this machine")
def test_renode_runs_the_banner_test(tmp_path: Path) -> None:
    """Only where Renode is installed: the generated robot test passes in Renode."""
    renode_test_command()
    for board in RENODE_BOARDS:
        _build_stub(tmp_path / board.name, board)
        assert run_renode(tmp_path / board.name, board).returncode == 0
