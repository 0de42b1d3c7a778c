#!/usr/bin/env python3
"""Sparse-kernel benchmark: instruction counts of every weight format in QEMU, checked vs numpy.

Builds seeded random pruned layers (unstructured masks of exact sparsity), packs each in every
format with mcuprune.model.formats and emits them through the code generator's C helpers (c_definitions,
params_initializer), builds one ELF per target and runs it under `qemu-system-arm -icount
shift=0`:

    m4-dsp        mps2-an386, Cortex-M4, -mfloat-abi=hard, DSP kernels
    m4-reference  mps2-an386, Cortex-M4, reference kernels
    m3-reference  mps2-an385, Cortex-M3, -mfloat-abi=soft, reference kernels

Every output checksum must equal the numpy reference's (mcuprune.model.reference on the masked
weights): exit status 1 on any mismatch. Instruction counts are SysTick ticks x 40 (see
bench/kernels/README.md), +-40 per call.

    .venv/bin/python bench/sparse/run.py [--markdown] [--quick] [--build-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mcuprune.codegen.emit import c_definitions, params_initializer  # noqa: E402
from mcuprune.model.costs import layer_cost_features  # noqa: E402
from mcuprune.model.fixedpoint import quantize_multipliers  # noqa: E402
from mcuprune.model.formats import format_bytes, layer_bytes, pack  # noqa: E402
from mcuprune.model.ir import Op, QParams, QuantLayer, conv_out_hw  # noqa: E402
from mcuprune.model.ops import FORMATS, OPS, kernel_sources, scratch_bytes  # noqa: E402
from mcuprune.model.reference import conv2d_s8, dense_s8, im2col  # noqa: E402
from mcuprune.resources import INCLUDE_DIR  # noqa: E402

HERE = Path(__file__).resolve().parent
HARNESS = ROOT / "bench" / "kernels"  # startup.c, bench_io.h, link.ld: shared with the dense benchmark
CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections"]
QEMU_FLAGS = ["-icount", "shift=0", "-semihosting-config", "enable=on,target=native", "-nographic",
              "-monitor", "none", "-serial", "none"]  # fmt: skip
INSTRUCTIONS_PER_TICK = 40  # 25 MHz core clock, 1 ns per instruction under icount shift=0
SENTINEL = "MCUP-BENCH-DONE"


@dataclass(frozen=True)
class Target:
    core: str
    variant: str
    machine: str
    cpu_flags: tuple[str, ...]


M4 = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
M3 = ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft")
TARGETS = {
    "m4-dsp": Target("cortex-m4", "dsp", "mps2-an386", M4),
    "m4-reference": Target("cortex-m4", "reference", "mps2-an386", M4),
    "m3-reference": Target("cortex-m3", "reference", "mps2-an385", M3),
}


@dataclass(frozen=True)
class Spec:
    """One pruned layer: shape and the exact fraction of weights pruned."""

    op: Op
    in_shape: tuple[int, ...]
    out_c: int
    sparsity: float
    k: int = 3
    stride: int = 1
    pad: int = 1
    seed: int = 0

    @property
    def name(self) -> str:
        pct = round(100 * self.sparsity)
        if self.op is Op.DENSE:
            return f"fc_{self.in_shape[0]}x{self.out_c}_s{pct}"
        h, w, c = self.in_shape
        return f"conv_{h}x{w}x{c}_{self.out_c}_k{self.k}s{self.stride}p{self.pad}_s{pct}"


TABLE_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
TABLE_SPECS = [Spec(Op.DENSE, (1568,), 64, s, seed=1) for s in TABLE_SPARSITIES] + [
    Spec(Op.CONV2D, (14, 14, 16), 32, s, seed=2) for s in TABLE_SPARSITIES
]
QUICK_SPECS = [
    Spec(Op.DENSE, (100,), 12, 0.7, seed=5),
    Spec(Op.DENSE, (600,), 5, 0.99, seed=6),  # gaps > 255: csr8 fillers
    Spec(Op.CONV2D, (6, 6, 8), 6, 0.7, seed=7),
    Spec(Op.CONV2D, (7, 7, 3), 5, 0.5, stride=2, pad=0, seed=8),  # odd pixel count, k % 4 = 3
]


def make_layer(spec: Spec) -> tuple[QuantLayer, np.ndarray]:
    """Random int8 weights, never 0 where kept; exactly round(sparsity * size) pruned; ReLU."""
    rng = np.random.default_rng(spec.seed)
    if spec.op is Op.DENSE:
        in_shape, out_shape = spec.in_shape, (spec.out_c,)
        w_shape: tuple[int, ...] = (spec.out_c, spec.in_shape[0])
    else:
        h, w, c = spec.in_shape
        in_shape = (h, w, c)
        out_shape = (*conv_out_hw(h, w, spec.k, spec.k, spec.stride, spec.pad), spec.out_c)
        w_shape = (spec.out_c, spec.k, spec.k, c)
    size = int(np.prod(w_shape))
    mask = np.ones(size, dtype=bool)
    mask[rng.permutation(size)[: round(spec.sparsity * size)]] = False
    mask = mask.reshape(w_shape)
    magnitudes = rng.integers(1, 128, size=w_shape) * rng.choice([-1, 1], size=w_shape)
    weights = np.where(mask, magnitudes, 0).astype(np.int8)
    x = rng.integers(-128, 128, size=in_shape).astype(np.int8)
    in_zp = -128  # post-ReLU activations
    patches = x.astype(np.int64)[None]
    if spec.op is Op.CONV2D:
        patches = im2col(patches, spec.k, spec.k, spec.stride, spec.pad, in_zp)
    patches = patches.reshape(-1, weights[0].size) - in_zp
    bias = rng.integers(-5000, 5000, size=spec.out_c).astype(np.int32)
    acc = patches @ weights.reshape(spec.out_c, -1).astype(np.int64).T + bias
    multiplier, shift = quantize_multipliers(200.0 / np.maximum(np.abs(acc).max(axis=0), 1))
    layer = QuantLayer(
        name=spec.name, op=spec.op, in_shape=in_shape, out_shape=out_shape,
        input_q=QParams(0.02, in_zp), output_q=QParams(0.05, -128), weights=weights, bias=bias,
        multiplier=multiplier, shift=shift, relu=True, stride=spec.stride, pad=spec.pad, mask=mask,
    )  # fmt: skip
    return layer, x


def fnv1a(data: np.ndarray) -> int:
    h = 2166136261
    for b in np.asarray(data, dtype=np.int8).ravel().view(np.uint8):
        h = ((h ^ int(b)) * 16777619) & 0xFFFFFFFF
    return h


def _int_array(ctype: str, name: str, values: np.ndarray) -> str:
    body = ", ".join(str(int(v)) for v in np.asarray(values).ravel())
    return f"static const {ctype} {name}[{np.asarray(values).size}] = {{{body}}};\n"


def bench_data(layers: list[tuple[Spec, QuantLayer, np.ndarray]], variant: str) -> tuple[str, int, int]:
    """bench_data.h for `variant`: every spec in every format. Returns (text, max out, max scratch)."""
    parts = [f"/* Generated by bench/sparse/run.py ({variant} kernels): do not edit. */\n"]
    entries = []
    max_out = max_scratch = 4
    for spec, layer, x in layers:
        n = spec.name
        parts.append(_int_array("int8_t", f"{n}_input", x))
        out_size = int(np.prod(layer.out_shape))
        max_out = max(max_out, out_size)
        for fmt in FORMATS:
            case = f"{n}_{fmt}"
            packed = pack(layer.weights, fmt)
            function = OPS[layer.op].function(fmt)
            scratch = scratch_bytes(layer, fmt, variant)
            max_scratch = max(max_scratch, scratch)
            init = params_initializer(layer.__class__(**{**layer.__dict__, "name": case}), fmt)
            parts += [_int_array("int32_t", f"mcup_param_{case}_{field}", getattr(layer, field))
                      for field in ("bias", "multiplier", "shift")]
            parts += [
                c_definitions(case, packed),
                f"static const {OPS[layer.op].struct(fmt)} {case}_params = {init};\n",
                f"static void {case}_run(void *s) {{ {function}(&{case}_params, {n}_input, bench_output, s); }}\n",
                f"static int32_t {case}_scratch(void) {{ return {function}_get_buffer_size(&{case}_params); }}\n\n",
            ]
            entries.append(f'{{"{case}", {case}_run, {case}_scratch, {scratch}, {out_size}}}')
    parts.append("static const bench_case bench_cases[] = {\n    " + ",\n    ".join(entries) + ",\n};\n")
    return "".join(parts), max_out, max_scratch


def build(name: str, target: Target, build_dir: Path, layers) -> Path:
    out = build_dir / name
    out.mkdir(parents=True, exist_ok=True)
    text, max_out, max_scratch = bench_data(layers, target.variant)
    (out / "bench_data.h").write_text(text)
    pairs = [(op, fmt) for op in (Op.DENSE, Op.CONV2D) for fmt in FORMATS]
    sources = [HARNESS / "startup.c", HERE / "bench.c", *kernel_sources(target.variant, pairs)]
    elf = out / "bench.elf"
    cmd = [
        "arm-none-eabi-gcc", *target.cpu_flags, *CFLAGS, f"-DBENCH_MAX_OUT={max_out}",
        f"-DBENCH_SCRATCH_BYTES={max_scratch}", f"-I{out}", f"-I{HARNESS}", f"-I{INCLUDE_DIR}",
        *map(str, sources), "-nostartfiles", "-Wl,--gc-sections", f"-T{HARNESS / 'link.ld'}", "-o", str(elf),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return elf


def run_qemu(elf: Path, machine: str) -> str:
    cmd = ["qemu-system-arm", "-M", machine, *QEMU_FLAGS, "-kernel", str(elf)]
    # Semihosting console output goes to QEMU's stderr when no chardev is given: merge the two.
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if result.returncode != 0 or SENTINEL not in result.stdout:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}")
    return result.stdout


LINE = re.compile(r"case (\w+) ticks=(\d+) checksum=0x([0-9a-f]{8})")
CALIB = re.compile(r"calib instructions=(\d+) ticks=(\d+) empty_ticks=(\d+)")


@dataclass(frozen=True)
class Result:
    target: str
    core: str
    variant: str
    spec: str
    op: str
    fmt: str
    sparsity: float
    instructions: int
    checksum: int
    expected: int
    rows: int
    cols: int
    pixels: int
    nnz: int
    entries: int
    weight_bytes: int
    layer_bytes: int
    features: dict


def measure(specs: list[Spec], targets: list[str], build_dir: Path) -> tuple[list[Result], bool]:
    """Build and run every target; one Result per (target, spec, format)."""
    layers = [(spec, *make_layer(spec)) for spec in specs]
    info = {}
    for spec, layer, x in layers:
        run = dense_s8 if spec.op is Op.DENSE else conv2d_s8
        info[spec.name] = (spec, layer, fnv1a(run(x[None], layer)[0]))
    elfs = {name: build(name, TARGETS[name], build_dir, layers) for name in targets}
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        outputs = dict(zip(targets, pool.map(lambda t: run_qemu(elfs[t], TARGETS[t].machine), targets), strict=True))
    ok = True
    results = []
    for name in targets:
        target, stdout = TARGETS[name], outputs[name]
        instructions, ticks, empty = map(int, CALIB.search(stdout).groups())
        if abs(instructions / ticks - INSTRUCTIONS_PER_TICK) > 0.5 or empty != 0:
            print(f"{name}: calibration {instructions} instructions = {ticks} ticks, empty call {empty} ticks: "
                  f"expected {INSTRUCTIONS_PER_TICK} instructions/tick and 0; is icount off?")  # fmt: skip
            ok = False
        for case, case_ticks, checksum in LINE.findall(stdout):
            spec_name, fmt = case.rsplit("_", 1)
            spec, layer, expected = info[spec_name]
            w = layer.weights.reshape(layer.weights.shape[0], -1)
            features = layer_cost_features(layer, fmt)
            result = Result(
                target=name, core=target.core, variant=target.variant, spec=spec_name, op=spec.op.value, fmt=fmt,
                sparsity=spec.sparsity, instructions=int(case_ticks) * INSTRUCTIONS_PER_TICK,
                checksum=int(checksum, 16), expected=expected, rows=w.shape[0], cols=w.shape[1],
                pixels=int(np.prod(layer.out_shape[:-1])), nnz=int(np.count_nonzero(w)),
                entries=pack(layer.weights, fmt).entries,
                weight_bytes=format_bytes(layer.weights, fmt), layer_bytes=layer_bytes(layer, fmt), features=features,
            )  # fmt: skip
            if result.checksum != expected or int(case_ticks) == 0:
                print(f"MISMATCH {name} {case}: checksum 0x{result.checksum:08x}, numpy 0x{expected:08x}, "
                      f"ticks {case_ticks}")  # fmt: skip
                ok = False
            results.append(result)
    if len(results) != len(targets) * len(specs) * len(FORMATS):
        print(f"expected {len(targets) * len(specs) * len(FORMATS)} results, got {len(results)}")
        ok = False
    return results, ok


def table(results: list[Result], markdown: bool) -> str:
    """One row per (spec, format): bytes, instructions per target, speed-up vs dense DSP."""
    by = {(r.target, r.spec, r.fmt): r for r in results}
    specs = list(dict.fromkeys(r.spec for r in results))
    targets = [t for t in TARGETS if any(r.target == t for r in results)]
    header = ["layer", "sparsity", "format", "weight B", "layer B"]
    header += [f"{t} instr" for t in targets] + ["dsp instr/nz-MAC", "vs dense dsp", "checksum (all = numpy)"]
    rows = []
    for spec in specs:
        base = by.get(("m4-dsp", spec, "dense"))
        for fmt in FORMATS:
            any_r = next(by[t, spec, fmt] for t in targets)
            row = [spec.rsplit("_s", 1)[0], f"{round(100 * any_r.sparsity)}%", fmt, f"{any_r.weight_bytes}",
                   f"{any_r.layer_bytes}"]  # fmt: skip
            row += [f"{by[t, spec, fmt].instructions}" for t in targets]
            dsp = by.get(("m4-dsp", spec, fmt))
            if dsp is not None and base is not None:
                row.append(f"{dsp.instructions / max(dsp.nnz * max(dsp.pixels, 1), 1):.2f}")
                speedup = base.instructions / dsp.instructions
                row.append(f"**{speedup:.2f}x**" if markdown and fmt != "dense" and speedup >= 2 else f"{speedup:.2f}x")
            else:
                row += ["-", "-"]
            sums = {by[t, spec, fmt].checksum for t in targets}
            row.append(f"0x{any_r.expected:08x}" if sums == {any_r.expected} else "MISMATCH")
            rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows])


def acceptance(results: list[Result]) -> tuple[bool, str]:
    """FC 1568->64 at >= 90 % sparsity: best sparse DSP kernel >= 2x fewer instructions than dense DSP."""
    lines, ok = [], True
    for spec in dict.fromkeys(r.spec for r in results if r.spec.startswith("fc_1568x64_") and r.sparsity >= 0.9):
        runs = {r.fmt: r.instructions for r in results if r.spec == spec and r.target == "m4-dsp"}
        dense = runs.pop("dense")
        for fmt, instr in runs.items():
            lines.append(f"{spec} {fmt}: {instr} vs dense {dense} instructions = {dense / instr:.2f}x")
        ok &= max(dense / i for i in runs.values()) >= 2.0
    return ok, "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench_sparse")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--quick", action="store_true", help="small layers only: the on-target check of the tests")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args()
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH")
    specs = QUICK_SPECS if args.quick else TABLE_SPECS
    results, ok = measure(specs, list(TARGETS), args.build_dir)
    print(table(results, args.markdown))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    if not args.quick:
        passed, lines = acceptance(results)
        print(lines)
        print("FC 1568->64 >= 90% sparse: >= 2x fewer instructions than dense DSP:", "PASS" if passed else "FAIL")
        ok &= passed
    print("all checksums match the numpy reference" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
