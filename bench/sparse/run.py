#!/usr/bin/env python3
"""Sparse-kernel benchmark: instruction counts of every weight format in QEMU, checked vs numpy.

Builds seeded random pruned layers (masks of exact sparsity: unstructured, or made of random 1 x 4
blocks of consecutive columns, names with ``_b4``), packs each in every
format with mcuprune.model.formats and emits them through the code generator's C helpers (c_definitions,
params_initializer), builds the harness (bench/harness/) into one ELF per target (and group of layers
that fits its 4 MB, ``batches``) and runs it under
`qemu-system-arm -icount shift=0`. Layers with int4 weights (names with ``_i4``; weights in [-8, 7])
run the int4 kernels (mcup_<kernel>_s4_<format>) of every format; the table compares them with the
dense kernel of their own width and with the int8 layer of the same shape and sparsity:

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
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench" / "harness")]

from qemu_bench import M3, M4, Target, bench_data, build, c_array, case_c, fnv1a, run_all  # noqa: E402

from mcuprune.codegen.emit import c_definitions, params_initializer  # noqa: E402
from mcuprune.model.costs import layer_cost_features  # noqa: E402
from mcuprune.model.fixedpoint import quantize_multipliers  # noqa: E402
from mcuprune.model.formats import format_bytes, layer_bytes, pack  # noqa: E402
from mcuprune.model.ir import Op, QParams, QuantLayer, conv_out_hw  # noqa: E402
from mcuprune.model.ops import FORMATS, OPS, scratch_bytes  # noqa: E402
from mcuprune.model.reference import conv2d_s8, dense_s8, im2col  # noqa: E402

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
    bits: int = 8  # weight width: 8, or 4 (int4 weights, the _s4_ kernels)
    block: int = 1  # mask structure: 1 unstructured, 4 random 1 x 4 blocks (of the flattened columns)

    @property
    def name(self) -> str:
        pct = round(100 * self.sparsity)
        width = "" if self.bits == 8 else f"_i{self.bits}"
        mask = "" if self.block == 1 else f"_b{self.block}"
        if self.op is Op.DENSE:
            return f"fc_{self.in_shape[0]}x{self.out_c}{width}{mask}_s{pct}"
        h, w, c = self.in_shape
        return f"conv_{h}x{w}x{c}_{self.out_c}_k{self.k}s{self.stride}p{self.pad}{width}{mask}_s{pct}"

    @property
    def int8_twin(self) -> str:
        """The name of the int8 spec of the same shape and sparsity."""
        return replace(self, bits=8).name


TABLE_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
TABLE_SPECS = [Spec(Op.DENSE, (1568,), 64, s, seed=1) for s in TABLE_SPARSITIES] + [
    Spec(Op.CONV2D, (14, 14, 16), 32, s, seed=2) for s in TABLE_SPARSITIES
]
TABLE_SPECS += [replace(spec, block=4) for spec in TABLE_SPECS]  # the same shapes, masks of 1 x 4 blocks
TABLE_SPECS += [replace(spec, bits=4) for spec in TABLE_SPECS]  # the same layers with int4 weights
QUICK_SPECS = [
    Spec(Op.DENSE, (100,), 12, 0.7, seed=5),
    Spec(Op.DENSE, (600,), 5, 0.99, seed=6),  # gaps > 255: csr8 fillers
    Spec(Op.CONV2D, (6, 6, 8), 6, 0.7, seed=7),
    Spec(Op.CONV2D, (7, 7, 3), 5, 0.5, stride=2, pad=0, seed=8),  # odd pixel count, k % 4 = 3
]
QUICK_SPECS += [replace(spec, bits=4) for spec in QUICK_SPECS] + [
    Spec(Op.DENSE, (203,), 7, 0.3, seed=9, bits=4),  # odd rows: int4 rows padded to a byte, blocks of 8
    Spec(Op.CONV2D, (7, 6, 5), 9, 0.4, seed=10, bits=4),  # k = 45: csr rows starting in a high nibble
]
QUICK_SPECS += [  # masks of 1 x 4 blocks: block4's speed path
    Spec(Op.DENSE, (102,), 7, 0.6, seed=11, block=4),  # cols % 4 = 2: the last block padded
    Spec(Op.DENSE, (1030,), 5, 0.9, seed=12, block=4),  # 258 blocks a row: uint16 block columns
    Spec(Op.CONV2D, (7, 7, 3), 5, 0.5, stride=2, pad=0, seed=13, block=4),  # k = 27, odd pixel count
    Spec(Op.CONV2D, (6, 6, 8), 6, 0.8, seed=14, bits=4, block=4),
    Spec(Op.DENSE, (1030,), 3, 0.7, seed=15, bits=4, block=4),
]


def make_layer(spec: Spec) -> tuple[QuantLayer, np.ndarray]:
    """Random int8 weights, never 0 where kept; exactly round(sparsity * size) pruned; ReLU (the
    output zero point is -128, so the clamp is the int8 range's bottom)."""
    rng = np.random.default_rng(spec.seed)
    if spec.op is Op.DENSE:
        in_shape, out_shape = spec.in_shape, (spec.out_c,)
        w_shape: tuple[int, ...] = (spec.out_c, spec.in_shape[0])
    else:
        h, w, c = spec.in_shape
        in_shape = (h, w, c)
        out_shape = (*conv_out_hw(h, w, spec.k, spec.k, (spec.stride,) * 2, (spec.pad,) * 4), spec.out_c)
        w_shape = (spec.out_c, spec.k, spec.k, c)
    size = int(np.prod(w_shape))
    if spec.block == 1:
        mask = np.ones(size, dtype=bool)
        mask[rng.permutation(size)[: round(spec.sparsity * size)]] = False
    else:  # exactly round(sparsity * blocks) whole blocks of `block` consecutive columns pruned
        rows, cols = w_shape[0], size // w_shape[0]
        per_row = -(-cols // spec.block)
        keep = np.ones(rows * per_row, dtype=bool)
        keep[rng.permutation(keep.size)[: round(spec.sparsity * keep.size)]] = False
        mask = np.repeat(keep.reshape(rows, per_row), spec.block, axis=1)[:, :cols]
    mask = mask.reshape(w_shape)
    top = 128 if spec.bits == 8 else 8  # int4: magnitudes 1..7 and -8
    magnitudes = np.clip(rng.integers(1, top + (spec.bits == 4), size=w_shape) * rng.choice([-1, 1], size=w_shape),
                         -top, top - 1)  # fmt: skip
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
        multiplier=multiplier, shift=shift, act_min=in_zp, stride=(spec.stride,) * 2, padding=(spec.pad,) * 4,
        mask=mask, weight_bits=spec.bits,
    )  # fmt: skip
    return layer, x


def batches(specs: list[Spec], limit: int = 3_000_000) -> list[list[Spec]]:
    """The specs in consecutive groups small enough for one benchmark ELF each (the harness has
    4 MB for code and constants): at most `limit` bytes of packed weights (every format) and
    inputs per group."""
    groups: list[list[Spec]] = [[]]
    used = 0
    for spec in specs:
        layer, x = make_layer(spec)
        size = sum(format_bytes(layer.weights, fmt, spec.bits) for fmt in FORMATS) + x.size
        if groups[-1] and used + size > limit:
            groups.append([])
            used = 0
        groups[-1].append(spec)
        used += size
    return groups


def build_target(name: str, build_dir: Path, layers: list[tuple[Spec, QuantLayer, np.ndarray]]) -> Path:
    """The ELF of one target: every spec in every format."""
    variant = TARGETS[name].variant
    defs, entries = [], []
    max_out = max_scratch = 4
    for spec, layer, x in layers:
        n = spec.name
        defs.append(c_array("int8_t", f"{n}_input", x))
        out_size = int(np.prod(layer.out_shape))
        max_out = max(max_out, out_size)
        for fmt in FORMATS:
            case = f"{n}_{fmt}"
            scratch = scratch_bytes(layer, fmt, variant)
            max_scratch = max(max_scratch, scratch)
            init = params_initializer(layer.__class__(**{**layer.__dict__, "name": case}), fmt)
            defs += [c_array("int32_t", f"mcup_param_{case}_{field}", getattr(layer, field))
                     for field in ("bias", "multiplier", "shift")]  # fmt: skip
            spec_op, bits = OPS[layer.op], layer.weight_bits
            wrappers, entry = case_c(case, spec_op.function(fmt, bits), f"{case}_params", f"{n}_input", out_size,
                                     scratch)  # fmt: skip
            defs += [
                c_definitions(case, pack(layer.weights, fmt, bits)),
                f"static const {spec_op.struct(fmt, bits)} {case}_params = {init};\n",
                wrappers,
            ]
            entries.append(entry)
    data = bench_data(f"bench/sparse/run.py ({variant} kernels)", defs, entries)
    widths = sorted({layer.weight_bits for _, layer, _ in layers}, reverse=True)
    kernels = [(op, fmt, bits) for op in (Op.DENSE, Op.CONV2D) for fmt in FORMATS for bits in widths]
    return build(build_dir / name, TARGETS[name], data, kernels, max_out, max_scratch)


@dataclass(frozen=True)
class Result:
    target: str
    core: str
    variant: str
    spec: str
    op: str
    fmt: str
    bits: int
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
        reference = dense_s8 if spec.op is Op.DENSE else conv2d_s8
        info[spec.name] = (spec, layer, fnv1a(reference(x[None], layer)[0]))
    runs = run_all({name: (build_target(name, build_dir, layers), TARGETS[name].machine) for name in targets})
    ok = True
    results = []
    for name, run in runs.items():
        target = TARGETS[name]
        error = run.calibration_error()
        if error is not None:
            print(f"{name}: {error}")
            ok = False
        for case, (instructions, checksum) in run.cases.items():
            spec_name, fmt = case.rsplit("_", 1)
            spec, layer, expected = info[spec_name]
            w = layer.weights.reshape(layer.weights.shape[0], -1)
            features = layer_cost_features(layer, fmt, target.variant)
            result = Result(
                target=name, core=target.core, variant=target.variant, spec=spec_name, op=spec.op.value, fmt=fmt,
                bits=spec.bits, sparsity=spec.sparsity, instructions=instructions,
                checksum=checksum, expected=expected, rows=w.shape[0], cols=w.shape[1],
                pixels=int(np.prod(layer.out_shape[:-1])), nnz=int(np.count_nonzero(w)),
                entries=pack(layer.weights, fmt, spec.bits).entries,
                weight_bytes=format_bytes(layer.weights, fmt, spec.bits), layer_bytes=layer_bytes(layer, fmt),
                features=features,
            )  # fmt: skip
            if result.checksum != expected or instructions == 0:
                print(f"MISMATCH {name} {case}: checksum 0x{result.checksum:08x}, numpy 0x{expected:08x}, "
                      f"instructions {instructions}")  # fmt: skip
                ok = False
            results.append(result)
    if len(results) != len(targets) * len(specs) * len(FORMATS):
        print(f"expected {len(targets) * len(specs) * len(FORMATS)} results, got {len(results)}")
        ok = False
    return results, ok


def table(results: list[Result], markdown: bool) -> str:
    """One row per (spec, format): bytes, instructions per target, speed-up vs the dense DSP kernel
    of the layer's width and (int4 layers) vs the int8 layer's dense DSP kernel."""
    by = {(r.target, r.spec, r.fmt): r for r in results}
    specs = list(dict.fromkeys(r.spec for r in results))
    twins = {r.spec: r.spec if r.bits == 8 else r.spec.replace(f"_i{r.bits}_", "_") for r in results}
    targets = [t for t in TARGETS if any(r.target == t for r in results)]
    header = ["layer", "bits", "sparsity", "format", "weight B", "layer B"]
    header += [f"{t} instr" for t in targets]
    header += ["dsp instr/nz-MAC", "vs dense dsp", "vs int8 dense dsp", "checksum (all = numpy)"]
    rows = []
    for spec in specs:
        base = by.get(("m4-dsp", spec, "dense"))
        int8_base = by.get(("m4-dsp", twins[spec], "dense"))
        for fmt in FORMATS:
            any_r = next(by[t, spec, fmt] for t in targets)
            row = [twins[spec].rsplit("_s", 1)[0], f"{any_r.bits}", f"{round(100 * any_r.sparsity)}%", fmt,
                   f"{any_r.weight_bytes}", f"{any_r.layer_bytes}"]  # fmt: skip
            row += [f"{by[t, spec, fmt].instructions}" for t in targets]
            dsp = by.get(("m4-dsp", spec, fmt))
            if dsp is not None and base is not None:
                row.append(f"{dsp.instructions / max(dsp.nnz * max(dsp.pixels, 1), 1):.2f}")
                speedup = base.instructions / dsp.instructions
                row.append(f"**{speedup:.2f}x**" if markdown and fmt != "dense" and speedup >= 2 else f"{speedup:.2f}x")
                row.append(f"{int8_base.instructions / dsp.instructions:.2f}x" if int8_base is not None else "-")
            else:
                row += ["-", "-", "-"]
            sums = {by[t, spec, fmt].checksum for t in targets}
            row.append(f"0x{any_r.expected:08x}" if sums == {any_r.expected} else "MISMATCH")
            rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows])


