"""Renode scripts for a firmware directory: a ``.resc`` that loads the board's platform and the
ELF and shows its UART, and a Robot Framework ``.robot`` test that waits for the boot banner.

Which Renode platform models a board, and which of its peripherals is the board's UART, come
from the board file's ``[renode]`` table; boards without one cannot run in Renode. Renode is not
needed to write the files, only to run them (``run_renode``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jinja2

from mcuprune import __version__
from mcuprune.errors import UserError
from mcuprune.resources import TARGET_TEMPLATES_DIR
from mcuprune.target.board import Board

ELF_RELATIVE = "build/firmware.elf"  # where build.build_project leaves the ELF in a firmware directory
BANNER_TIMEOUT_S = 10  # virtual seconds the robot test waits for the banner
INSTALL_HINT = ("install Renode from https://renode.io (the renode_*.deb from its GitHub releases, "
                "or the antmicro/renode Docker image), which provides `renode` and `renode-test`")


@dataclass(frozen=True)
class RenodeResult:
    robot: Path
    returncode: int
    log: str


def _define(src: Path, name: str) -> str:
    """The value of `#define name value` in a C file (string quotes kept off)."""
    text = src.read_text(encoding="utf-8")
    match = re.search(rf"^#define {name}\s+(\S+)", text, re.MULTILINE)
    if not match:
        raise UserError(f"{src} does not define {name}: generate the firmware sources first")
    return match.group(1).strip('"').removesuffix("u")


def boot_banner(fw_dir: Path, board: Board) -> str:
    """The first UART line the firmware prints (firmware/runtime/main.c), from the project's headers."""
    src = Path(fw_dir) / "src"
    major = _define(src / "protocol.h", "MCUP_FW_VERSION_MAJOR")
    minor = _define(src / "protocol.h", "MCUP_FW_VERSION_MINOR")
    proto = _define(src / "protocol.h", "MCUP_PROTO_VERSION")
    model = _define(src / "model.h", "MCUP_MODEL_NAME")
    return f"mcuprune fw {major}.{minor} proto {proto} board {board.name} model {model}"


def _require_platform(board: Board) -> None:
    if board.renode is None:
        raise UserError(f"board {board.name} has no [renode] table: Renode does not model it "
                        f"(boards with one: see docs/boards.md)")


def write_renode_files(fw_dir: Path, board: Board) -> list[Path]:
    """Write <board>.resc and <board>.robot into fw_dir (which holds the built firmware project);
    returns their paths. Boards without a [renode] table -> UserError."""
    _require_platform(board)
    fw_dir = Path(fw_dir).resolve()
    elf = fw_dir / ELF_RELATIVE
    if not elf.is_file():
        raise UserError(f"{elf} does not exist: build the firmware before writing Renode files")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TARGET_TEMPLATES_DIR), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    resc = fw_dir / f"{board.name}.resc"
    robot = fw_dir / f"{board.name}.robot"
    context = {
        "version": __version__,
        "board": board,
        "board_file": f"boards/{board.path.name}",
        "elf": elf,
        "elf_relative": ELF_RELATIVE,
        "resc_name": resc.name,
        "robot_name": robot.name,
        "banner": boot_banner(fw_dir, board),
        "timeout": BANNER_TIMEOUT_S,
    }
    resc.write_text(env.get_template("renode.resc.j2").render(**context), encoding="utf-8")
    robot.write_text(env.get_template("renode.robot.j2").render(**context), encoding="utf-8")
    return [resc, robot]


def renode_test_command() -> str:
    """Path of `renode-test`; UserError saying Renode is not installed and how to get it."""
    found = shutil.which("renode-test")
    if found is None or shutil.which("renode") is None:
        raise UserError(f"Renode is not installed (`renode` and `renode-test` are not on PATH): {INSTALL_HINT}")
    return found


def run_renode(fw_dir: Path, board: Board, timeout: float = 300.0) -> RenodeResult:
    """Write the Renode files and run the robot test with renode-test; a failing test -> UserError."""
    _require_platform(board)
    command = renode_test_command()
    _, robot = write_renode_files(fw_dir, board)
    try:
        proc = subprocess.run([command, str(robot)], cwd=robot.parent, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"renode-test {robot.name} did not finish within {timeout:.0f} s") from None
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        last = next((line.strip() for line in reversed(log.splitlines()) if line.strip()), "no output")
        raise UserError(f"renode-test {robot.name} failed (exit {proc.returncode}): {last}")
    return RenodeResult(robot, proc.returncode, log)
