#!/usr/bin/env python3
"""Kernel micro-benchmark: instructions per MAC of the reference and DSP kernels in QEMU.

Max-pool cases count instructions per output. Generates fixed random layers (seeded) as C data,
builds the harness (bench/harness/) once per kernel variant for mps2-an386 (Cortex-M4, -O2), runs
both under `qemu-system-arm -icount shift=0` and prints a table. Every output checksum must equal
the numpy reference's (mcuprune.model.reference), so the figures come with an on-target
bit-exactness check. Exit status 1 on any mismatch.

    .venv/bin/python bench/kernels/run.py [--build-dir build/bench_kernels] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench" / "harness")]

from qemu_bench import M4, Target, bench_data, build, c_array, case_c, fnv1a, run_all  # noqa: E402

from mcuprune.model.fixedpoint import quantize_multipliers  # noqa: E402
from mcuprune.model.ir import Op, QParams, QuantLayer, conv_out_hw  # noqa: E402
from mcuprune.model.ops import OPS, scratch_bytes  # noqa: E402
from mcuprune.model.reference import conv2d_s8, dense_s8, im2col, maxpool2d  # noqa: E402

DENSE_KERNELS = [(Op.DENSE, "dense"), (Op.CONV2D, "dense"), (Op.MAXPOOL2D, None)]
TARGETS = {variant: Target("cortex-m4", variant, "mps2-an386", M4) for variant in ("reference", "dsp")}


@dataclass(frozen=True)
class BenchCase:
    name: str  # a C identifier
    op: Op
    in_shape: tuple[int, ...]
    out_c: int
    k: int = 3
    stride: int = 1
    pad: int = 1
    in_zp: int = -128  # post-ReLU activations: zero point at the bottom of the range
    misalign: bool = False  # weights, input and output start 1 byte past a word boundary
    seed: int = 0
    pool: int = 0  # MAXPOOL2D window (out_c is then the channel count)


CASES = [
    BenchCase("fc_1568x64", Op.DENSE, (1568,), 64, seed=1),
    BenchCase("conv_14x14x16_32_k3p1", Op.CONV2D, (14, 14, 16), 32, seed=2),
    BenchCase("conv_28x28x1_16_k3p1", Op.CONV2D, (28, 28, 1), 16, in_zp=-1, seed=3),
    # On-target checks of the awkward paths with the real DSP instructions: unaligned rows and
    # pointers, k % 4 tails, leftover rows/channels, an odd pixel count, stride 2.
    BenchCase("fc_1571x62_misaligned", Op.DENSE, (1571,), 62, in_zp=3, misalign=True, seed=4),
    BenchCase("conv_9x9x3_7_k3s2p1_misaligned", Op.CONV2D, (9, 9, 3), 7, stride=2, misalign=True, seed=5),
    # The demo CNN's two max-pools; then unaligned words, an odd width and c % 4 = 2 on the target.
    BenchCase("maxpool_28x28x16_p2", Op.MAXPOOL2D, (28, 28, 16), 16, pool=2, seed=6),
    BenchCase("maxpool_14x14x32_p2", Op.MAXPOOL2D, (14, 14, 32), 32, pool=2, seed=7),
    BenchCase("maxpool_9x7x6_p2_misaligned", Op.MAXPOOL2D, (9, 7, 6), 6, pool=2, misalign=True, seed=8),
]


def make_layer(case: BenchCase) -> tuple[QuantLayer, np.ndarray]:
    """Random int8 weights/input; requantization spreads outputs over the int8 range (ReLU)."""
    rng = np.random.default_rng(case.seed)
    if case.op is Op.MAXPOOL2D:
        h, w, c = case.in_shape
        x = rng.integers(-128, 128, size=case.in_shape).astype(np.int8)
        q = QParams(0.05, -128)
        layer = QuantLayer(
            name=case.name,
            op=case.op,
            in_shape=case.in_shape,
            out_shape=(h // case.pool, w // case.pool, c),
            input_q=q,
            output_q=q,
            pool=case.pool,
        )
        return layer, x
    if case.op is Op.DENSE:
        in_shape, out_shape = case.in_shape, (case.out_c,)
        weights = rng.integers(-127, 128, size=(case.out_c, case.in_shape[0]), dtype=np.int8)
        patches = rng.integers(-128, 128, size=in_shape).astype(np.int64)[None]
    else:
        h, w, c = case.in_shape
        out_hw = conv_out_hw(h, w, case.k, case.k, case.stride, case.pad)
        in_shape, out_shape = (h, w, c), (*out_hw, case.out_c)
        weights = rng.integers(-127, 128, size=(case.out_c, case.k, case.k, c), dtype=np.int8)
        patches = rng.integers(-128, 128, size=in_shape).astype(np.int64)[None]
    x = patches[0].astype(np.int8)
    if case.op is Op.CONV2D:
        patches = im2col(patches, case.k, case.k, case.stride, case.pad, case.in_zp)
    patches = patches.reshape(-1, weights[0].size) - case.in_zp
    bias = rng.integers(-5000, 5000, size=case.out_c).astype(np.int32)
    acc = patches @ weights.reshape(case.out_c, -1).astype(np.int64).T + bias
    multiplier, shift = quantize_multipliers(200.0 / np.maximum(np.abs(acc).max(axis=0), 1))
    layer = QuantLayer(
        name=case.name, op=case.op, in_shape=in_shape, out_shape=out_shape,
        input_q=QParams(0.02, case.in_zp), output_q=QParams(0.05, -128),
        weights=weights, bias=bias, multiplier=multiplier, shift=shift, relu=True,
        stride=case.stride, pad=case.pad,
    )  # fmt: skip
    return layer, x


def work(case: BenchCase, layer: QuantLayer) -> int:
    """MACs (nominal: every tap counts, padding included); outputs for max-pool."""
    out_size = int(np.prod(layer.out_shape))
    return out_size if case.op is Op.MAXPOOL2D else out_size * int(layer.weights[0].size)


def layer_c(case: BenchCase, layer: QuantLayer, x: np.ndarray, variant: str) -> tuple[str, str]:
    """C definitions of one case's data and wrappers, and its bench_cases[] entry."""
    n = case.name
    lead = 1 if case.misalign else 0
    out_size = int(np.prod(layer.out_shape))
    fmt = "dense" if layer.has_weights else None
    wrappers, entry = case_c(n, OPS[case.op].function(fmt), f"{n}_params", f"{n}_input + {lead}", out_size,
                             scratch_bytes(layer, fmt, variant), lead, scratch=layer.has_weights)  # fmt: skip
    if case.op is Op.MAXPOOL2D:
        h, w, c = layer.in_shape
        parts = [
            c_array("int8_t", f"{n}_input", x, lead),
            f"static const mcup_maxpool2d_params {n}_params = {{{h}, {w}, {c}, {layer.pool}}};\n",
        ]
        return "\n".join([*parts, wrappers]), entry
    parts = [
        c_array("int8_t", f"{n}_weights", layer.weights, lead),
        c_array("int32_t", f"{n}_bias", layer.bias),
        c_array("int32_t", f"{n}_multiplier", layer.multiplier),
        c_array("int32_t", f"{n}_shift", layer.shift),
        c_array("int8_t", f"{n}_input", x, lead),
    ]
    weights = f"{n}_weights + {lead}"
    q = (
        f"{{{n}_bias, {n}_multiplier, {n}_shift, {-layer.input_q.zero_point}, "
        f"{layer.output_q.zero_point}, {layer.act_min}, {layer.act_max}}}"
    )
    if case.op is Op.DENSE:
        out_f, in_f = layer.weights.shape
        parts.append(f"static const mcup_fc_params {n}_params = {{{in_f}, {out_f}, {weights}, {q}}};\n")
    else:
        out_c, k_h, k_w, in_c = layer.weights.shape
        (in_h, in_w, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape
        dims = f"{in_h}, {in_w}, {in_c}, {out_h}, {out_w}, {out_c}, {k_h}, {k_w}, {layer.stride}, {layer.pad}"
        parts.append(f"static const mcup_conv2d_params {n}_params = {{{dims}, {weights}, {q}}};\n")
    return "\n".join([*parts, wrappers]), entry


def build_variant(variant: str, build_dir: Path, layers: list[tuple[BenchCase, QuantLayer, np.ndarray]]) -> Path:
    defs, entries = zip(*(layer_c(case, layer, x, variant) for case, layer, x in layers), strict=True)
    scratch = max(scratch_bytes(layer, "dense" if layer.has_weights else None, variant) for _, layer, _ in layers)
    max_out = max(int(np.prod(layer.out_shape)) for _, layer, _ in layers)  # bench.c adds 1 for out_lead
    data = bench_data(f"bench/kernels/run.py for the {variant} kernels", defs, entries)
    return build(build_dir / variant, TARGETS[variant], data, DENSE_KERNELS, max_out, scratch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench_kernels")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()

    layers = [(case, *make_layer(case)) for case in CASES]
    expected = {}
    for case, layer, x in layers:
        if case.op is Op.MAXPOOL2D:
            expected[case.name] = fnv1a(maxpool2d(x[None], layer.pool)[0])
        else:
            reference = dense_s8 if case.op is Op.DENSE else conv2d_s8
            expected[case.name] = fnv1a(reference(x[None], layer)[0])

    runs = run_all({v: (build_variant(v, args.build_dir, layers), t.machine) for v, t in TARGETS.items()})
    ok = True
    for variant, run in runs.items():
        print(f"{variant}: calibration {run.calib_instructions} instructions = {run.calib_ticks} ticks "
              f"({run.instructions_per_tick:.2f} instructions/tick), "
              f"empty measurement {run.empty_ticks} ticks")  # fmt: skip
        error = run.calibration_error()
        if error is not None:
            print(f"  {error}")
            ok = False
        for name, (instructions, checksum) in run.cases.items():
            if checksum != expected[name] or instructions == 0:
                print(f"  MISMATCH {name} {variant}: checksum 0x{checksum:08x}, numpy 0x{expected[name]:08x}")
                ok = False
        if set(run.cases) != set(expected):
            print(f"  {variant}: cases {sorted(run.cases)}, expected {sorted(expected)}")
            return 1

    # work: MACs for FC and conv, outputs for max-pool; "per unit" divides by it
    header = ["kernel", "work", "reference instr", "per unit", "dsp instr", "per unit", "speed-up",
              "checksum (both = numpy)"]  # fmt: skip
    rows = []
    for case, layer, _ in layers:
        units = work(case, layer)
        ref_i, checksum = runs["reference"].cases[case.name]
        dsp_i, _ = runs["dsp"].cases[case.name]
        unit = "outputs" if case.op is Op.MAXPOOL2D else "MACs"
        rows.append([case.name, f"{units} {unit}", f"{ref_i}", f"{ref_i / units:.2f}", f"{dsp_i}",
                     f"{dsp_i / units:.2f}", f"{ref_i / dsp_i:.2f}x", f"0x{checksum:08x}"])  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    print("all checksums match the numpy reference" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
