#!/usr/bin/env python3
"""Fit the cost model of mcuprune.model.costs.choose_format from QEMU instruction counts.

Measures every kernel (dense and sparse formats, int8 and int4 weights, reference and DSP) with
bench/sparse/run.py's harness on a calibration set of FC and conv layers at several sparsities
(unstructured masks, and masks of 1 x 4 blocks for part of the shapes), each layer once with int8
and once with int4 weights, on each target (m4-dsp, m4-reference,
m3-reference), then fits per (op, format, weight width, variant, core)

    instructions ~= sum(coef[name] * feature[name])

over the terms of mcuprune.model.costs.layer_cost_features for that kernel variant (entries, rows,
cols, per-pixel and per-call terms, mask bytes for bitmask; the dense conv kernels have terms of
their own, the DSP one a set per path: im2col, strip, pointwise), by least squares on relative
error (every layer counts the same, whatever its size). The conv shapes cover each path of the
dense DSP conv (mcuprune.model.costs.conv_path) with 20 or more shapes. Prints each fit's largest
and mean relative error, and the largest error when each shape is predicted by a fit without it
(leave one shape out: how the model does on a layer it has not seen). Writes
mcuprune/model/kernel_costs.json with the coefficients, the largest relative error of each fit,
and the code size of every kernel object.

    .venv/bin/python bench/sparse/fit_costs.py [--build-dir DIR] [--out mcuprune/model/kernel_costs.json]
                                               [--measurements FILE]

--measurements FILE keeps the QEMU counts: measured and written there when FILE does not exist,
read back (no QEMU run) when it does, so that a change of the cost model's terms refits in
seconds. Delete it after changing a kernel.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import ROOT, TARGETS, Result, Spec, batches, make_layer, measure  # noqa: E402

from mcuprune.model.costs import COSTS_PATH, conv_path, cost_key, layer_cost_features  # noqa: E402
from mcuprune.model.ir import Op  # noqa: E402
from mcuprune.model.ops import FORMATS, WEIGHT_BITS, kernel_sources  # noqa: E402
from mcuprune.resources import INCLUDE_DIR  # noqa: E402

# Many shapes, each at three sparsities (cycling through SPARSITY_SETS), so that the dense
# kernels (whose cost does not depend on sparsity) see enough distinct layers too.
SPARSITY_SETS = ((0.0, 0.7, 0.9), (0.5, 0.8, 0.95), (0.3, 0.85, 0.97))
FC_SHAPES = [(1568, 64), (256, 32), (96, 20), (784, 10), (512, 128), (64, 64), (2000, 16), (130, 7), (40, 100),
             (300, 48), (1024, 24), (17, 30), (100, 12), (1152, 40), (64, 10), (400, 100), (33, 7),
             (4096, 8)]  # fmt: skip
CONV_SHAPES = [  # (in_h, in_w, in_c), out_c, k, stride, pad
    # im2col path of the dense DSP conv: in_c % 4 == 0 (tap by tap) and not (staged as int8), odd
    # pixel and channel counts, strides 1 and 2, 1x1 at stride 2, 5x5, heavy padding
    ((14, 14, 16), 32, 3, 1, 1), ((8, 8, 8), 16, 3, 1, 1), ((10, 10, 4), 8, 3, 1, 0), ((9, 9, 16), 16, 3, 2, 1),
    ((6, 6, 64), 16, 3, 1, 1), ((10, 9, 3), 12, 5, 1, 2), ((5, 5, 24), 40, 3, 1, 0), ((16, 16, 8), 8, 3, 1, 1),
    ((11, 11, 12), 20, 3, 2, 0), ((4, 4, 48), 32, 3, 1, 1), ((11, 11, 2), 24, 3, 1, 1), ((14, 14, 3), 32, 3, 2, 1),
    ((8, 8, 12), 20, 3, 1, 1), ((8, 8, 32), 16, 1, 2, 0), ((8, 8, 4), 8, 5, 1, 2), ((7, 7, 8), 15, 3, 1, 1),
    ((32, 32, 3), 32, 3, 1, 1), ((16, 16, 16), 32, 3, 2, 1), ((8, 8, 32), 64, 3, 2, 1), ((16, 16, 16), 32, 1, 2, 0),
    ((5, 5, 20), 9, 3, 1, 1), ((12, 12, 6), 24, 3, 1, 1), ((7, 7, 64), 32, 3, 1, 1), ((10, 10, 8), 24, 3, 1, 0),
    ((6, 6, 16), 10, 5, 1, 2), ((9, 9, 5), 16, 3, 1, 1), ((13, 13, 8), 8, 3, 2, 1), ((20, 20, 4), 16, 3, 1, 1),
    ((12, 12, 3), 24, 3, 1, 1), ((10, 10, 16), 16, 3, 1, 1),
    # strip path (small patches: first layers): 3x3 on 1-3 channels at strides 1 and 2, 2x2, 4x4, 5x5,
    # strided 1x1 on few channels; unrolled and looped windows; segments of several rows, of one row,
    # and rows wider than a segment
    ((12, 12, 1), 8, 3, 1, 1), ((20, 20, 2), 6, 3, 1, 1), ((28, 28, 1), 16, 3, 1, 1), ((32, 32, 3), 16, 3, 2, 1),
    ((16, 16, 3), 8, 3, 1, 1), ((15, 15, 1), 12, 3, 2, 0), ((10, 10, 1), 4, 5, 1, 2), ((9, 9, 4), 8, 1, 2, 0),
    ((40, 40, 1), 8, 3, 1, 1), ((4, 140, 1), 4, 3, 1, 1), ((8, 8, 2), 8, 2, 1, 0), ((18, 18, 2), 16, 3, 1, 1),
    ((32, 32, 3), 16, 3, 1, 1), ((49, 10, 1), 12, 3, 1, 1), ((24, 24, 2), 8, 3, 2, 1), ((13, 13, 1), 10, 5, 1, 0),
    ((30, 30, 3), 12, 3, 1, 0), ((20, 20, 1), 8, 2, 2, 0), ((24, 24, 1), 16, 5, 2, 2), ((28, 28, 3), 8, 3, 2, 0),
    ((10, 50, 1), 6, 3, 1, 1), ((7, 7, 1), 16, 3, 1, 0), ((64, 64, 1), 4, 3, 2, 1), ((8, 8, 4), 16, 2, 2, 0),
    ((12, 12, 2), 16, 3, 1, 0), ((20, 20, 1), 8, 4, 1, 0), ((6, 200, 1), 4, 3, 1, 1), ((16, 16, 2), 10, 1, 2, 0),
    # pointwise path (1x1, stride 1, no padding): pixel counts not a multiple of 4 (down to 1),
    # in_c not a multiple of 4, 2 to 512 input and 6 to 128 output channels
    ((7, 7, 32), 24, 1, 1, 0), ((8, 8, 16), 64, 1, 1, 0), ((4, 4, 64), 64, 1, 1, 0), ((5, 5, 128), 32, 1, 1, 0),
    ((10, 10, 8), 16, 1, 1, 0), ((3, 3, 96), 48, 1, 1, 0), ((6, 6, 10), 12, 1, 1, 0), ((9, 9, 3), 8, 1, 1, 0),
    ((2, 2, 256), 40, 1, 1, 0), ((12, 12, 6), 24, 1, 1, 0), ((16, 16, 4), 8, 1, 1, 0), ((5, 5, 64), 64, 1, 1, 0),
    ((25, 5, 64), 64, 1, 1, 0), ((6, 6, 128), 128, 1, 1, 0), ((12, 12, 32), 64, 1, 1, 0), ((7, 7, 24), 20, 1, 1, 0),
    ((5, 5, 7), 9, 1, 1, 0), ((3, 3, 2), 30, 1, 1, 0), ((1, 1, 512), 16, 1, 1, 0), ((20, 20, 16), 32, 1, 1, 0),
    ((4, 4, 33), 17, 1, 1, 0), ((10, 10, 12), 6, 1, 1, 0),
]  # fmt: skip
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
# masks of random 1 x 4 blocks (run.py's Spec.block), where block4 stores few zeros: every FC shape at
# two sparsities, every other conv shape at one
CALIBRATION += [
    *(
        Spec(Op.DENSE, (n_in,), n_out, s, seed=300 + i, block=4)
        for i, (n_in, n_out) in enumerate(FC_SHAPES)
        for s in SPARSITY_SETS[i % len(SPARSITY_SETS)][1:]
    ),
    *(
        Spec(Op.CONV2D, hwc, out_c, SPARSITY_SETS[i % len(SPARSITY_SETS)][1 + i % 2], k=k, stride=stride, pad=pad,
             seed=400 + i, block=4)
        for i, (hwc, out_c, k, stride, pad) in enumerate(CONV_SHAPES)
        if i % 2 == 0
    ),
]  # fmt: skip
CALIBRATION += [replace(spec, bits=4) for spec in CALIBRATION]  # every layer again with int4 weights


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


def shape_of(spec: Spec) -> tuple:
    """A spec without its sparsity and seed: the points one shape contributes to a fit."""
    return spec.op, spec.in_shape, spec.out_c, spec.k, spec.stride, spec.pad, spec.bits


def leave_one_shape_out(points: list[tuple[dict[str, float], int]], shapes: list[tuple]) -> np.ndarray:
    """Each point's relative error when predicted by the fit to every other shape's points."""
    rel = np.zeros(len(points))
    for shape in set(shapes):
        inside = [i for i, s in enumerate(shapes) if s == shape]
        coef, _ = fit([p for p, s in zip(points, shapes, strict=True) if s != shape])
        for i in inside:
            features, instructions = points[i]
            rel[i] = abs(sum(coef[n] * v for n, v in features.items()) - instructions) / instructions
    return rel


def code_bytes(target_name: str) -> dict[str, int]:
    """.text bytes of each kernel object (-O2) for the target: what a format adds to the firmware."""
    target = TARGETS[target_name]
    sizes = {}
    for op, fmt, bits in ((op, fmt, bits) for op in (Op.DENSE, Op.CONV2D) for fmt in FORMATS for bits in WEIGHT_BITS):
        (source,) = kernel_sources(target.variant, [(op, fmt, bits)])
        with tempfile.TemporaryDirectory() as tmp:
            obj = Path(tmp) / "kernel.o"
            cmd = ["arm-none-eabi-gcc", *target.cpu_flags, "-O2", "-std=c11", f"-I{INCLUDE_DIR}", "-c",
                   str(source), "-o", str(obj)]  # fmt: skip
            subprocess.run(cmd, check=True)
            size = subprocess.run(["arm-none-eabi-size", "-A", str(obj)], capture_output=True, text=True,
                                  check=True)  # fmt: skip
        sizes[cost_key(op, fmt, target.variant, target.core, bits)] = sum(
            int(line.split()[1]) for line in size.stdout.splitlines() if line.startswith(".text")
        )
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench_sparse_fit")
    parser.add_argument("--out", type=Path, default=COSTS_PATH)
    parser.add_argument("--measurements", type=Path, help="JSON cache of the QEMU counts (see the docstring)")
    args = parser.parse_args()

    names = [spec.name for spec in CALIBRATION]
    assert len(set(names)) == len(names), "calibration specs must have distinct names"
    specs = {spec.name: spec for spec in CALIBRATION}
    layers = {spec.name: make_layer(spec)[0] for spec in CALIBRATION}
    conv_shapes = {shape_of(spec): spec.name for spec in CALIBRATION if spec.op is Op.CONV2D and spec.bits == 8}
    paths = Counter(conv_path(layers[name]) for name in conv_shapes.values())
    print(f"{len(FC_SHAPES)} FC and {len(CONV_SHAPES)} conv shapes; dense DSP conv paths: "
          + ", ".join(f"{path} {n}" for path, n in sorted(paths.items())))  # fmt: skip
    results, ok = [], True
    if args.measurements is not None and args.measurements.is_file():
        results = [Result(**r) for r in json.loads(args.measurements.read_text())]
        print(f"{len(results)} measurements from {args.measurements}")
    else:
        for i, batch in enumerate(batches(CALIBRATION)):
            batch_results, batch_ok = measure(batch, list(TARGETS), args.build_dir / f"batch{i}")
            results += batch_results
            ok &= batch_ok
        if not ok:
            print("FAILED: a kernel disagrees with numpy; not fitting")
            return 1
        if args.measurements is not None:
            args.measurements.write_text(json.dumps([asdict(r) for r in results]) + "\n")
    groups: dict[str, list] = {}
    for r in results:
        groups.setdefault(cost_key(r.op, r.fmt, r.variant, r.core, r.bits), []).append(r)
    models = {}
    for key, runs in sorted(groups.items()):
        # the terms of the kernel that ran (run.py's Result.features are the DSP variant's)
        points = [(layer_cost_features(layers[r.spec], r.fmt, r.variant), r.instructions) for r in runs]
        coef, rel = fit(points)
        unseen = leave_one_shape_out(points, [shape_of(specs[r.spec]) for r in runs])
        worst = runs[int(rel.argmax())]
        models[key] = {"coefficients": coef, "max_relative_error": round(float(rel.max()), 4), "points": len(runs)}
        print(f"{key:36s} max rel. error {100 * rel.max():4.1f}% ({worst.spec}), mean {100 * rel.mean():3.1f}%; "
              f"shape left out: max {100 * unseen.max():4.1f}%, mean {100 * unseen.mean():3.1f}%")  # fmt: skip
    gcc = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    qemu = subprocess.run(["qemu-system-arm", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    doc = {
        "note": (
            "Instruction-count model of the kernels, per '<op>/<format>/<variant>/<core>' (int8 weights) and "
            "'<op>/s4_<format>/<variant>/<core>' (int4 weights): "
            "instructions ~= sum(coefficients[name] * mcuprune.model.costs.layer_cost_features(layer, format, "
            "variant)[name]). Fitted by "
            "bench/sparse/fit_costs.py (non-negative least squares on relative error) to QEMU -icount counts of "
            f"{len(CALIBRATION)} random pruned layers (half of them int4; "
            f"{sum(spec.block > 1 for spec in CALIBRATION)} with masks of 1 x 4 blocks) x {len(FORMATS)} formats "
            "per target "
            "(sparsity "
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
