"""The evaluate stage: run a firmware directory's ELF in QEMU and compare it with the references.

Three answers per test image: the float model (numpy, same math as PyTorch), the int8 reference
interpreter (the single source of truth) and the device. `mismatches` counts images whose device
logits differ from the reference in any element.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mcuprune.device.qemu import QemuDevice
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_f32, run_s8
from mcuprune.target.compile import FirmwareDir, compile_run, load_firmware_dir
from mcuprune.train.datasets import load_dataset, to_float, to_int8
from mcuprune.train.training import load_float_model


@dataclass(frozen=True)
class Evaluation:
    board: str
    kernels: str
    samples: int
    float_accuracy: float
    reference_accuracy: float
    device_accuracy: float
    mismatches: int
    model_flash_bytes: int
    fp32_model_bytes: int
    firmware_flash_bytes: int
    ram_bytes: int
    instructions_per_inference: float
    layer_instructions: dict
    device_seconds: float
    transport: str

    def to_dict(self) -> dict:
        return asdict(self)


def float_logits(fw: FirmwareDir, x_uint8: np.ndarray) -> np.ndarray:

    run_dir = Path(fw.model.meta["run_dir"])
    float_model, _ = load_float_model(run_dir)
    return run_f32(float_model, to_float(x_uint8))


TRANSPORTS = ("uart", "semihosting")


def evaluate_firmware(fw_dir: Path, limit: int | None = None, progress: bool = True,
                      transport: str = "uart") -> Evaluation:
    """Run the first `limit` test images through the device. Inputs travel over the UART; with
    transport="semihosting" the device reads them from a host file instead (results still come
    back over the UART) — same firmware, much faster under QEMU, useless on a real board."""
    if transport not in TRANSPORTS:
        raise UserError(f"unknown transport '{transport}': choose one of {', '.join(TRANSPORTS)}")
    fw = load_firmware_dir(fw_dir)
    dataset = load_dataset(fw.model.meta["dataset"])
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    n = len(dataset.x_test) if limit is None else min(limit, len(dataset.x_test))
    x, y = dataset.x_test[:n], dataset.y_test[:n]
    x_int8 = to_int8(x)
    ref = run_s8(fw.model, x_int8)
    flt = float_logits(fw, x)
    t0 = time.time()
    with QemuDevice(fw.board, fw.elf) as qemu:
        results = qemu.infer_many(x_int8, progress=progress, bulk=transport == "semihosting")
    seconds = time.time() - t0
    dev = np.stack([r.logits for r in results])
    per_tick = fw.board.instructions_per_tick
    ticks = np.array([r.ticks for r in results], dtype=np.float64)
    layer_ticks = np.array([r.layer_ticks for r in results], dtype=np.float64).mean(axis=0)
    return Evaluation(
        board=fw.board.name,
        kernels=fw.info["kernels"],
        samples=int(n),
        float_accuracy=float((flt.argmax(1) == y).mean()),
        reference_accuracy=float((ref.argmax(1) == y).mean()),
        device_accuracy=float((np.array([r.predicted for r in results]) == y).mean()),
        mismatches=int((dev != ref).any(axis=1).sum()),
        model_flash_bytes=int(fw.info["model_flash_bytes"]),
        fp32_model_bytes=4 * int(fw.model.meta["fp32_params"]),
        firmware_flash_bytes=int(fw.info["firmware_flash_bytes"]),
        ram_bytes=int(fw.info["ram_bytes"]),
        instructions_per_inference=float(ticks.mean() * per_tick),
        layer_instructions={layer.name: float(t * per_tick) for layer, t in zip(fw.model.layers, layer_ticks,
                                                                                 strict=True)},
        device_seconds=round(seconds, 2),
        transport=transport,
    )


@dataclass(frozen=True)
class CompileAndEvaluate:
    """Compile a run for a board and evaluate it in QEMU (inputs over semihosting, for speed): the
    measurement compress.sweep takes for each pruned run."""

    board: str = "mps2-an386"
    objective: str = "smallest"
    limit: int | None = None

    def __call__(self, run_dir: Path, fw_dir: Path) -> dict:
        compile_run(run_dir, self.board, fw_dir, objective=self.objective)
        ev = evaluate_firmware(fw_dir, limit=self.limit, progress=False, transport="semihosting")
        return {"model_flash_bytes": ev.model_flash_bytes, "float_accuracy": ev.float_accuracy,
                "reference_accuracy": ev.reference_accuracy, "device_accuracy": ev.device_accuracy,
                "mismatches": ev.mismatches, "samples": ev.samples,
                "instructions_per_inference": round(ev.instructions_per_inference),
                "formats": json.loads((fw_dir / "firmware.json").read_text()).get("formats", {})}