def acceptance(results: list[Result]) -> tuple[bool, str]:
    """FC 1568->64 at >= 90 % sparsity, int8 weights, DSP, against the dense DSP kernel: on
    unstructured masks the best sparse kernel >= 2x fewer instructions (the criterion of the sparse
    formats); on masks of 1 x 4 blocks, block4 at 90 % >= 4x."""
    lines, ok = [], True
    fc = (r for r in results if r.spec.startswith("fc_1568x64_") and r.sparsity >= 0.9 and r.bits == 8)
    for spec in dict.fromkeys(r.spec for r in fc):
        runs = {r.fmt: r.instructions for r in results if r.spec == spec and r.target == "m4-dsp"}
        dense = runs.pop("dense")
        for fmt, instr in runs.items():
            lines.append(f"{spec} {fmt}: {instr} vs dense {dense} instructions = {dense / instr:.2f}x")
        if "_b4_" in spec:
            ok &= spec != "fc_1568x64_b4_s90" or dense / runs["block4"] >= 4.0
        else:
            ok &= max(dense / i for i in runs.values()) >= 2.0
    return ok, "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench_sparse")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--quick", action="store_true", help="small layers only: the on-target check of the tests")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args()
    specs = QUICK_SPECS if args.quick else TABLE_SPECS
    results, ok = [], True
    for i, group in enumerate(batches(specs)):  # one ELF per target and group (4 MB of code and constants)
        group_results, group_ok = measure(group, list(TARGETS), args.build_dir / f"part{i}")
        results += group_results
        ok &= group_ok
    print(table(results, args.markdown))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    if not args.quick:
        passed, lines = acceptance(results)
        print(lines)
        print("FC 1568->64 >= 90% sparse: >= 2x fewer instructions than dense DSP (1 x 4 blocks, 90%: block4 >= 4x):",
              "PASS" if passed else "FAIL")
        ok &= passed
    print("all checksums match the numpy reference" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
