#!/usr/bin/env python3
"""Kernel micro-benchmark: instructions per call of every kernel in QEMU, reference vs DSP.

Generates fixed random layers (seeded) of MLPerf Tiny shapes and of the demo CNN, emits them with
the code generator's helpers (``params_initializer``, ``c_definitions``: the structs the firmware
gets), builds the harness (bench/harness/) once per target and runs each under
`qemu-system-arm -icount shift=0`:

    m4-dsp        mps2-an386, Cortex-M4, -mfloat-abi=hard, DSP kernels (reference where no twin)
    m4-reference  mps2-an386, Cortex-M4, reference kernels
    m3-reference  mps2-an385, Cortex-M3, -mfloat-abi=soft, reference kernels

Every output checksum must equal the numpy reference's (mcuprune.model.reference), so the
figures come with an on-target bit-exactness check. Exit status 1 on any mismatch. "work" is MACs
for the weighted ops (every tap counted, padding included) and output elements for the others.
Cases whose name ends in ``_s4`` run the int4-weight kernels (mcup_<kernel>_s4_dense) on weights
drawn from [-8, 7]; each has an int8 twin of the same shape in the table.

    .venv/bin/python bench/kernels/run.py [--build-dir build/bench_kernels] [--markdown] [--quick]
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench" / "harness")]

from qemu_bench import M3, M4, Target, bench_data, build, c_array, case_c, fnv1a, run_all  # noqa: E402

from mcuprune.codegen.emit import c_definitions, params_initializer  # noqa: E402
from mcuprune.model.formats import pack  # noqa: E402
from mcuprune.model.int8_params import (  # noqa: E402
    SOFTMAX_OUTPUT_Q,
    activation_range,
    add_multipliers,
    conv_multipliers,
    mean_multiplier,
    softmax_multiplier,
)
from mcuprune.model.ir import RELU, Op, QParams, QuantLayer, conv_out_hw, same_padding  # noqa: E402
from mcuprune.model.ops import scratch_bytes, spec_of  # noqa: E402
from mcuprune.model.reference import im2col  # noqa: E402

TARGETS = {
    "m4-dsp": Target("cortex-m4", "dsp", "mps2-an386", M4),
    "m4-reference": Target("cortex-m4", "reference", "mps2-an386", M4),
    "m3-reference": Target("cortex-m3", "reference", "mps2-an385", M3),
}


@dataclass(frozen=True)
class BenchCase:
    """One kernel call. Weighted ops: out_c output channels (depthwise: the depth multiplier
    gives them), kernel k x k_w. Pooling: window k x k_w. SAME: TFLite SAME padding, else `pad`
    pixels on every side. `misalign`: weights, inputs and output start 1 byte past a word."""

    name: str  # a C identifier
    op: Op
    in_shape: tuple[int, ...]
    out_c: int = 0
    k: int = 3
    k_w: int | None = None
    stride: tuple[int, int] = (1, 1)
    pad: int | str = 1
    depth_multiplier: int = 1
    in_zp: int = -128  # post-ReLU activations: zero point at the bottom of the range
    misalign: bool = False
    seed: int = 0
    quick: bool = False  # in the --quick subset (the tests' on-target check)
    extra: dict = field(default_factory=dict, hash=False)  # op-specific: scales, clamp, beta
    bits: int = 8  # weighted ops: 8, or 4 (int4 weights, the _s4_ kernels)


def s4(case: BenchCase) -> BenchCase:
    """The int4-weight twin of a weighted case (same shape and seed)."""
    return replace(case, name=f"{case.name}_s4", bits=4)


CASES = [
    # The demo CNN's layers (must not regress) and the FC.
    BenchCase("fc_1568x64", Op.DENSE, (1568,), 64, seed=1),
    BenchCase("conv_14x14x16_32_k3p1", Op.CONV2D, (14, 14, 16), 32, seed=2),
    BenchCase("conv_28x28x1_16_k3p1", Op.CONV2D, (28, 28, 1), 16, in_zp=-1, seed=3),
    BenchCase("maxpool_28x28x16_p2", Op.MAXPOOL2D, (28, 28, 16), k=2, stride=(2, 2), pad=0, seed=6),
    BenchCase("maxpool_14x14x32_p2", Op.MAXPOOL2D, (14, 14, 32), k=2, stride=(2, 2), pad=0, seed=7),
    # MLPerf Tiny shapes: DS-CNN (KWS), MobileNet-v1 0.25 (VWW), ResNet-8 (IC).
    BenchCase(
        "conv_49x10x1_64_k10x4s2_same", Op.CONV2D, (49, 10, 1), 64, k=10, k_w=4, stride=(2, 2), pad="same", seed=10
    ),  # fmt: skip
    BenchCase("dw_25x5x64_k3_same", Op.DEPTHWISE_CONV2D, (25, 5, 64), pad="same", seed=11),
    BenchCase("pw_25x5x64_64", Op.CONV2D, (25, 5, 64), 64, k=1, pad=0, seed=12),
    BenchCase("avgpool_25x5x64_global", Op.AVGPOOL2D, (25, 5, 64), k=25, k_w=5, pad=0, seed=13),
    BenchCase("conv_96x96x3_8_k3s2_same", Op.CONV2D, (96, 96, 3), 8, stride=(2, 2), pad="same", seed=14),
    BenchCase("dw_48x48x8_k3s1_same", Op.DEPTHWISE_CONV2D, (48, 48, 8), pad="same", seed=15),
    BenchCase("pw_48x48x8_16", Op.CONV2D, (48, 48, 8), 16, k=1, pad=0, seed=16),
    BenchCase("dw_48x48x16_k3s2_same", Op.DEPTHWISE_CONV2D, (48, 48, 16), stride=(2, 2), pad="same", seed=17),
    BenchCase("dw_48x48x8_k3s2_same", Op.DEPTHWISE_CONV2D, (48, 48, 8), stride=(2, 2), pad="same", seed=18),
    BenchCase("pw_24x24x16_32", Op.CONV2D, (24, 24, 16), 32, k=1, pad=0, seed=19),
    BenchCase("pw_16x16x4_16", Op.CONV2D, (16, 16, 4), 16, k=1, pad=0, seed=40),
    BenchCase("pw_16x16x3_16", Op.CONV2D, (16, 16, 3), 16, k=1, pad=0, seed=41),
    BenchCase("conv_32x32x3_16_k3_same", Op.CONV2D, (32, 32, 3), 16, pad="same", seed=20),
    BenchCase("conv_32x32x16_16_k3_same", Op.CONV2D, (32, 32, 16), 16, pad="same", seed=21),
    BenchCase("conv_32x32x16_32_k3s2_same", Op.CONV2D, (32, 32, 16), 32, stride=(2, 2), pad="same", seed=22),
    BenchCase(
        "add_32x32x16",
        Op.ADD,
        (32, 32, 16),
        seed=23,
        extra={"scales": (0.047, 0.052, 0.061), "zps": (-7, -128, 3), "clamp": RELU},
    ),
    BenchCase("avgpool_8x8x64_global", Op.AVGPOOL2D, (8, 8, 64), k=8, pad=0, seed=24),
    BenchCase("mean_8x8x64", Op.MEAN, (8, 8, 64), seed=25),
    BenchCase("softmax_10", Op.SOFTMAX, (10,), seed=26, extra={"scale": 0.1}),
    BenchCase("softmax_12", Op.SOFTMAX, (12,), seed=27, extra={"scale": 0.25}),
    BenchCase("maxpool_24x24x16_k3s2_same", Op.MAXPOOL2D, (24, 24, 16), k=3, stride=(2, 2), pad="same", seed=28),
    BenchCase("pad_25x5x64_p1", Op.PAD, (25, 5, 64), pad=1, seed=29),
    # On-target checks of the awkward paths with the real DSP instructions: unaligned rows and
    # pointers, k % 4 and c % 4 tails, leftover rows/channels/pixels, depth multiplier 2,
    # dilation, clamps that bite.
    BenchCase("fc_1571x62_misaligned", Op.DENSE, (1571,), 62, in_zp=3, misalign=True, seed=4, quick=True),
    BenchCase(
        "conv_9x9x3_7_k3s2p1_misaligned", Op.CONV2D, (9, 9, 3), 7, stride=(2, 2), misalign=True, seed=5, quick=True
    ),  # fmt: skip
    BenchCase(
        "conv_7x6x12_5_k3s12_dil2_misaligned",
        Op.CONV2D,
        (7, 6, 12),
        5,
        stride=(1, 2),
        pad=2,
        misalign=True,
        seed=30,
        quick=True,
        extra={"dilation": (2, 1)},
    ),  # fmt: skip
    BenchCase("pw_5x3x27_9_misaligned", Op.CONV2D, (5, 3, 27), 9, k=1, pad=0, misalign=True, seed=31, quick=True),
    BenchCase(
        "dw_7x6x7_k3s2_m2_misaligned",
        Op.DEPTHWISE_CONV2D,
        (7, 6, 7),
        stride=(2, 2),
        pad="same",
        depth_multiplier=2,
        misalign=True,
        seed=32,
        quick=True,
    ),  # fmt: skip
    BenchCase(
        "dw_9x7x13_k5_dil2_misaligned",
        Op.DEPTHWISE_CONV2D,
        (9, 7, 13),
        k=5,
        pad=3,
        misalign=True,
        seed=33,
        quick=True,
        extra={"dilation": (2, 2), "clamp": (-1.0, 1.0)},
    ),  # fmt: skip
    BenchCase(
        "maxpool_9x7x6_p2_misaligned",
        Op.MAXPOOL2D,
        (9, 7, 6),
        k=2,
        stride=(2, 2),
        pad=0,
        misalign=True,
        seed=8,
        quick=True,
    ),  # fmt: skip
    BenchCase(
        "maxpool_7x7x7_k3s2_clamp_misaligned",
        Op.MAXPOOL2D,
        (7, 7, 7),
        k=3,
        stride=(2, 2),
        pad="same",
        misalign=True,
        seed=34,
        quick=True,
        extra={"act": (-40, 50)},
    ),  # fmt: skip
    BenchCase(
        "avgpool_7x7x6_k3s2_same_misaligned",
        Op.AVGPOOL2D,
        (7, 7, 6),
        k=3,
        stride=(2, 2),
        pad="same",
        misalign=True,
        seed=35,
        quick=True,
    ),  # fmt: skip
    BenchCase(
        "add_5x3x7_misaligned",
        Op.ADD,
        (5, 3, 7),
        misalign=True,
        seed=36,
        quick=True,
        extra={"scales": (0.02, 0.09, 0.05), "zps": (5, -128, -20), "clamp": (0.0, 6.0)},
    ),
    BenchCase("mean_3x5x13_misaligned", Op.MEAN, (3, 5, 13), misalign=True, seed=37, quick=True),
    BenchCase(
        "softmax_3x37_misaligned", Op.SOFTMAX, (3, 37), misalign=True, seed=38, quick=True, extra={"scale": 0.5}
    ),  # fmt: skip
    BenchCase(
        "pad_3x4x5_asym_misaligned",
        Op.PAD,
        (3, 4, 5),
        pad=0,
        misalign=True,
        seed=39,
        quick=True,
        extra={"padding": (1, 2, 0, 3)},
    ),  # fmt: skip
]
# int4 weights: the demo CNN's layers, the MLPerf Tiny shapes that take the im2col path and every
# depthwise one, and the misaligned on-target checks (the _s4_ kernels' tails, odd rows and channels)
S4_NAMES = ("fc_1568x64", "conv_14x14x16_32_k3p1", "conv_28x28x1_16_k3p1", "conv_49x10x1_64_k10x4s2_same",
            "dw_25x5x64_k3_same", "pw_25x5x64_64", "dw_48x48x8_k3s1_same", "pw_24x24x16_32",
            "conv_32x32x16_16_k3_same", "conv_32x32x16_32_k3s2_same", "fc_1571x62_misaligned",
            "conv_9x9x3_7_k3s2p1_misaligned", "conv_7x6x12_5_k3s12_dil2_misaligned", "pw_5x3x27_9_misaligned",
            "dw_7x6x7_k3s2_m2_misaligned", "dw_9x7x13_k5_dil2_misaligned")  # fmt: skip
CASES += [s4(c) for c in CASES if c.name in S4_NAMES]


def _padding(case: BenchCase, k_h: int, k_w: int, dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    if case.pad == "same":
        return same_padding(case.in_shape[0], case.in_shape[1], k_h, k_w, case.stride, dilation)
    return (int(case.pad),) * 4


def _weighted_layer(case: BenchCase, rng: np.random.Generator) -> tuple[QuantLayer, list[np.ndarray]]:
    """Random int8 weights/input; per-channel scales (int8_params.conv_multipliers) spread the
    outputs over the int8 range; fused ReLU (or the case's clamp)."""
    k_h, k_w = case.k, case.k if case.k_w is None else case.k_w
    dilation = case.extra.get("dilation", (1, 1))
    if case.op is Op.DENSE:
        in_shape, out_shape = case.in_shape, (case.out_c,)
        w_shape: tuple[int, ...] = (case.out_c, case.in_shape[0])
        padding = (0, 0, 0, 0)
    else:
        h, w, c = case.in_shape
        out_c = c * case.depth_multiplier if case.op is Op.DEPTHWISE_CONV2D else case.out_c
        padding = _padding(case, k_h, k_w, dilation)
        in_shape = case.in_shape
        out_shape = (*conv_out_hw(h, w, k_h, k_w, case.stride, padding, dilation), out_c)
        w_shape = (out_c, k_h, k_w, 1 if case.op is Op.DEPTHWISE_CONV2D else c)
    top = 128 if case.bits == 8 else 8
    weights = rng.integers(-top + (case.bits == 8), top, size=w_shape, dtype=np.int8)  # int8 [-127, 127], int4 [-8, 7]
    x = rng.integers(-128, 128, size=in_shape).astype(np.int8)
    out_c = w_shape[0]
    bias = rng.integers(-5000, 5000, size=out_c).astype(np.int32)
    input_q, output_q = QParams(0.02, case.in_zp), QParams(0.05, -128)
    probe = QuantLayer(name=case.name, op=case.op, in_shape=in_shape, out_shape=out_shape, input_q=input_q,
                       output_q=output_q, weights=weights, bias=bias, multiplier=np.full(out_c, 1 << 30, np.int32),
                       shift=np.full(out_c, 30, np.int32), stride=case.stride, padding=padding, dilation=dilation,
                       depth_multiplier=case.depth_multiplier, weight_bits=case.bits)  # fmt: skip
    spread = _accumulator_spread(probe, x)
    weight_scales = (200.0 / spread * output_q.scale / input_q.scale).astype(np.float32)
    multiplier, shift = conv_multipliers(input_q.scale, weight_scales, output_q.scale, out_c)
    act_min, act_max = activation_range(case.extra.get("clamp", RELU), output_q)
    layer = replace(probe, weight_scales=weight_scales, multiplier=multiplier, shift=shift, act_min=act_min,
                    act_max=act_max)  # fmt: skip
    return layer, [x]


def _accumulator_spread(layer: QuantLayer, x: np.ndarray) -> np.ndarray:
    """max |accumulator| per output channel (bias included), from the reference's im2col."""
    zp = layer.input_q.zero_point
    if layer.op is Op.DENSE:
        acc = (x.astype(np.int64)[None] - zp) @ layer.weights.astype(np.int64).T
    else:
        out_c, k_h, k_w, _ = layer.weights.shape
        cols = im2col(x.astype(np.int64)[None], k_h, k_w, layer.stride, layer.padding, zp, layer.dilation) - zp
        if layer.op is Op.CONV2D:
            acc = cols.reshape(-1, layer.weights[0].size) @ layer.weights.reshape(out_c, -1).astype(np.int64).T
        else:
            taps = cols.reshape(-1, k_h * k_w, x.shape[2])[:, :, np.arange(out_c) // layer.depth_multiplier]
            acc = np.einsum("ptc,ct->pc", taps, layer.weights.reshape(out_c, -1).astype(np.int64))
    return np.maximum(np.abs(acc + layer.bias).max(axis=0), 1).astype(np.float64)


def make_layer(case: BenchCase) -> tuple[QuantLayer, list[np.ndarray]]:
    """The case's QuantLayer and its input(s), from the case's seed."""
    rng = np.random.default_rng(case.seed)
    if spec_of(case.op).weighted:
        return _weighted_layer(case, rng)
    x = rng.integers(-128, 128, size=case.in_shape).astype(np.int8)
    common = dict(name=case.name, op=case.op, in_shape=case.in_shape)
    if case.op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
        h, w, c = case.in_shape
        k_w = case.k if case.k_w is None else case.k_w
        padding = _padding(case, case.k, k_w, (1, 1))
        q = QParams(0.05, -128)
        act_min, act_max = case.extra.get("act", (-128, 127))
        layer = QuantLayer(**common, out_shape=(*conv_out_hw(h, w, case.k, k_w, case.stride, padding), c), input_q=q,
                           output_q=q, stride=case.stride, padding=padding, window=(case.k, k_w), act_min=act_min,
                           act_max=act_max)  # fmt: skip
        return layer, [x]
    if case.op is Op.ADD:
        (s1, s2, so), zps = case.extra["scales"], case.extra["zps"]
        multiplier, shift = add_multipliers(s1, s2, so)
        out_q = QParams(so, zps[2])
        act_min, act_max = activation_range(case.extra.get("clamp", (-np.inf, np.inf)), out_q)
        layer = QuantLayer(**common, out_shape=case.in_shape, input_q=QParams(s1, zps[0]), other_q=QParams(s2, zps[1]),
                           output_q=out_q, multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
                           inputs=("a", "b"))  # fmt: skip
        return layer, [x, rng.integers(-128, 128, size=case.in_shape).astype(np.int8)]
    if case.op is Op.MEAN:
        h, w, c = case.in_shape
        m, s = mean_multiplier(0.04, 0.03, h * w)
        layer = QuantLayer(**common, out_shape=(c,), input_q=QParams(0.04, -128), output_q=QParams(0.03, -128),
                           multiplier=np.array([m], np.int32), shift=np.array([s], np.int32))  # fmt: skip
        return layer, [x]
    if case.op is Op.SOFTMAX:
        m, s = softmax_multiplier(case.extra["scale"])
        layer = QuantLayer(**common, out_shape=case.in_shape, input_q=QParams(case.extra["scale"], 0),
                           output_q=SOFTMAX_OUTPUT_Q, multiplier=np.array([m], np.int32),
                           shift=np.array([s], np.int32))  # fmt: skip
        return layer, [x]
    if case.op is Op.PAD:
        h, w, c = case.in_shape
        top, bottom, left, right = case.extra.get("padding", (int(case.pad),) * 4)
        q = QParams(0.05, -3)
        layer = QuantLayer(**common, out_shape=(h + top + bottom, w + left + right, c), input_q=q, output_q=q,
                           padding=(top, bottom, left, right))  # fmt: skip
        return layer, [x]
    raise ValueError(f"no bench builder for {case.op}")


def work(layer: QuantLayer) -> tuple[int, str]:
    """(MACs, "MACs") for a weighted op (every tap counted), else (output elements, "outputs")."""
    out_size = int(np.prod(layer.out_shape))
    if layer.has_weights:
        per_output = int(layer.weights[0].size)  # conv: k_h k_w in_c; depthwise: k_h k_w; FC: in
        return out_size * per_output, "MACs"
    return out_size, "outputs"


def reference_output(layer: QuantLayer, inputs: list[np.ndarray]) -> np.ndarray:
    batch = [x[None] for x in inputs]
    return spec_of(layer.op).reference_s8(batch[0], layer, *batch[1:])[0]


def layer_c(case: BenchCase, layer: QuantLayer, inputs: list[np.ndarray], variant: str) -> tuple[str, str]:
    """C definitions of one case's data and wrappers (through the code generator's helpers), and its
    bench_cases[] entry."""
    n = case.name
    lead = 1 if case.misalign else 0
    spec = spec_of(layer.op)
    fmt = "dense" if spec.weighted else None
    bits = layer.weight_bits if spec.weighted else 8
    parts = [c_array("int8_t", f"{n}_input{i}", x, lead) for i, x in enumerate(inputs)]
    if spec.weighted:
        packed = pack(layer.weights, "dense", bits)
        if lead:  # the weights one byte past a word boundary, under the name the initializer uses
            ctype = "int8_t" if bits == 8 else "uint8_t"
            parts += [c_array(ctype, f"{n}_wbuf", packed.weights, lead),
                      f"#define mcup_param_{n}_weights ({n}_wbuf + {lead})\n"]  # fmt: skip
        else:
            parts.append(c_definitions(n, packed))
        parts += [c_array("int32_t", f"mcup_param_{n}_{f}", getattr(layer, f)) for f in ("bias", "multiplier", "shift")]
    parts.append(f"static const {spec.struct(fmt, bits)} {n}_params = {params_initializer(layer, fmt)};\n")
    input_args = ", ".join(f"{n}_input{i} + {lead}" for i in range(len(inputs)))
    wrappers, entry = case_c(n, spec.function(fmt, bits), f"{n}_params", input_args, int(np.prod(layer.out_shape)),
                             scratch_bytes(layer, fmt, variant), lead, scratch=spec.weighted)  # fmt: skip
    return "\n".join([*parts, wrappers]), entry


def build_target(name: str, build_dir: Path, layers: list[tuple[BenchCase, QuantLayer, list[np.ndarray]]]) -> Path:
    variant = TARGETS[name].variant
    defs, entries = zip(*(layer_c(case, layer, xs, variant) for case, layer, xs in layers), strict=True)
    scratch = max(scratch_bytes(la, "dense" if la.has_weights else None, variant) for _, la, _ in layers)
    max_out = max(int(np.prod(la.out_shape)) for _, la, _ in layers)  # bench.c adds 1 for out_lead
    data = bench_data(f"bench/kernels/run.py for {name}", defs, entries)
    kernels = {(la.op, "dense", la.weight_bits) if la.has_weights else (la.op, None) for _, la, _ in layers}
    return build(build_dir / name, TARGETS[name], data, kernels, max_out, scratch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench_kernels")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--quick", action="store_true", help="the small misaligned cases only (the tests' check)")
    parser.add_argument("--only", metavar="REGEX", help="the cases whose name matches REGEX")
    args = parser.parse_args()

    cases = [c for c in CASES if (c.quick or not args.quick) and (args.only is None or re.search(args.only, c.name))]
    layers = [(case, *make_layer(case)) for case in cases]
    expected = {case.name: fnv1a(reference_output(layer, xs)) for case, layer, xs in layers}
    runs = run_all({t: (build_target(t, args.build_dir, layers), TARGETS[t].machine) for t in TARGETS})
    ok = True
    for target, run in runs.items():
        error = run.calibration_error()
        if error is not None:
            print(f"{target}: {error}")
            ok = False
        for name, (instructions, checksum) in run.cases.items():
            if checksum != expected[name] or instructions == 0:
                print(f"MISMATCH {name} {target}: checksum 0x{checksum:08x}, numpy 0x{expected[name]:08x}, "
                      f"{instructions} instructions")  # fmt: skip
                ok = False
        if set(run.cases) != set(expected):
            print(f"{target}: cases {sorted(run.cases)}, expected {sorted(expected)}")
            return 1

    header = ["kernel", "work", "m3-ref instr", "m4-ref instr", "per unit", "m4-dsp instr", "per unit", "speed-up",
              "checksum (all = numpy)"]  # fmt: skip
    rows = []
    for case, layer, _ in layers:
        units, unit = work(layer)
        m3 = runs["m3-reference"].cases[case.name][0]
        ref, checksum = runs["m4-reference"].cases[case.name]
        dsp = runs["m4-dsp"].cases[case.name][0]
        rows.append([case.name, f"{units} {unit}", f"{m3}", f"{ref}", f"{ref / units:.2f}", f"{dsp}",
                     f"{dsp / units:.2f}", f"{ref / dsp:.2f}x", f"0x{checksum:08x}"])  # fmt: skip
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
