"""`mcuprune import` and `mcuprune export` from the command line: a user's model in, a .tflite out,
and bad files refused with one line, exit status 2, no traceback and no run written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tflite_frontend import BAD_FILES, MLPERF_DIR

from mcuprune.frontend.tflite import import_tflite
from mcuprune.frontend.tflm import run_tflm
from mcuprune.model.interpreter import run_s8
from mcuprune.target.compile import load_firmware_dir
from mcuprune.train.datasets import to_int8
from mcuprune.train.runs import read_run_meta

BAD_FOR_CLI = ("truncated", "not_a_flatbuffer", "float_model", "int16_activations", "unsupported_operator")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcuprune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def assert_refused(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcuprune: error:") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(("data", "fragment"), [(b, f) for i, b, f in BAD_FILES if i in BAD_FOR_CLI],
                         ids=[i for i, _, _ in BAD_FILES if i in BAD_FOR_CLI])
def test_bad_tflite_is_refused_and_no_run_is_written(tmp_path: Path, data, fragment: str) -> None:
    (tmp_path / "bad.tflite").write_bytes(data())
    assert_refused(cli("import", "bad.tflite", "--out", "run", cwd=tmp_path), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tflite"]  # no run, no temporary folder


class _Sigmoid(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x))


def test_pt2_with_an_unsupported_op_is_refused(tmp_path: Path) -> None:
    torch.export.save(torch.export.export(_Sigmoid().eval(), (torch.zeros(1, 4),)), tmp_path / "m.pt2")
    assert_refused(cli("import", "m.pt2", "--out", "run", cwd=tmp_path), "aten.sigmoid.default")
    assert not (tmp_path / "run").exists()


def test_unknown_file_kind_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    assert_refused(cli("import", "model.onnx", "--out", "run", cwd=tmp_path), "unknown model file type .onnx")
    assert_refused(cli("import", "none.tflite", "--out", "run", cwd=tmp_path), "does not exist")


@pytest.mark.skipif(not MLPERF_DIR.is_dir(), reason=f"the MLPerf Tiny models are not in {MLPERF_DIR}")
def test_import_writes_a_quantized_run(tmp_path: Path) -> None:
    proc = cli("import", str(MLPERF_DIR / "kws_ref_model.tflite"), "--out", "kws", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["kind"] == "quantized" and summary["outputs"] == 12 and "depthwise_conv2d" in summary["ops"]
    assert read_run_meta(tmp_path / "kws")["source"] == "tflite"


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs the ARM toolchain")
def test_export_writes_a_tflite_that_tflm_runs_as_the_reference(digits_run, tmp_path: Path) -> None:
    run_dir, dataset = digits_run
    cli("compile", str(run_dir), "--out", "fw", cwd=tmp_path)
    proc = cli("export", "fw", "--format", "tflite", "--out", "digits.tflite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    fw = load_firmware_dir(tmp_path / "fw")
    x = to_int8(dataset.x_test)
    data = (tmp_path / "digits.tflite").read_bytes()
    np.testing.assert_array_equal(run_tflm(data, x), run_s8(fw.model, x))
    # a pruned or not, the int8 model comes back from the file as the same integers
    np.testing.assert_array_equal(run_s8(import_tflite(data, "back"), x), run_s8(fw.model, x))
    assert_refused(cli("export", "fw", "--out", "fw", cwd=tmp_path), "is a directory")
