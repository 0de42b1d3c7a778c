#!/usr/bin/env python3
"""Kernel micro-benchmark: instructions per MAC of the reference and DSP kernels in QEMU.

Max-pool cases count instructions per output. Generates fixed random layers (seeded) as C data,
builds bench.c once per kernel variant for mps2-an386 (Cortex-M4, -O2), runs both under
`qemu-system-arm -icount shift=0` and prints a table. Every output checksum must equal the numpy
reference's (mcuprune.model.reference), so the figures come with an on-target bit-exactness check.
Exit status 1 on any mismatch.

    .venv/bin/python bench/kernels/run.py [--build-dir build/bench_kernels] [--markdown]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mcuprune.model.fixedpoint import quantize_multipliers  # noqa: E402
from mcuprune.model.ir import Op, QParams, QuantLayer, conv_out_hw  # noqa: E402
from mcuprune.model.ops import kernel_sources, scratch_bytes  # noqa: E402
from mcuprune.model.reference import conv2d_s8, dense_s8, im2col, maxpool2d  # noqa: E402
from mcuprune.resources import INCLUDE_DIR  # noqa: E402

HERE = Path(__file__).resolve().parent
DENSE_KERNELS = [(Op.DENSE, "dense"), (Op.CONV2D, "dense"), (Op.MAXPOOL2D, None)]
VARIANTS = ("reference", "dsp")
CPU_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections"]
QEMU = ["-M", "mps2-an386", "-icount", "shift=0", "-semihosting-config", "enable=on,target=native",
        "-nographic", "-monitor", "none", "-serial", "none"]  # fmt: skip
INSTRUCTIONS_PER_TICK = 40  # 25 MHz core clock, 1 ns per instruction under icount shift=0
SENTINEL = "MCUP-BENCH-DONE"


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


def c_array(ctype: str, name: str, values: np.ndarray, lead: int = 0) -> str:
    """A static const, 4-byte aligned C array, after `lead` padding elements (data at name + lead).

    >>> c_array("int8_t", "w", np.array([1, -2]))
    'static const int8_t w[2] __attribute__((aligned(4))) = {\\n    1, -2,\\n};\\n'
    """
    flat = ["0"] * lead + [str(int(v)) for v in np.asarray(values).ravel()]
    rows = [", ".join(flat[i : i + 24]) + "," for i in range(0, len(flat), 24)]
    body = "\n".join("    " + row for row in rows)
    return f"static const {ctype} {name}[{len(flat)}] __attribute__((aligned(4))) = {{\n{body}\n}};\n"


def layer_c(case: BenchCase, layer: QuantLayer, x: np.ndarray) -> tuple[str, str]:
    """C definitions of one case's data and its bench_cases[] entry."""
    n = case.name
    lead = 1 if case.misalign else 0
    out_size = int(np.prod(layer.out_shape))
    if case.op is Op.MAXPOOL2D:
        h, w, c = layer.in_shape
        parts = [
            c_array("int8_t", f"{n}_input", x, lead),
            f"static const mcup_maxpool2d_params {n}_params = {{{h}, {w}, {c}, {layer.pool}}};\n",
        ]
        entry = f'{{"{n}", BENCH_POOL, 0, 0, &{n}_params, {n}_input + {lead}, {lead}, {out_size}, {out_size}u}}'
        return "\n".join(parts), entry
    parts = [
        c_array("int8_t", f"{n}_weights", layer.weights, lead),
        c_array("int32_t", f"{n}_bias", layer.bias),
        c_array("int32_t", f"{n}_multiplier", layer.multiplier),
        c_array("int32_t", f"{n}_shift", layer.shift),
        c_array("int8_t", f"{n}_input", x, lead),
    ]
    weights, x_ptr = f"{n}_weights + {lead}", f"{n}_input + {lead}"
    q = (
        f"{{{n}_bias, {n}_multiplier, {n}_shift, {-layer.input_q.zero_point}, "
        f"{layer.output_q.zero_point}, {layer.act_min}, {layer.act_max}}}"
    )
    macs = out_size * int(layer.weights[0].size)
    if case.op is Op.DENSE:
        out_f, in_f = layer.weights.shape
        parts.append(f"static const mcup_fc_params {n}_params = {{{in_f}, {out_f}, {weights}, {q}}};\n")
        entry = f'{{"{n}", BENCH_FC, &{n}_params, 0, 0, {x_ptr}, {lead}, {out_size}, {macs}u}}'
    else:
        out_c, k_h, k_w, in_c = layer.weights.shape
        (in_h, in_w, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape
        dims = f"{in_h}, {in_w}, {in_c}, {out_h}, {out_w}, {out_c}, {k_h}, {k_w}, {layer.stride}, {layer.pad}"
        parts.append(f"static const mcup_conv2d_params {n}_params = {{{dims}, {weights}, {q}}};\n")
        entry = f'{{"{n}", BENCH_CONV, 0, &{n}_params, 0, {x_ptr}, {lead}, {out_size}, {macs}u}}'
    return "\n".join(parts), entry


def write_data(path: Path, variant: str, layers: list[tuple[BenchCase, QuantLayer, np.ndarray]]) -> None:
    defs, entries = zip(*(layer_c(case, layer, x) for case, layer, x in layers), strict=True)
    scratch = max(scratch_bytes(layer, "dense" if layer.has_weights else None, variant) for _, layer, _ in layers)
    max_out = max(int(np.prod(layer.out_shape)) for _, layer, _ in layers)  # bench.c adds 1 for out_lead
    path.write_text(
        f"/* Generated by bench/kernels/run.py for the {variant} kernels: do not edit. */\n"
        f"#define BENCH_SCRATCH_BYTES {scratch} /* mcuprune.model.ops.scratch_bytes, max over cases */\n"
        f"#define BENCH_MAX_OUT {max_out}\n\n" + "\n".join(defs) + "\n"
        "static const bench_case bench_cases[] = {\n    " + ",\n    ".join(entries) + ",\n};\n"
    )


def fnv1a(data: np.ndarray) -> int:
    h = 2166136261
    for b in np.asarray(data, dtype=np.int8).ravel().view(np.uint8):
        h = ((h ^ int(b)) * 16777619) & 0xFFFFFFFF
    return h


def build(variant: str, build_dir: Path, layers) -> Path:
    out = build_dir / variant
    out.mkdir(parents=True, exist_ok=True)
    write_data(out / "bench_data.h", variant, layers)
    sources = [HERE / "startup.c", HERE / "bench.c", *kernel_sources(variant, DENSE_KERNELS)]
    elf = out / "bench.elf"
    cmd = [
        "arm-none-eabi-gcc", *CPU_FLAGS, *CFLAGS, f'-DBENCH_VARIANT="{variant}"',
        f"-I{out}", f"-I{HERE}", f"-I{INCLUDE_DIR}", *map(str, sources),
        "-nostartfiles", "-Wl,--gc-sections", f"-T{HERE / 'link.ld'}", "-o", str(elf),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return elf


def run_qemu(elf: Path) -> str:
    cmd = ["qemu-system-arm", *QEMU, "-kernel", str(elf)]
    # Semihosting console output goes to QEMU's stderr when no chardev is given: merge the two.
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if result.returncode != 0 or SENTINEL not in result.stdout:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}")
    return result.stdout


LINE = re.compile(r"case (\w+) variant=(\w+) work=(\d+) ticks=(\d+) checksum=0x([0-9a-f]{8})")
CALIB = re.compile(r"calib instructions=(\d+) ticks=(\d+) empty_ticks=(\d+)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench_kernels")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH")

    layers = [(case, *make_layer(case)) for case in CASES]
    expected = {}
    for case, layer, x in layers:
        if case.op is Op.MAXPOOL2D:
            expected[case.name] = fnv1a(maxpool2d(x[None], layer.pool)[0])
        else:
            run = dense_s8 if case.op is Op.DENSE else conv2d_s8
            expected[case.name] = fnv1a(run(x[None], layer)[0])

    results: dict[tuple[str, str], tuple[int, int, int]] = {}
    ok = True
    for variant in VARIANTS:
        stdout = run_qemu(build(variant, args.build_dir, layers))
        instructions, ticks, empty = map(int, CALIB.search(stdout).groups())
        per_tick = instructions / ticks
        print(f"{variant}: calibration {instructions} instructions = {ticks} ticks "
              f"({per_tick:.2f} instructions/tick), empty measurement {empty} ticks")  # fmt: skip
        if abs(per_tick - INSTRUCTIONS_PER_TICK) > 0.5:
            print(f"  expected {INSTRUCTIONS_PER_TICK} instructions/tick: is icount off?")
            ok = False
        for name, _, work, case_ticks, checksum in LINE.findall(stdout):
            results[name, variant] = (int(work), int(case_ticks) - int(empty), int(checksum, 16))
            if int(checksum, 16) != expected[name] or int(case_ticks) == 0:
                print(f"  MISMATCH {name} {variant}: checksum 0x{checksum}, numpy 0x{expected[name]:08x}")
                ok = False

    # work: MACs for FC and conv, outputs for max-pool; "per unit" divides by it
    header = ["kernel", "work", "reference instr", "per unit", "dsp instr", "per unit", "speed-up",
              "checksum (both = numpy)"]  # fmt: skip
    rows = []
    for case in CASES:
        work, ref_ticks, checksum = results[case.name, "reference"]
        _, dsp_ticks, _ = results[case.name, "dsp"]
        ref_i, dsp_i = ref_ticks * INSTRUCTIONS_PER_TICK, dsp_ticks * INSTRUCTIONS_PER_TICK
        unit = "outputs" if case.op is Op.MAXPOOL2D else "MACs"
        rows.append([case.name, f"{work} {unit}", f"{ref_i}", f"{ref_i / work:.2f}", f"{dsp_i}",
                     f"{dsp_i / work:.2f}", f"{ref_i / dsp_i:.2f}x", f"0x{checksum:08x}"])  # fmt: skip
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
