"""A user's own PyTorch model through the front door, end to end: written here with batch norm, a
residual add, a depthwise conv and global average pooling; trained on digits; saved with
torch.export.save; `mcuprune import` -> `compile` (quantized with calibration data) -> `evaluate` in
QEMU. The device must equal the int8 reference on every output, and int8 accuracy must stay within
1 pp of the float model's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mcuprune.train.datasets import load_digits, to_float
from mcuprune.train.training import accuracy, fit, torch_predict_logits

pytestmark = [pytest.mark.qemu, pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="needs the ARM toolchain and QEMU")]


class UserNet(nn.Module):
    """What a user might write: conv-BN-ReLU stem, a depthwise-separable residual block, GAP, linear."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift  # the inputs the user's model expects: (x - shift) * scale
        self.stem = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12),
                                       nn.ReLU6())
        self.pointwise = nn.Sequential(nn.Conv2d(12, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.down = nn.Sequential(nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.pointwise(self.depthwise(x)))
        return self.fc(torch.flatten(self.pool(self.down(x)), 1))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mcuprune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _trained(ds, seed: int = 0) -> UserNet:
    torch.manual_seed(seed)
    net = UserNet()
    fit(net, ds.x_train, ds.y_train, epochs=25, seed=seed, lr=3e-3)
    return net.eval()


def test_users_pytorch_model_runs_bit_exact_in_qemu(tmp_path: Path) -> None:
    ds = load_digits()
    net = _trained(ds)
    float_acc = accuracy(torch_predict_logits(net, ds.x_test), ds.y_test)
    assert float_acc > 0.85
    ep = torch.export.export(net, (torch.zeros(1, 1, 8, 8),))
    torch.export.save(ep, tmp_path / "user.pt2")
    _cli("import", "user.pt2", "--dataset", "digits", "--out", "run", cwd=tmp_path)
    _cli("compile", "run", "--board", "mps2-an386", "--out", "fw", cwd=tmp_path)
    ev = json.loads(_cli("evaluate", "fw", "--json", "--transport", "semihosting", "--oracle", "tflm",
                         cwd=tmp_path).stdout)
    assert ev["samples"] == len(ds.x_test) and ev["mismatches"] == 0 and ev["tflm_mismatches"] == 0
    assert ev["float_accuracy"] == pytest.approx(float_acc, abs=1e-9)  # the imported float model is torch's
    assert ev["device_accuracy"] >= float_acc - 0.01


def test_inputs_in_the_users_own_units(tmp_path: Path) -> None:
    """A model that expects normalised, signed inputs: calibration data sets the input quantization,
    and float inputs given to evaluate are quantized with it."""
    ds = load_digits()
    net = _trained(ds)
    x = (to_float(ds.x_test) - 0.5) * 4.0  # the units this user's pipeline feeds: about [-2, 2]
    wrapped = nn.Sequential(_Affine(0.25, 0.5), net)  # the user's model takes those units
    ep = torch.export.export(wrapped.eval(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(ep, tmp_path / "signed.pt2")
    calib = (to_float(ds.x_train) - 0.5) * 4.0
    np.savez(tmp_path / "calib.npz", x=calib)
    np.savez(tmp_path / "inputs.npz", x=x[:100])
    _cli("import", "signed.pt2", "--out", "run", cwd=tmp_path)
    _cli("compile", "run", "--calibration", "calib.npz", "--out", "fw", cwd=tmp_path)
    ev = json.loads(_cli("evaluate", "fw", "--inputs", "inputs.npz", "--outputs", "y.npz", "--json",
                         "--transport", "semihosting", cwd=tmp_path).stdout)
    assert ev["samples"] == 100 and ev["mismatches"] == 0 and ev["inputs"] == "inputs.npz"
    y = np.load(tmp_path / "y.npz")["y"]
    assert y.dtype == np.int8 and y.shape == (100, 10)
    # the device's answers are the float model's on most inputs (int8 rounding may flip a few)
    with torch.no_grad():
        float_pred = wrapped(torch.from_numpy(x[:100].transpose(0, 3, 1, 2))).argmax(1).numpy()
    assert (y.argmax(1) == float_pred).mean() >= 0.95


class _Affine(nn.Module):
    """x * scale + shift as one per-tensor affine map the importer must fold away: a 1x1 conv."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(scale)
            self.conv.bias.fill_(shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
