"""User errors through the real CLI: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcuprune", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mcuprune: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def path_with(tmp_path: Path, tools: list[str]) -> dict:
    """An environment whose PATH holds only the named tools (plus nothing else)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return dict(os.environ, PATH=str(bin_dir))


def test_unknown_board_lists_known_boards(digits_run, tmp_path: Path) -> None:
    run_dir, _ = digits_run
    proc = run_cli("compile", str(run_dir), "--board", "stm32-imaginary", "--out", str(tmp_path / "fw"))
    assert_user_error(proc, "stm32-imaginary", "mps2-an386", "mps2-an385")


def test_truncated_checkpoint(digits_run, tmp_path: Path) -> None:
    run_dir, _ = digits_run
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    ckpt = broken / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    proc = run_cli("compile", str(broken), "--out", str(tmp_path / "fw"))
    assert_user_error(proc, "checkpoint.pt", "corrupt or truncated", "mcuprune train")


def test_garbage_run_json(digits_run, tmp_path: Path) -> None:
    run_dir, _ = digits_run
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / "run.json").write_text("{not json")
    assert_user_error(run_cli("compile", str(broken), "--out", str(tmp_path / "fw")), "run.json", "corrupt")


def test_malformed_npz_dataset(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 4, 4), np.uint8), y=np.zeros(7, np.int64))
    assert_user_error(run_cli("train", "--dataset", str(bad), "--out", str(tmp_path / "run")), "'y'", "(10,)")


def test_missing_cross_compiler_names_apt_package(digits_run, tmp_path: Path) -> None:
    run_dir, _ = digits_run
    env = path_with(tmp_path, ["make"])
    proc = run_cli("compile", str(run_dir), "--out", str(tmp_path / "fw"), env=env)
    assert_user_error(proc, "arm-none-eabi-gcc", "apt-get install gcc-arm-none-eabi")


@pytest.mark.qemu
def test_missing_qemu_names_apt_package(digits_run, tmp_path: Path) -> None:
    run_dir, _ = digits_run
    fw = tmp_path / "fw"
    assert run_cli("compile", str(run_dir), "--out", str(fw)).returncode == 0
    env = path_with(tmp_path, ["make"])
    assert_user_error(run_cli("evaluate", str(fw), "--limit", "3", env=env),
                      "qemu-system-arm", "apt-get install qemu-system-arm")


def test_not_a_firmware_dir(tmp_path: Path) -> None:
    assert_user_error(run_cli("evaluate", str(tmp_path)), "not a firmware directory")


def test_boards_command_lists_default() -> None:
    proc = run_cli("boards")
    assert proc.returncode == 0 and "mps2-an386" in proc.stdout and "mps2-an385" in proc.stdout
