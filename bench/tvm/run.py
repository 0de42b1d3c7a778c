"""TVM kernels vs the Jinja (hand-written C) kernels: instructions per inference and code size.

    .venv/bin/python bench/tvm/run.py [--run RUN_DIR] [--samples 359] [--json bench/tvm/results.json]

Without --run it trains the digits CNN (seed 0, 40 epochs, as tests/conftest.py does). For each
board it builds the same quantized model twice, with the kernels the board gets by default
(DSP dual-MAC on the M4F, scalar reference on the M3) and with the TVM backend, runs both in
QEMU on the test images and reports:
  - instructions per inference and per layer (SysTick ticks under -icount shift=0 x 1e9/clock_hz),
  - kernel code bytes: the linked sizes of every function defined in the kernel objects
    (Jinja: the kernel .c files; TVM: tvm_kernels.c, the wrappers and the shim),
  - whole-firmware flash, and mismatches against the numpy int8 reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mcuprune.codegen import emit as codegen
from mcuprune.codegen.tvm_backend import tvm_kernel_sources
from mcuprune.device.qemu import QemuDevice
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import QuantModel
from mcuprune.target import build
from mcuprune.target.board import load_board
from mcuprune.target.compile import choose_variant, quantize_run
from mcuprune.train.datasets import load_dataset, to_int8

BOARDS = ("mps2-an386", "mps2-an385")


def kernel_code_bytes(fw_dir: Path, kernel_files: list[Path], symbol_sizes: dict[str, int]) -> int:
    """Linked bytes of the functions the kernel objects define (gc-sections dropped the rest)."""
    total = 0
    for src in kernel_files:
        if src.suffix != ".c":
            continue
        obj = fw_dir / "build" / f"{src.stem}.o"
        out = subprocess.run(["arm-none-eabi-nm", "--defined-only", str(obj)], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "Tt":
                total += symbol_sizes.get(parts[2], 0)
    return total


def measure_one(model: QuantModel, board_name: str, kernels: str, x: np.ndarray, expected: np.ndarray) -> dict:
    board = load_board(board_name)
    variant = "reference" if kernels == "tvm" else kernels
    with tempfile.TemporaryDirectory() as tmp:
        fw = Path(tmp) / "fw"
        generated = codegen.generate_model_sources(model, variant, fw / "src")
        if kernels == "tvm":
            sources = tvm_kernel_sources(model, fw / "tvm", formats=generated.formats)
        else:
            sources = generated.kernel_sources(model, variant)
        build.prepare_project(fw, board, sources)
        result = build.build_project(fw, board)
        code = kernel_code_bytes(fw, sources, result.symbol_sizes)
        with QemuDevice(board, result.elf) as qemu:
            outs = qemu.infer_many(x, bulk=True)
    per_tick = board.instructions_per_tick
    logits = np.stack([o.logits for o in outs])
    layer = np.mean([o.layer_ticks for o in outs], axis=0) * per_tick
    return {
        "board": board_name, "kernels": kernels, "samples": len(x),
        "mismatches": int((logits != expected).any(axis=1).sum()),
        "instructions_per_inference": float(np.mean([o.ticks for o in outs]) * per_tick),
        "layer_instructions": {lay.name: float(v) for lay, v in zip(model.layers, layer, strict=True)},
        "kernel_code_bytes": code, "firmware_flash_bytes": result.flash_bytes, "ram_bytes": result.ram_bytes,
    }


def to_markdown(rows: list[dict]) -> str:
    out = ["| board | kernels | instr/inference | vs Jinja | kernel code B | firmware flash B | RAM B | mismatches |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    base = {r["board"]: r for r in rows if r["kernels"] != "tvm"}
    for r in rows:
        ratio = r["instructions_per_inference"] / base[r["board"]]["instructions_per_inference"]
        out.append(f"| {r['board']} | {r['kernels']} | {r['instructions_per_inference']:,.0f} | {ratio:.2f}x | "
                   f"{r['kernel_code_bytes']:,} | {r['firmware_flash_bytes']:,} | {r['ram_bytes']:,} | "
                   f"{r['mismatches']}/{r['samples']} |")
    names = list(rows[0]["layer_instructions"])
    out += ["", "| layer | " + " | ".join(f"{r['board']} {r['kernels']}" for r in rows) + " |",
            "|---|" + "---:|" * len(rows)]
    for name in names:
        out.append(f"| {name} | " + " | ".join(f"{r['layer_instructions'][name]:,.0f}" for r in rows) + " |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a trained run directory (default: train the digits CNN)")
    parser.add_argument("--samples", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run) if args.run else Path(tmp) / "digits-run"
        if args.run is None:
            from mcuprune.train.datasets import load_digits
            from mcuprune.train.training import train_run

            train_run(load_digits(), "digits", "cnn", epochs=40, out=run_dir, seed=0)
        model = quantize_run(run_dir)
    x = to_int8(load_dataset(model.meta["dataset"]).x_test[: args.samples])
    expected = run_s8(model, x)
    rows = []
    for board_name in BOARDS:
        jinja = choose_variant(load_board(board_name), "auto")
        rows += [measure_one(model, board_name, jinja, x, expected), measure_one(model, board_name, "tvm", x, expected)]
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.name, "rows": rows}, indent=2) + "\n")
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
