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


# --- issue 12: nothing half-written, nonsense values refused -------------------------------------


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), to compare a folder byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _main_user_error(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    """mcuprune's main() in this process (no interpreter start-up): exit 2, one stderr line."""
    from mcuprune.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mcuprune: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_compile_out_naming_a_file_is_one_line_and_leaves_it(digits_run, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = digits_run
    target = tmp_path / "fw"
    target.write_text("precious")
    _main_user_error(["compile", str(run_dir), "--out", str(target)], capsys, str(target), "not a directory")
    assert target.read_text() == "precious"


def test_train_out_naming_a_file_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "run"
    target.write_text("precious")
    _main_user_error(["train", "--dataset", "digits", "--epochs", "1", "--out", str(target)], capsys, "not a directory")
    assert target.read_text() == "precious"


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "digits", "--epochs", "0", "--out", "RUN"],
    ["train", "--dataset", "digits", "--epochs", "-3", "--out", "RUN"],
    ["train", "--dataset", "digits", "--seed", "-1", "--out", "RUN"],
    ["evaluate", "FW", "--limit", "0"],
    ["prune", "RUN", "--flash-budget", "0"],
    ["prune", "RUN", "--kl-budget", "-0.5"],
    ["prune", "RUN", "--kl-budget", "nan"],
    ["prune", "RUN", "--finetune-epochs", "-1"],
    ["sweep", "RUN", "--budgets", "20000", "0"],
    ["powercut-test", "--trials", "0"],
    ["monitor", "--port", "loop://", "--run", "FW", "--samples", "0"],
    ["drift-demo", "--capture", "0"],
])
def test_nonsense_numbers_are_one_line_and_exit_2(argv: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / a) if a in ("RUN", "FW") else a for a in argv]
    _main_user_error(argv, capsys, "must be")
    assert not list(tmp_path.iterdir())  # nothing was created


def test_train_epochs_zero_through_the_real_cli(tmp_path: Path) -> None:
    """Before: --epochs 0 silently trained 40 epochs and exited 0."""
    proc = run_cli("train", "--dataset", "digits", "--epochs", "0", "--out", str(tmp_path / "run"))
    assert_user_error(proc, "--epochs must be at least 1, got 0")
    assert not (tmp_path / "run").exists()


def test_failed_compile_leaves_the_previous_firmware_byte_for_byte(digits_run, tmp_path: Path) -> None:
    """The second compile fails half-way (quantized and generated, then no cross-compiler): the first
    firmware directory is untouched and no temporary folder is left beside it."""
    run_dir, _ = digits_run
    fw = tmp_path / "fw"
    assert run_cli("compile", str(run_dir), "--out", str(fw)).returncode == 0
    before = _tree(fw)
    proc = run_cli("compile", str(run_dir), "--kernels", "reference", "--out", str(fw),
                   env=path_with(tmp_path, ["make"]))
    assert_user_error(proc, "arm-none-eabi-gcc")
    assert _tree(fw) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "fw"]
