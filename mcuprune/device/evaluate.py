"""The evaluate stage: run a firmware directory's ELF in QEMU and compare it with the references.

Up to four answers per input: the float model (numpy, same math as PyTorch) when the run has one,
the int8 reference interpreter (the single source of truth), the device, and with
``oracle="tflm"`` TFLite Micro's own interpreter on the model exported as .tflite. `mismatches`
counts inputs whose device output differs from the reference in any element; `tflm_mismatches`
those where TFLM differs from the device.

Inputs: the run's test set when it has a dataset; else an .npz the user gives (`inputs`: x with
the model's input shape, int8 as the device takes it or float in the model's units, quantized as
TFLite's QUANTIZE does); else a seeded set of int8 inputs spanning the whole input range.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
from matplotlib.ticker import EngFormatter

from mcuprune.device.qemu import QemuDevice
from mcuprune.errors import UserError
from mcuprune.frontend.tflite import export_tflite
from mcuprune.frontend.tflm import run_tflm
from mcuprune.model.interpreter import run_f32, run_s8
from mcuprune.model.ir import FloatModel, QuantModel
from mcuprune.model.reference import quantize_input
from mcuprune.target.compile import FirmwareDir, compile_run, load_firmware_dir
from mcuprune.train.datasets import load_dataset, load_inputs_npz, to_float, to_int8
from mcuprune.train.training import load_run_model

TRANSPORTS = ("uart", "semihosting")
ORACLES = ("none", "tflm")
SEEDED_SAMPLES = 200  # inputs for a model without a dataset when no --inputs is given


@dataclass(frozen=True)
class Evaluation:
    board: str
    kernels: str
    samples: int
    inputs: str  # where the inputs came from: "test set", the .npz path, or "seeded"
    float_accuracy: float | None  # None: no labels or no float model
    reference_accuracy: float | None
    device_accuracy: float | None
    mismatches: int
    tflm_mismatches: int | None  # None: the TFLM oracle was not run
    model_flash_bytes: int
    fp32_model_bytes: int
    firmware_flash_bytes: int
    ram_bytes: int
    arena_bytes: int
    instructions_per_inference: float
    layer_instructions: dict
    device_seconds: float
    transport: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Inputs:
    x_int8: np.ndarray  # what the device gets
    x_float: np.ndarray | None  # what the float model gets, when known
    labels: np.ndarray | None
    source: str


def _float_model(fw: FirmwareDir) -> FloatModel | None:
    run_dir = fw.model.meta.get("run_dir")
    if run_dir is None or not (Path(run_dir) / "run.json").is_file():
        return None
    model, _ = load_run_model(Path(run_dir))
    return None if isinstance(model, QuantModel) else model


def _inputs(fw: FirmwareDir, inputs: Path | None, limit: int | None, seed: int) -> _Inputs:
    model = fw.model
    if inputs is not None:
        x = load_inputs_npz(inputs, model.input_shape)[:limit]
        if x.dtype == np.int8:
            return _Inputs(x, None, None, str(inputs))
        x = x.astype(np.float32)
        return _Inputs(quantize_input(x, model.input_q), x, None, str(inputs))
    if "dataset" in model.meta:
        dataset = load_dataset(model.meta["dataset"])
        x, y = dataset.x_test[:limit], dataset.y_test[:limit]
        return _Inputs(to_int8(x), to_float(x), y, "test set")
    n = SEEDED_SAMPLES if limit is None else limit
    x = np.random.default_rng(seed).integers(-128, 128, (n, *model.input_shape), dtype=np.int8)
    return _Inputs(x, None, None, "seeded")


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((outputs.argmax(axis=1) == labels).mean())


def fp32_bytes(model: QuantModel) -> int:
    """4 bytes per parameter of the float model the user started from (before any pruning)."""
    params = model.meta.get("fp32_params")
    if params is None:
        params = sum(int(layer.weights.size) + int(layer.bias.size) for layer in model.layers if layer.has_weights)
    return 4 * int(params)


def evaluate_firmware(fw_dir: Path, limit: int | None = None, progress: bool = True, transport: str = "uart",
                      inputs: Path | None = None, outputs: Path | None = None, oracle: str = "none",
                      seed: int = 0) -> Evaluation:
    """Run inputs through the device (see the module docstring for which) and compare. Inputs travel
    over the UART; with transport="semihosting" the device reads them from a host file instead
    (results still come back over the UART) — same firmware, much faster under QEMU, useless on a
    real board. `outputs`: an .npz to write the device's int8 outputs to, as y (N, outputs)."""
    if transport not in TRANSPORTS:
        raise UserError(f"unknown transport '{transport}': choose one of {', '.join(TRANSPORTS)}")
    if oracle not in ORACLES:
        raise UserError(f"unknown oracle '{oracle}': choose one of {', '.join(ORACLES)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if outputs is not None and Path(outputs).is_dir():
        raise UserError(f"{outputs} is a directory: give a file name for --outputs")
    fw = load_firmware_dir(fw_dir)
    data = _inputs(fw, inputs, limit, seed)
    ref = run_s8(fw.model, data.x_int8)
    float_model = _float_model(fw) if data.x_float is not None and data.labels is not None else None
    flt = None if float_model is None else run_f32(float_model, data.x_float)
    t0 = time.time()
    with QemuDevice(fw.board, fw.elf) as qemu:
        results = qemu.infer_many(data.x_int8, progress=progress, bulk=transport == "semihosting")
    seconds = time.time() - t0
    dev = np.stack([r.logits for r in results]).reshape(len(results), -1)
    tflm = None if oracle == "none" else run_tflm(export_tflite(fw.model), data.x_int8)
    if outputs is not None:
        np.savez(outputs, y=dev)
    per_tick = fw.board.instructions_per_tick
    ticks = np.array([r.ticks for r in results], dtype=np.float64)
    layer_ticks = np.array([r.layer_ticks for r in results], dtype=np.float64).mean(axis=0)
    return Evaluation(
        board=fw.board.name,
        kernels=fw.info["kernels"],
        samples=len(data.x_int8),
        inputs=data.source,
        float_accuracy=None if flt is None else _accuracy(flt, data.labels),
        reference_accuracy=_accuracy(ref, data.labels),
        device_accuracy=_accuracy(dev, data.labels),
        mismatches=int((dev != ref).any(axis=1).sum()),
        tflm_mismatches=None if tflm is None else int((tflm != dev).any(axis=1).sum()),
        model_flash_bytes=int(fw.info["model_flash_bytes"]),
        fp32_model_bytes=fp32_bytes(fw.model),
        firmware_flash_bytes=int(fw.info["firmware_flash_bytes"]),
        ram_bytes=int(fw.info["ram_bytes"]),
        arena_bytes=int(fw.info["arena_bytes"]),
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
    objective: str = "auto"  # what `mcuprune compile` emits by default
    limit: int | None = None

    def __call__(self, run_dir: Path, fw_dir: Path) -> dict:
        compile_run(run_dir, self.board, fw_dir, objective=self.objective)
        ev = evaluate_firmware(fw_dir, limit=self.limit, progress=False, transport="semihosting")
        return {"model_flash_bytes": ev.model_flash_bytes, "float_accuracy": ev.float_accuracy,
                "reference_accuracy": ev.reference_accuracy, "device_accuracy": ev.device_accuracy,
                "mismatches": ev.mismatches, "samples": ev.samples,
                "instructions_per_inference": round(ev.instructions_per_inference),
                "formats": json.loads((fw_dir / "firmware.json").read_text()).get("formats", {})}


def plot_tradeoff(rows: list[tuple[str, Evaluation]], path: Path, title: str = "") -> None:
    """Device accuracy (%) against model flash bytes and against instructions per inference, one
    point per labelled evaluation (the demo's dense and pruned models), with the fp32 model's
    accuracy and the 0.5 pp below it as guides."""
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2)
    for label, ev in rows:
        for ax, x in zip(axes, (ev.model_flash_bytes, ev.instructions_per_inference), strict=True):
            ax.scatter([x], [100 * ev.device_accuracy], s=60, zorder=3)
            ax.annotate(label, (x, 100 * ev.device_accuracy), textcoords="offset points", xytext=(6, 6), fontsize=8)
    reference = next((ev.float_accuracy for _, ev in rows if ev.float_accuracy is not None), None)
    for ax, xlabel in zip(axes, ("model flash bytes (parameters in the ELF)", "instructions per inference (QEMU)"),
                          strict=True):
        if reference is not None:
            ax.axhline(100 * reference, color="grey", lw=1, label="fp32 accuracy of the dense model")
            ax.axhline(100 * reference - 0.5, color="grey", ls="--", lw=1, label="fp32 − 0.5 pp")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 26k, 1.1M: plain numbers on a linear axis
        ax.set_xlim(left=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("device accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
