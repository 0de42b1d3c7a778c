#!/usr/bin/env python3
"""Fit the cost model of mcuprune.model.costs.choose_format from QEMU instruction counts.

Measures every kernel (dense and sparse formats, reference and DSP) with bench/sparse/run.py's
harness on a calibration set of FC and conv layers at several sparsities, on each target
(m4-dsp, m4-reference, m3-reference), then fits per (op, format, variant, core)

    instructions ~= sum(coef[name] * feature[name])

over the features of mcuprune.model.costs.cost_features (entries, rows, cols, per-pixel and per-call
terms, mask bytes for bitmask), by least squares on relative error (every layer counts the same,
whatever its size). Writes mcuprune/model/kernel_costs.json with the coefficients, the largest
relative error of each fit, and the code size of every kernel object.

    .venv/bin/python bench/sparse/fit_costs.py [--build-dir DIR] [--out mcuprune/model/kernel_costs.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import ROOT, TARGETS, Spec, measure  # noqa: E402

from mcuprune.model.costs import COSTS_PATH, cost_key  # noqa: E402
from mcuprune.model.ir import Op  # noqa: E402
from mcuprune.model.ops import FORMATS, kernel_sources  # noqa: E402
from mcuprune.resources import INCLUDE_DIR  # noqa: E402

# Many shapes, each at three sparsities (cycling through SPARSITY_SETS), so that the dense
# kernels (whose cost does not depend on sparsity) see enough distinct layers too.
SPARSITY_SETS = ((0.0, 0.7, 0.9), (0.5, 0.8, 0.95), (0.3, 0.85, 0.97))
FC_SHAPES = [(1568, 64), (256, 32), (96, 20), (784, 10), (512, 128), (64, 64), (2000, 16), (130, 7), (40, 100),
             (300, 48), (1024, 24), (17, 30)]  # fmt: skip
CONV_SHAPES = [  # (in_h, in_w, in_c), out_c, k, stride, pad
    ((14, 14, 16), 32, 3, 1, 1),
    ((8, 8, 8), 16, 3, 1, 1),
    ((10, 10, 4), 8, 3, 1, 0),
    ((7, 7, 32), 24, 1, 1, 0),
    ((9, 9, 16), 16, 3, 2, 1),
    ((12, 12, 1), 8, 3, 1, 1),
    ((6, 6, 64), 16, 3, 1, 1),
    ((10, 9, 3), 12, 5, 1, 2),
    ((5, 5, 24), 40, 3, 1, 0),
    ((16, 16, 8), 8, 3, 1, 1),
    ((11, 11, 12), 20, 3, 2, 0),
    ((4, 4, 48), 32, 3, 1, 1),
    ((20, 20, 2), 6, 3, 1, 1),
    ((8, 8, 16), 64, 1, 1, 0),
]
SPARSITIES = sorted({s for group in SPARSITY_SETS for s in group})
CALIBRATION = [
    *(
        Spec(Op.DENSE, (n_in,), n_out, s, seed=100 + i)
        for i, (n_in, n_out) in enumerate(FC_SHAPES)
        for s in SPARSITY_SETS[i % len(SPARSITY_SETS)]
    ),
    *(
        Spec(Op.CONV2D, hwc, out_c, s, k=k, stride=stride, pad=pad, seed=200 + i)
        for i, (hwc, out_c, k, stride, pad) in enumerate(CONV_SHAPES)
        for s in SPARSITY_SETS[i % len(SPARSITY_SETS)]
    ),
]


def fit(points: list[tuple[dict[str, float], int]]) -> tuple[dict[str, float], np.ndarray]:
    """Non-negative least squares on relative error (a feature whose coefficient would be negative
    is dropped and the rest refitted); returns coefficients and each point's relative error."""
    names = list(points[0][0])
    a = np.array([[f[n] for n in names] for f, _ in points], dtype=np.float64)
    y = np.array([instr for _, instr in points], dtype=np.float64)
    weighted = a / y[:, None]
    active = list(range(len(names)))
    while True:
        coef = np.zeros(len(names))
        coef[active], *_ = np.linalg.lstsq(weighted[:, active], np.ones(len(y)), rcond=None)
        negative = [i for i in active if coef[i] < 0]
        if not negative:
            break
        active.remove(min(negative, key=lambda i: coef[i]))
    rel = np.abs(a @ coef - y) / y
    return {n: round(float(c), 4) for n, c in zip(names, coef, strict=True)}, rel


def code_bytes(target_name: str) -> dict[str, int]:
    """.text bytes of each kernel object (-O2) for the target: what a format adds to the firmware."""
    target = TARGETS[target_name]
    sizes = {}
    for op in (Op.DENSE, Op.CONV2D):
        for fmt in FORMATS:
            (source,) = kernel_sources(target.variant, [(op, fmt)])
            with tempfile.TemporaryDirectory() as tmp:
                obj = Path(tmp) / "kernel.o"
                cmd = ["arm-none-eabi-gcc", *target.cpu_flags, "-O2", "-std=c11", f"-I{INCLUDE_DIR}", "-c",
                       str(source), "-o", str(obj)]  # fmt: skip
                subprocess.run(cmd, check=True)
                size = subprocess.run(["arm-none-eabi-size", "-A", str(obj)], capture_output=True, text=True,
                                      check=True)  # fmt: skip
            sizes[cost_key(op, fmt, target.variant, target.core)] = sum(
                int(line.split()[1]) for line in size.stdout.splitlines() if line.startswith(".text")
            )
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench_sparse_fit")
    parser.add_argument("--out", type=Path, default=COSTS_PATH)
    args = parser.parse_args()

    results, ok = measure(CALIBRATION, list(TARGETS), args.build_dir)
    if not ok:
        print("FAILED: a kernel disagrees with numpy; not fitting")
        return 1
    groups: dict[str, list] = {}
    for r in results:
        groups.setdefault(cost_key(r.op, r.fmt, r.variant, r.core), []).append(r)
    models = {}
    for key, runs in sorted(groups.items()):
        coef, rel = fit([(r.features, r.instructions) for r in runs])
        worst = runs[int(rel.argmax())]
        models[key] = {"coefficients": coef, "max_relative_error": round(float(rel.max()), 4), "points": len(runs)}
        print(f"{key:36s} max rel. error {100 * rel.max():5.1f}% ({worst.spec}), mean {100 * rel.mean():4.1f}%")
    gcc = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    qemu = subprocess.run(["qemu-system-arm", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    doc = {
        "note": (
            "Instruction-count model of the int8 kernels, per '<op>/<format>/<variant>/<core>': "
            "instructions ~= sum(coefficients[name] * mcuprune.model.costs.cost_features(...)[name]). Fitted by "
            "bench/sparse/fit_costs.py (non-negative least squares on relative error) to QEMU -icount counts of "
            f"{len(CALIBRATION)} random pruned layers x {len(FORMATS)} formats per target (sparsity "
            f"{', '.join(f'{s:g}' for s in SPARSITIES)}); -O2, the cores' flags as in bench/sparse/run.py. "
            "Regenerate after changing a kernel. code_bytes: .text of each kernel object."
        ),
        "generated": datetime.date.today().isoformat(),
        "toolchain": [gcc, qemu],
        "models": models,
        "code_bytes": {k: v for name in TARGETS for k, v in code_bytes(name).items()},
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
