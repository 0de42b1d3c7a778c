#!/usr/bin/env python3
"""The four MLPerf Tiny reference int8 models through mcuprune, on QEMU boards, against TFLM.

For each model of ../shared/models/mlperf-tiny/: `mcuprune import` (taken as is: scales, zero points
and int32 biases kept), `compile` for each board, `evaluate` on seeded int8 inputs spanning the
input range with TFLM's interpreter as the oracle (inputs over semihosting: VWW's are 27 KB each).
Reports per model and board: device == reference == TFLM (mismatch counts), instructions per
inference (SysTick under -icount shift=0), flash (model parameters and the whole firmware), RAM,
mcuprune's activation arena and what TFLM's planner reports for the same model.

    python bench/mlperf/run.py [--samples 200] [--boards mps2-an386 mps2-an385] [--out bench/mlperf/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mcuprune.device.evaluate import evaluate_firmware  # noqa: E402
from mcuprune.frontend.files import import_model_file  # noqa: E402
from mcuprune.frontend.tflm import arena_bytes  # noqa: E402
from mcuprune.model.ir import shape_product  # noqa: E402
from mcuprune.target.compile import compile_run  # noqa: E402
from mcuprune.train.runs import write_imported_run  # noqa: E402

MODELS_DIR = ROOT.parent / "shared" / "models" / "mlperf-tiny"
MODELS = {"pretrainedResnet_quant": "ResNet-8 (CIFAR-10)", "kws_ref_model": "DS-CNN (keyword spotting)",
          "vww_96_int8": "MobileNetV1 0.25 (visual wake words)", "ad01_int8": "FC autoencoder (anomaly detection)"}


def measure(name: str, board: str, samples: int, work: Path) -> dict:
    path = MODELS_DIR / f"{name}.tflite"
    model, meta = import_model_file(path)
    run_dir, fw_dir = work / name, work / f"fw-{name}-{board}"
    write_imported_run(run_dir, model, meta)
    t0 = time.time()
    compile_run(run_dir, board, fw_dir)
    build_s = time.time() - t0
    ev = evaluate_firmware(fw_dir, limit=samples, progress=False, transport="semihosting", oracle="tflm")
    tflm = arena_bytes(path.read_bytes())
    io_bytes = model.input_size + shape_product(model.layers[-1].out_shape)
    return {"model": name, "board": board, "kernels": ev.kernels, "samples": ev.samples,
            "mismatches": ev.mismatches, "tflm_mismatches": ev.tflm_mismatches,
            "instructions_per_inference": round(ev.instructions_per_inference),
            "model_flash_bytes": ev.model_flash_bytes, "firmware_flash_bytes": ev.firmware_flash_bytes,
            "ram_bytes": ev.ram_bytes, "arena_bytes": ev.arena_bytes, "arena_plus_io_bytes": ev.arena_bytes + io_bytes,
            "tflm_arena_head_bytes": tflm["head"], "tflm_arena_total_bytes": tflm["total"],
            "layers": len(model.layers), "build_seconds": round(build_s, 1), "device_seconds": ev.device_seconds,
            "layer_instructions": {k: round(v) for k, v in ev.layer_instructions.items()}}


def markdown(rows: list[dict]) -> str:
    head = ("| model | board | kernels | device = ref = TFLM | instructions | model flash B | firmware flash B | "
            "RAM B | arena B (+ in/out) | TFLM arena B (plan / total) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        same = f"{r['samples'] - max(r['mismatches'], r['tflm_mismatches'])}/{r['samples']}"
        lines.append(f"| {MODELS[r['model']]} | {r['board']} | {r['kernels']} | {same} | "
                     f"{r['instructions_per_inference']:,} | {r['model_flash_bytes']:,} | "
                     f"{r['firmware_flash_bytes']:,} | {r['ram_bytes']:,} | {r['arena_bytes']:,} "
                     f"({r['arena_plus_io_bytes']:,}) | {r['tflm_arena_head_bytes']:,} / "
                     f"{r['tflm_arena_total_bytes']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--boards", nargs="+", default=["mps2-an386", "mps2-an385"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "mlperf")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "mlperf" / "results")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        for board in args.boards:
            row = measure(name, board, args.samples, args.work)
            print(f"{name:24} {board:12} same {row['samples'] - row['mismatches']}/{row['samples']} "
                  f"tflm {row['samples'] - row['tflm_mismatches']}/{row['samples']} "
                  f"{row['instructions_per_inference']:>12,} instr", flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mlperf.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "mlperf.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
