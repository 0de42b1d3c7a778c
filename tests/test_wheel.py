"""A wheel built from the repository works outside the source tree.

The wheel is installed into a fresh virtual environment in a temporary folder; the environment
sees the dependencies of the test environment (torch, numpy, ...) through a .pth file but not the
checkout, and every command runs with the temporary folder as its working directory. So the C
runtime, kernels, templates, board files and cost model it uses can only come from the wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bin folder of a fresh venv holding only the wheel, a working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(REPO)], cwd=root)
    (wheel,) = (root / "dist").glob("mcuprune-*.whl")
    env_dir = root / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    # The test environment's packages, after the new environment's own (so the wheel's mcuprune wins);
    # a path added by a .pth file is not scanned for .pth files, so the editable install stays out.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], cwd=root)
    work = root / "work"
    work.mkdir()
    where = _run([str(python), "-c", "import mcuprune; print(mcuprune.__file__)"], cwd=work).stdout.strip()
    assert Path(where).is_relative_to(env_dir) and not Path(where).is_relative_to(REPO)
    return env_dir / "bin", work


def test_wheel_lists_boards(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    out = _run([str(bin_dir / "mcuprune"), "boards"], cwd=work).stdout
    assert "mps2-an386" in out and "nucleo-f446re" in out


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                    reason="needs the ARM toolchain and QEMU")
def test_wheel_compiles_and_evaluates_in_qemu(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    cli = str(bin_dir / "mcuprune")
    _run([cli, "train", "--dataset", "digits", "--arch", "cnn", "--epochs", "5", "--out", "run"], cwd=work)
    _run([cli, "compile", "run", "--board", "mps2-an386", "--out", "fw"], cwd=work)
    result = json.loads(_run([cli, "evaluate", "fw", "--limit", "60", "--json"], cwd=work).stdout)
    assert result["samples"] == 60 and result["mismatches"] == 0
    # the firmware project was assembled from the installed package's files
    assert (work / "fw" / "build" / "firmware.elf").is_file()
    # so is the C library export: its API layer and build-file templates ship in the wheel
    _run([cli, "export", "fw", "--format", "c-library", "--out", "lib"], cwd=work)
    assert (work / "lib" / "src" / "mcup_model.h").is_file() and (work / "lib" / "zephyr" / "Kconfig").is_file()
