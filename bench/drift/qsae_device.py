"""The monitor QSAE on the device: bit-exactness and cost in QEMU.

    .venv/bin/python bench/drift/qsae_device.py [--run runs/fm] [--qsae runs/fm-drift/qsae]
                                                [--board mps2-an386] [--samples 500]

Compiles the int8 monitor QSAE written by bench/drift/run.py (OUT/qsae) as a stand-alone model
(input: the penultimate activations int8[D]; output: the reconstruction int8[D]) with the normal
pipeline (compiler.compile_model), runs it in QEMU on the penultimate activations of the first
SAMPLES test images over the UART, and compares the device's reconstruction, and the
reconstruction error computed from it, with the numpy reference (monitor_qsae.reconstruct_s8,
telemetry.reconstruction_error). Prints the mismatches, instructions per QSAE inference and the
QSAE's parameter bytes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from mcuprune.controller.drift_qsae import penultimate_activations, reconstruct_s8
from mcuprune.device.qemu import QemuDevice
from mcuprune.model.ir import load_quant_model
from mcuprune.model.telemetry import reconstruction_error
from mcuprune.target.board import load_board
from mcuprune.target.compile import choose_variant, compile_model, quantize_run
from mcuprune.train.datasets import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/fm"))
    ap.add_argument("--qsae", type=Path, default=Path("runs/fm-drift/qsae"))
    ap.add_argument("--board", default="mps2-an386")
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args()

    model = quantize_run(args.run)
    qsae = load_quant_model(args.qsae)
    dataset = load_dataset(model.meta["dataset"])
    act = penultimate_activations(model, dataset.x_test[: args.samples])
    expected = reconstruct_s8(qsae, act)
    board = load_board(args.board)
    variant = choose_variant(board, "auto")
    with tempfile.TemporaryDirectory() as tmp:
        result = compile_model(qsae, board, Path(tmp) / "fw", variant)
        with QemuDevice(board, result.build.elf) as qemu:
            replies = qemu.infer_many(list(act))
    got = np.stack([r.logits for r in replies])
    ticks = np.array([r.ticks for r in replies])
    report = {
        "board": board.name,
        "kernels": variant,
        "samples": len(act),
        "reconstruction_mismatches": int(np.any(got != expected, axis=1).sum()),
        "recon_error_mismatches": int(np.sum(reconstruction_error(act, got) != reconstruction_error(act, expected))),
        "instructions_per_qsae_inference": int(np.median(ticks) * board.instructions_per_tick),
        "qsae_param_bytes": int(result.generated.param_bytes),
        "layers": [f"{layer.name} {layer.in_shape[0]}->{layer.out_shape[0]}" for layer in qsae.layers],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
