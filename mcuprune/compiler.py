"""The compile stage: run directory -> quantized model -> firmware project -> ELF.

A firmware directory (FWDIR) is self-contained: the generated C project (buildable by hand with
`make`), the ELF, the quantized model the device runs (model.json + model.npz, which the reference
interpreter reads) and firmware.json describing how it was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mcuprune import __version__, build, codegen
from mcuprune.boards import Board, check_fits, load_board
from mcuprune.data import load_dataset
from mcuprune.errors import UserError
from mcuprune.ir import QuantModel, load_quant_model, save_quant_model
from mcuprune.quantize import calibration_subset, quantize_model

KERNEL_CHOICES = ("auto", "reference", "dsp", "tvm")
FIRMWARE_FORMAT_VERSION = 1


def choose_variant(board: Board, requested: str) -> str:
    """Kernel variant for a board: DSP dual-MAC kernels only on cores with the DSP extension."""
    if requested not in KERNEL_CHOICES:
        raise UserError(f"unknown kernels '{requested}': choose one of {', '.join(KERNEL_CHOICES)}")
    if requested == "auto":
        return "dsp" if board.dsp else "reference"

    if requested == "dsp" and not board.dsp:
        raise UserError(f"board {board.name} ({board.core}) has no DSP extension: use --kernels reference")
    return requested


def quantize_run(run_dir: Path) -> QuantModel:
    """Load a trained run and quantize it with a calibration subset of its training data."""
    from mcuprune.train import load_float_model  # torch is imported only here

    float_model, meta = load_float_model(run_dir)
    dataset = load_dataset(meta["dataset"])
    if dataset.input_shape != tuple(meta["input_shape"]):
        raise UserError(f"dataset {meta['dataset']} now has images {dataset.input_shape}, the run was trained on "
                        f"{tuple(meta['input_shape'])}")
    fp32_params = sum(int(layer.weights.size + layer.bias.size) for layer in float_model.layers
                      if layer.weights is not None)
    return quantize_model(float_model, calibration_subset(dataset.x_train), meta={
        "run_dir": str(run_dir.resolve()),
        "dataset": meta["dataset"],
        "arch": meta["arch"],
        "float_test_accuracy": meta["float_test_accuracy"],
        "fp32_params": fp32_params,
    })


@dataclass(frozen=True)
class CompileResult:
    fw_dir: Path
    board: Board
    variant: str
    build: build.BuildResult
    generated: codegen.GeneratedModel


def compile_model(model: QuantModel, board: Board, fw_dir: Path, variant: str,
                  objective: str = "fastest") -> CompileResult:
    """Generate, build and describe the firmware for an already-quantized model."""
    fw_dir.mkdir(parents=True, exist_ok=True)
    save_quant_model(model, fw_dir)
    src = fw_dir / "src"
    # TVM generates the layer kernels; the model glue is the same as for the reference kernels.
    glue_variant = "reference" if variant == "tvm" else variant
    generated = codegen.generate_model_sources(model, glue_variant, src, source=model.meta.get("run_dir", model.name),
                                               objective=objective, core=board.core)
    check_fits(board, generated.param_bytes, generated.arena.size + generated.scratch_bytes + board.stack_size,
               what=f"model {model.name}")
    if variant == "tvm":
        from mcuprune.tvm_backend import tvm_kernel_sources

        sources = tvm_kernel_sources(model, fw_dir / "tvm", formats=generated.formats)
    else:
        sources = generated.kernel_sources(model, variant)
    build.prepare_project(fw_dir, board, sources)
    result = build.build_project(fw_dir, board)  # also checks the linked sizes against the board
    doc = {
        "format_version": FIRMWARE_FORMAT_VERSION,
        "mcuprune_version": __version__,
        "board": board.name,
        "kernels": variant,
        "elf": str(result.elf.relative_to(fw_dir)),
        "arch_hash": f"0x{generated.arch_hash:08x}",
        "objective": objective,
        "formats": generated.formats,
        "param_bytes": generated.param_bytes,
        "arena_bytes": generated.arena.size,
        "scratch_bytes": generated.scratch_bytes,
        "model_flash_bytes": result.model_flash_bytes,
        "firmware_flash_bytes": result.flash_bytes,
        "ram_bytes": result.ram_bytes,
    }
    (fw_dir / "firmware.json").write_text(json.dumps(doc, indent=2) + "\n")
    return CompileResult(fw_dir, board, variant, result, generated)


def compile_run(run_dir: Path, board_name: str, fw_dir: Path, kernels_choice: str = "auto",
                objective: str = "fastest", renode: bool = False) -> CompileResult:
    board = load_board(board_name)
    variant = choose_variant(board, kernels_choice)
    result = compile_model(quantize_run(run_dir), board, fw_dir, variant, objective)
    if renode:
        from mcuprune.renode import write_renode_files

        if board.renode is None:
            raise UserError(f"board {board.name} has no [renode] platform: Renode files cannot be generated for it")
        write_renode_files(fw_dir, board)
    return result


@dataclass(frozen=True)
class FirmwareDir:
    path: Path
    info: dict
    model: QuantModel
    board: Board

    @property
    def elf(self) -> Path:
        return self.path / self.info["elf"]


def load_firmware_dir(fw_dir: Path) -> FirmwareDir:
    info_path = fw_dir / "firmware.json"
    if not info_path.exists():
        raise UserError(f"{fw_dir} is not a firmware directory (no firmware.json): create it with "
                        "`mcuprune compile RUN --board BOARD --out FWDIR`")
    try:
        info = json.loads(info_path.read_text())
        model = load_quant_model(fw_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{fw_dir} is damaged ({exc}): compile it again") from None
    fw = FirmwareDir(fw_dir, info, model, load_board(info["board"]))
    if not fw.elf.exists():
        raise UserError(f"{fw.elf} is missing: compile it again")
    return fw
