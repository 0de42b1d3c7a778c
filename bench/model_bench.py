"""Per-layer instructions, flash and RAM of a trained run, for each kernel variant, measured in QEMU.

    .venv/bin/python bench/model_bench.py --run runs/demo/run [--samples 200] [--json bench/results/model.json]

Instructions are SysTick ticks under `qemu-system-arm -icount shift=0` times 1e9 / clock_hz
(QEMU has no cycle counter; see README). MACs count multiply-accumulates of dense layers as emitted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mcuprune.device.qemu import QemuDevice
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import Op, QuantLayer, shape_product
from mcuprune.target.board import load_board
from mcuprune.target.compile import compile_model, quantize_run
from mcuprune.train.datasets import load_dataset, to_int8

VARIANTS = (("mps2-an386", "dsp"), ("mps2-an386", "reference"), ("mps2-an385", "reference"))


def layer_macs(layer: QuantLayer) -> int:
    if layer.op is Op.CONV2D:
        _, k_h, k_w, c_in = layer.weights.shape
        return shape_product(layer.out_shape) * k_h * k_w * c_in
    if layer.op is Op.DENSE:
        return int(layer.weights.size)
    return 0


def measure(run_dir: Path, samples: int) -> dict:
    t0 = time.time()
    model = quantize_run(run_dir)
    quantize_seconds = time.time() - t0
    dataset = load_dataset(model.meta["dataset"])
    x = to_int8(dataset.x_test[:samples])
    expected = run_s8(model, x)
    rows = []
    for board_name, variant in VARIANTS:
        board = load_board(board_name)
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.time()
            result = compile_model(model, board, Path(tmp) / "fw", variant)
            build_seconds = time.time() - t1
            t2 = time.time()
            with QemuDevice(board, result.build.elf) as qemu:
                outs = qemu.device.infer_many(x)
            run_seconds = time.time() - t2
        mismatches = int(sum((o.logits != e).any() for o, e in zip(outs, expected, strict=True)))
        per_tick = board.instructions_per_tick
        layer_ticks = np.mean([o.layer_ticks for o in outs], axis=0)
        layers = []
        for layer, ticks in zip(model.layers, layer_ticks, strict=True):
            macs = layer_macs(layer)
            instr = float(ticks * per_tick)
            layers.append({"name": layer.name, "op": layer.op.value, "macs": macs, "instructions": instr,
                           "instructions_per_mac": instr / macs if macs else None})
        rows.append({
            "board": board_name, "kernels": variant, "samples": samples, "mismatches": mismatches,
            "instructions_per_inference": float(np.mean([o.ticks for o in outs]) * per_tick),
            "firmware_flash_bytes": result.build.flash_bytes, "model_flash_bytes": result.build.model_flash_bytes,
            "ram_bytes": result.build.ram_bytes, "arena_bytes": result.generated.arena.size,
            "scratch_bytes": result.generated.scratch_bytes, "build_seconds": round(build_seconds, 1),
            "qemu_seconds": round(run_seconds, 1), "layers": layers,
        })
    return {"run": str(run_dir), "quantize_seconds": round(quantize_seconds, 1), "variants": rows}


def to_markdown(report: dict) -> str:
    out = ["| board | kernels | instr/inference | model flash B | firmware flash B | RAM B | mismatches |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["variants"]:
        out.append(f"| {r['board']} | {r['kernels']} | {r['instructions_per_inference']:,.0f} | "
                   f"{r['model_flash_bytes']:,} | {r['firmware_flash_bytes']:,} | {r['ram_bytes']:,} | "
                   f"{r['mismatches']}/{r['samples']} |")
    out += ["", "| layer | MACs | " + " | ".join(f"{r['board']} {r['kernels']} instr (instr/MAC)"
                                             for r in report["variants"]) + " |",
            "|---|---:|" + "---:|" * len(report["variants"])]
    for i, layer in enumerate(report["variants"][0]["layers"]):
        cells = []
        for r in report["variants"]:
            lr = r["layers"][i]
            per_mac = f" ({lr['instructions_per_mac']:.2f})" if lr["instructions_per_mac"] else ""
            cells.append(f"{lr['instructions']:,.0f}{per_mac}")
        out.append(f"| {layer['name']} | {layer['macs']:,} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo/run")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    args = parser.parse_args()
    report = measure(Path(args.run), args.samples)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
