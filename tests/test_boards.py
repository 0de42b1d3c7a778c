"""Board files: every one passes the schema, the mps2 facts are right, errors name file and field."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mcuprune.errors import UserError
from mcuprune.resources import BOARDS_DIR, BSP_DIR, RUNTIME_DIR, TARGET_TEMPLATES_DIR
from mcuprune.target.board import Board, boards_dir, list_boards, load_board

REPO = Path(__file__).resolve().parent.parent
BOARD_FILES = sorted(BOARDS_DIR.glob("*.toml"))


def test_there_are_board_files() -> None:
    assert {p.stem for p in BOARD_FILES} >= {"mps2-an385", "mps2-an386"}


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.stem)
def test_every_board_file_passes_the_schema(path: Path) -> None:
    board = load_board(path.stem)
    assert board.name == path.stem and board.path == path
    assert all(isinstance(f, str) and f.startswith("-") for f in board.cflags)
    assert board.clock_hz > 0 and board.stack_size > 0
    assert board.flash.length > 0 and board.ram.length > board.stack_size
    assert (BSP_DIR / f"uart_{board.uart.type}.c").is_file()


def test_list_boards_matches_files() -> None:
    assert [b.name for b in list_boards()] == [p.stem for p in BOARD_FILES]


# What QEMU's hw/arm/mps2.c and the AN385/AN386 notes say about these two boards.
MPS2 = {
    "mps2-an386": ("cortex-m4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                   True, True),
    "mps2-an385": ("cortex-m3", ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"), False, False),
}


@pytest.mark.parametrize("name", sorted(MPS2))
def test_mps2_facts(name: str) -> None:
    core, cflags, dsp, fpu = MPS2[name]
    board = load_board(name)
    assert (board.core, board.cflags, board.dsp, board.fpu) == (core, cflags, dsp, fpu)
    assert board.clock_hz == 25_000_000
    assert (board.flash.origin, board.flash.length) == (0x0000_0000, 4 * 1024 * 1024)
    assert (board.ram.origin, board.ram.length) == (0x2000_0000, 4 * 1024 * 1024)
    assert (board.uart.type, board.uart.base) == ("cmsdk", 0x4000_4000)
    assert board.qemu_machine == name
    assert board.stack_size == 8192


def test_instructions_per_tick() -> None:
    board = load_board("mps2-an386")
    assert board.instructions_per_tick == pytest.approx(40.0)  # 1 ns per instruction, 40 ns per tick


def test_unknown_board_lists_known_boards() -> None:
    with pytest.raises(UserError) as info:
        load_board("mps3-an999")
    message = str(info.value)
    assert "mps3-an999" in message and "mps2-an385" in message and "mps2-an386" in message
    assert "\n" not in message


def test_board_names_are_not_paths() -> None:
    with pytest.raises(UserError, match="unknown board"):
        load_board("../boards/mps2-an386")


def _write_board(folder: Path, name: str, edit: dict[str, str]) -> Path:
    """A copy of mps2-an386.toml named `name`, with lines starting `key =` replaced or removed."""
    lines = (BOARDS_DIR / "mps2-an386.toml").read_text().splitlines()
    edit = {"name": f'name = "{name}"', **edit}
    out = []
    for line in lines:
        key = line.split("=")[0].strip()
        if key in edit:
            if edit[key]:
                out.append(edit[key])
            continue
        out.append(line)
    path = folder / f"{name}.toml"
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"core": ""}, "core"),  # missing
        ({"clock_hz": 'clock_hz = "fast"'}, "clock_hz"),  # ill-typed
        ({"clock_hz": "clock_hz = true"}, "clock_hz"),  # a bool is not a number
        ({"dsp": "dsp = 1"}, "dsp"),
        ({"cflags": 'cflags = "-mcpu=cortex-m4"'}, "cflags"),  # a string, not a list
        ({"base": 'base = "0x40004000"'}, "uart.base"),
        ({"stack_size": "stack_size = 0"}, "stack_size"),
        ({"fpu": "fpu = true\nflash_kb = 4096"}, "flash_kb"),  # unknown field (typo guard)
    ],
)
def test_schema_errors_name_file_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           edit: dict[str, str], field: str) -> None:
    path = _write_board(tmp_path, "broken-board", edit)
    monkeypatch.setenv("MCUPRUNE_BOARDS_DIR", str(tmp_path))
    with pytest.raises(UserError) as info:
        load_board("broken-board")
    assert str(path) in str(info.value) and f"`{field}`" in str(info.value)


def test_name_must_match_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_board(tmp_path, "other", {"name": 'name = "mps2-an386"'})
    monkeypatch.setenv("MCUPRUNE_BOARDS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="`name`"):
        load_board("other")


def test_invalid_toml_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.toml").write_text("name = \n")
    monkeypatch.setenv("MCUPRUNE_BOARDS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="invalid TOML"):
        load_board("bad")


def test_adding_a_board_is_adding_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real board QEMU does not model: no [qemu] table, its own memory map and clock.
    _write_board(tmp_path, "my-m4-board", {"clock_hz": "clock_hz = 80_000_000", "machine": "", "[qemu]": ""})
    monkeypatch.setenv("MCUPRUNE_BOARDS_DIR", str(tmp_path))
    assert boards_dir() == tmp_path
    board = load_board("my-m4-board")
    assert isinstance(board, Board) and board.qemu_machine is None
    assert board.instructions_per_tick == pytest.approx(12.5)
    assert [b.name for b in list_boards()] == ["my-m4-board"]


def test_board_files_are_plain_toml_for_other_tools() -> None:
    for path in BOARD_FILES:
        data = tomllib.loads(path.read_text())
        assert data["name"] == path.stem


def test_no_board_is_named_in_runtime_code() -> None:
    """Everything board-specific comes from the board file, never from `if board == ...`."""
    package = REPO / "mcuprune"
    files = [package / f for f in ("target/board.py", "target/build.py", "device/link.py", "device/qemu.py",
                                 "device/frames.py", "device/messages.py")]
    files += sorted(RUNTIME_DIR.iterdir()) + sorted(BSP_DIR.iterdir())
    files += [TARGET_TEMPLATES_DIR / "Makefile.j2", TARGET_TEMPLATES_DIR / "memory.ld.j2"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"mps2|an38[56]", text, re.IGNORECASE), path
