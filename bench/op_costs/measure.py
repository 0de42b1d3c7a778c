#!/usr/bin/env python3
"""Measure the instructions of the operators without weight formats, layer by layer, in QEMU.

For each case (an op at one size and geometry: maxpool2d, avgpool2d, mean, add, pad, reshape,
softmax, depthwise_conv2d) builds a small float IR model with the op reading the model input (ADD:
the input and a 1x1 depthwise conv of it, two branches of one shape), then a tail (_with_tail: a
MEAN when the output would not fit one RESULT message, and a 1x1 depthwise conv). The model is
quantized with seeded uniform calibration inputs, written as an imported run, compiled for each
target (`compile_run`) and evaluated in QEMU on seeded int8 inputs over semihosting
(`evaluate_firmware`; the device must equal the int8 reference on every input). Each layer's count
is SysTick under `-icount shift=0`, averaged over the inputs (one tick is 40 instructions). Every
layer of a costed op in the model becomes a point (the case's op, and the depthwise convs and MEANs
around it), with its geometry (from which bench/op_costs/fit.py computes the terms of
mcuprune.model.op_costs.op_cost_features) and the measured count.

    .venv/bin/python bench/op_costs/measure.py [--ops maxpool2d add ...] [--samples 6]
        [--out bench/op_costs/results/points.json]

bench/op_costs/fit.py fits the points into mcuprune/model/op_costs.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mcuprune.device.evaluate import evaluate_firmware  # noqa: E402
from mcuprune.model.ir import (  # noqa: E402
    INPUT,
    RELU,
    UNBOUNDED,
    FloatLayer,
    FloatModel,
    Op,
    QuantLayer,
    conv_out_hw,
    same_padding,
    shape_product,
    verify,
)
from mcuprune.model.op_costs import COSTED_OPS  # noqa: E402
from mcuprune.quantize import quantize_model  # noqa: E402
from mcuprune.target.board import load_board  # noqa: E402
from mcuprune.target.compile import compile_run  # noqa: E402
from mcuprune.train.runs import write_imported_run  # noqa: E402

# (board, kernel variant): the DSP kernels on the M4, the reference kernels on the M3 and on the M4
TARGETS = (("mps2-an386", "dsp"), ("mps2-an385", "reference"), ("mps2-an386", "reference"))
RESULT_BYTES = 1024  # an output larger than this gets a MEAN sink (a RESULT message holds 2048 B)
CALIBRATION_SAMPLES = 64


@dataclass(frozen=True)
class Case:
    name: str
    op: Op
    model: FloatModel
    input_range: float = 1.0  # calibration inputs uniform in [-input_range, input_range]


def _rng(name: str) -> np.random.Generator:
    """A generator seeded by the case name, so that one case's weights do not depend on the others."""
    return np.random.default_rng(sum(name.encode()) * 7919 + len(name))


def _with_tail(name: str, op: Op, input_shape: tuple[int, ...], layers: list[FloatLayer],
               input_range: float = 1.0, mean: bool = False) -> Case:
    """The case's model: `layers`, then a tail: a MEAN over H and W when the output is too big to
    return (a RESHAPE to (1, 1, n) for a vector), and a 1x1 depthwise conv. The generated model.c
    does not compile without a layer that takes the scratch buffer (only weighted kernels do: an
    unused mcup_scratch fails -Werror), so every model ends in one; nor without a tensor in the
    arena (`mean`: a MEAN even for a small output, when the case's output aliases the input)."""
    last = layers[-1]
    if len(last.out_shape) == 1:
        n = int(last.out_shape[0])
        layers = [*layers, FloatLayer("tail_reshape", Op.RESHAPE, (n,), (1, 1, n), inputs=(last.name,))]
    elif mean or shape_product(last.out_shape) > RESULT_BYTES:
        c = int(last.out_shape[-1])
        layers = [*layers, FloatLayer("tail_mean", Op.MEAN, tuple(last.out_shape), (1, 1, c), inputs=(last.name,))]
    last = layers[-1]
    tail = _depthwise_layer(f"{name}/tail", tuple(last.out_shape), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1,
                            (last.name,))
    layers = [*layers, replace(tail, name="tail")]
    model = FloatModel(name, input_shape, int(shape_product(layers[-1].out_shape)), tuple(layers))
    verify(model)
    return Case(name, op, model, input_range)


def _padding(h: int, w: int, k: tuple[int, int], stride: tuple[int, int], pad: str | tuple,
             dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    if pad == "same":
        return same_padding(h, w, *k, stride, dilation)
    return (0, 0, 0, 0) if pad == "valid" else tuple(pad)


def pool_case(op: Op, hwc: tuple[int, int, int], k: int | tuple[int, int], s: int | tuple[int, int],
              pad: str | tuple = "valid", relu: bool = False) -> Case:
    h, w, c = hwc
    k = (k, k) if isinstance(k, int) else k
    s = (s, s) if isinstance(s, int) else s
    padding = _padding(h, w, k, s, pad)
    oh, ow = conv_out_hw(h, w, *k, s, padding)
    name = f"{op.value}_{h}x{w}x{c}_k{k[0]}x{k[1]}_s{s[0]}x{s[1]}_p{''.join(map(str, padding))}" + ("_relu" * relu)
    layer = FloatLayer("op", op, hwc, (oh, ow, c), inputs=(INPUT,), window=k, stride=s, padding=padding,
                       clamp=RELU if relu else UNBOUNDED)
    return _with_tail(name, op, hwc, [layer])


def mean_case(hwc: tuple[int, int, int]) -> Case:
    h, w, c = hwc
    return _with_tail(f"mean_{h}x{w}x{c}", Op.MEAN, hwc, [FloatLayer("op", Op.MEAN, hwc, (c,), inputs=(INPUT,))])


def _depthwise_layer(name: str, hwc: tuple[int, int, int], k: tuple[int, int], s: tuple[int, int],
                     padding: tuple[int, int, int, int], dilation: tuple[int, int], multiplier: int,
                     inputs: tuple[str, ...]) -> FloatLayer:
    h, w, c = hwc
    rng = _rng(name)
    out_c = c * multiplier
    weights = (rng.normal(size=(out_c, *k, 1)) / np.sqrt(k[0] * k[1])).astype(np.float32)  # [out_c, k_h, k_w, 1]
    bias = rng.normal(scale=0.1, size=out_c).astype(np.float32)
    oh, ow = conv_out_hw(h, w, *k, s, padding, dilation)
    return FloatLayer(name, Op.DEPTHWISE_CONV2D, hwc, (oh, ow, out_c), weights=weights, bias=bias, inputs=inputs,
                      stride=s, padding=padding, dilation=dilation, depth_multiplier=multiplier)


def add_case(hwc: tuple[int, int, int]) -> Case:
    """ADD of the input and a 1x1 depthwise conv of it (its own quantization, as a residual add has)."""
    h, w, c = hwc
    name = f"add_{h}x{w}x{c}"
    branch = _depthwise_layer("branch", hwc, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (INPUT,))
    add = FloatLayer("op", Op.ADD, hwc, hwc, inputs=(INPUT, "branch"))
    return _with_tail(name, Op.ADD, hwc, [branch, add])


def pad_case(hwc: tuple[int, int, int], padding: tuple[int, int, int, int]) -> Case:
    h, w, c = hwc
    top, bottom, left, right = padding
    out = (h + top + bottom, w + left + right, c)
    layer = FloatLayer("op", Op.PAD, hwc, out, inputs=(INPUT,), padding=padding)
    return _with_tail(f"pad_{h}x{w}x{c}_p{top}{bottom}{left}{right}", Op.PAD, hwc, [layer])


def reshape_case(hwc: tuple[int, int, int]) -> Case:
    """RESHAPE (H, W, C) -> (W, H, C) (no kernel: its output is its input's bytes)."""
    h, w, c = hwc
    layer = FloatLayer("op", Op.RESHAPE, hwc, (w, h, c), inputs=(INPUT,))
    return _with_tail(f"reshape_{h}x{w}x{c}", Op.RESHAPE, hwc, [layer], mean=True)


def softmax_case(shape: tuple[int, ...], input_range: float) -> Case:
    name = f"softmax_{'x'.join(map(str, shape))}_r{input_range:g}"
    return _with_tail(name, Op.SOFTMAX, shape, [FloatLayer("op", Op.SOFTMAX, shape, shape, inputs=(INPUT,))],
                      input_range)


def depthwise_case(hwc: tuple[int, int, int], k: int | tuple[int, int], s: int, pad: str | tuple = "same",
                   dilation: int = 1, multiplier: int = 1) -> Case:
    h, w, c = hwc
    k = (k, k) if isinstance(k, int) else k
    padding = _padding(h, w, k, (s, s), pad, (dilation, dilation))
    name = (f"depthwise_{h}x{w}x{c}_k{k[0]}x{k[1]}_s{s}_p{''.join(map(str, padding))}_d{dilation}"
            f"_m{multiplier}")  # fmt: skip
    layer = _depthwise_layer("op", hwc, k, (s, s), padding, (dilation, dilation), multiplier, (INPUT,))
    return _with_tail(name, Op.DEPTHWISE_CONV2D, hwc, [layer])


def cases() -> list[Case]:
    """Every case: sizes and geometries chosen to exercise each loop and path of the kernels (the
    DSP maxpool's tiling, 2x2 and general paths and its clamp pass; the DSP depthwise's 3x3 interior
    path, clipped windows and c % 4 tail channels) at several sizes."""
    mp, ap = Op.MAXPOOL2D, Op.AVGPOOL2D
    out = [
        # maxpool: 2x2 windows tiling the image (the DSP fast path), with and without c % 4 channels
        *(pool_case(mp, hwc, 2, 2) for hwc in ((16, 16, 8), (32, 32, 4), (8, 8, 16), (10, 10, 3), (12, 12, 6),
                                                (28, 28, 16), (6, 6, 32), (14, 14, 13), (11, 11, 8), (20, 20, 20),
                                                (16, 16, 1))),  # fmt: skip
        # other tiling windows, then windows that overlap or are clipped by padding (general path)
        pool_case(mp, (12, 12, 8), 3, 3), pool_case(mp, (9, 9, 5), 3, 3), pool_case(mp, (16, 16, 4), 4, 4),
        pool_case(mp, (15, 15, 8), 3, 2), pool_case(mp, (16, 16, 12), 3, 2, "same"),
        pool_case(mp, (14, 14, 7), 3, 1, "same"), pool_case(mp, (8, 8, 16), 3, 1), pool_case(mp, (12, 12, 8), 2, 1),
        pool_case(mp, (9, 9, 8), 2, 2, "same"), pool_case(mp, (10, 10, 5), 2, 1),
        pool_case(mp, (12, 12, 8), 5, 1, "same"),
        pool_case(mp, (10, 12, 6), (3, 2), (1, 2)), pool_case(mp, (24, 24, 12), 3, 2, "same"),
        pool_case(mp, (7, 7, 64), 3, 2), pool_case(mp, (13, 13, 3), 3, 2, "same"),
        # a fused ReLU the int8 range does not already hold: the DSP kernel's clamp pass
        pool_case(mp, (16, 16, 8), 2, 2, relu=True), pool_case(mp, (12, 12, 6), 3, 2, "same", relu=True),
        pool_case(mp, (10, 10, 3), 2, 2, relu=True), pool_case(mp, (8, 8, 21), 3, 1, "same", relu=True),
        pool_case(mp, (12, 12, 16), 2, 2, relu=True), pool_case(mp, (9, 9, 4), 3, 3, relu=True),
        # more of the shapes that alone take a path: no whole word (c < 4), overlapping 2x2 windows
        pool_case(mp, (8, 8, 2), 2, 2), pool_case(mp, (20, 20, 3), 2, 2), pool_case(mp, (8, 8, 16), 2, 1),
        pool_case(mp, (6, 6, 3), 2, 1), pool_case(mp, (16, 16, 4), 2, 1), pool_case(mp, (7, 7, 6), 2, 2, "same"),
        # avgpool (one kernel for both variants)
        pool_case(ap, (16, 16, 8), 2, 2), pool_case(ap, (32, 32, 4), 2, 2), pool_case(ap, (10, 10, 3), 2, 2),
        pool_case(ap, (12, 12, 8), 3, 3), pool_case(ap, (15, 15, 8), 3, 2), pool_case(ap, (16, 16, 12), 3, 2, "same"),
        pool_case(ap, (14, 14, 7), 3, 1, "same"), pool_case(ap, (8, 8, 32), 2, 1), pool_case(ap, (5, 5, 64), 5, 5),
        pool_case(ap, (12, 12, 8), 5, 1, "same"), pool_case(ap, (10, 12, 6), (3, 2), (1, 2)),
        pool_case(ap, (24, 24, 12), 3, 2, "same"), pool_case(ap, (6, 6, 20), 6, 6), pool_case(ap, (8, 8, 16), 4, 4),
        # mean over H and W, channels across the 16-channel blocks
        *(mean_case(hwc) for hwc in ((8, 8, 16), (4, 4, 64), (16, 16, 8), (7, 7, 32), (5, 5, 100), (1, 1, 256),
                                     (12, 12, 17), (3, 3, 33), (10, 10, 40), (2, 2, 128), (6, 6, 15), (20, 20, 3),
                                     (32, 32, 1))),  # fmt: skip
        # add: element count is all the kernel sees
        *(add_case(hwc) for hwc in ((8, 8, 16), (16, 16, 16), (4, 4, 32), (7, 7, 3), (32, 32, 8), (1, 1, 10),
                                    (12, 12, 24), (5, 5, 5), (16, 16, 64), (2, 2, 100), (25, 5, 64))),  # fmt: skip
        # pad: rows, bytes copied and filled
        pad_case((8, 8, 16), (1, 1, 1, 1)), pad_case((16, 16, 8), (0, 1, 0, 1)), pad_case((10, 10, 3), (2, 2, 2, 2)),
        pad_case((12, 12, 1), (1, 2, 3, 0)), pad_case((6, 6, 32), (0, 0, 1, 1)), pad_case((20, 20, 4), (3, 3, 0, 0)),
        pad_case((32, 32, 3), (1, 1, 1, 1)), pad_case((5, 5, 64), (1, 1, 1, 1)), pad_case((14, 14, 16), (0, 1, 0, 1)),
        pad_case((9, 7, 5), (2, 1, 1, 2)), pad_case((28, 28, 1), (2, 2, 2, 2)), pad_case((3, 3, 100), (1, 1, 1, 1)),
        pad_case((16, 16, 3), (1, 1, 1, 1)), pad_case((7, 7, 8), (2, 2, 2, 2)), pad_case((4, 4, 2), (0, 1, 0, 1)),
        pad_case((24, 24, 16), (1, 1, 1, 1)), pad_case((10, 10, 32), (0, 0, 1, 1)), pad_case((15, 15, 6), (1, 0, 1, 0)),
        pad_case((11, 13, 7), (3, 1, 1, 3)), pad_case((2, 40, 4), (0, 0, 2, 2)), pad_case((40, 2, 4), (1, 1, 0, 0)),
        pad_case((8, 8, 64), (0, 1, 0, 1)), pad_case((6, 6, 12), (2, 0, 2, 0)), pad_case((12, 12, 2), (1, 1, 1, 1)),
        pad_case((18, 18, 9), (0, 1, 1, 0)), pad_case((1, 64, 8), (0, 0, 3, 3)),
        # reshape: no kernel
        *(reshape_case(hwc) for hwc in ((8, 8, 16), (4, 16, 8), (32, 32, 3), (2, 6, 40))),
        # softmax: rows x depth, logits spanning 4, 8 and 16 (float units)
        *(softmax_case(shape, r) for shape, r in (((10,), 2), ((2,), 4), ((100,), 8), ((500,), 2), ((1000,), 4),
                                                   ((4, 4, 10), 8), ((1, 1, 12), 2), ((8, 8, 4), 4), ((2, 2, 50), 8),
                                                   ((16, 16, 3), 2), ((5, 5, 16), 4), ((3, 7, 20), 8),
                                                   ((10,), 8), ((100,), 2), ((12,), 4))),  # fmt: skip
        # depthwise, multiplier 1: 3x3 (interior path at stride 1 and 2, SAME and VALID), 5x5, 1x1,
        # dilation, non-square and 7x7 windows, channel counts with and without c % 4 tails
        *(depthwise_case(hwc, 3, 1) for hwc in ((16, 16, 8), (8, 8, 16), (12, 12, 12), (10, 10, 6), (20, 20, 4),
                                                (6, 6, 32), (5, 5, 64), (14, 14, 3), (9, 9, 7), (25, 5, 64))),
        depthwise_case((10, 10, 8), 3, 1, "valid"), depthwise_case((7, 7, 20), 3, 1, "valid"),
        depthwise_case((16, 16, 16), 3, 2), depthwise_case((15, 15, 8), 3, 2), depthwise_case((12, 12, 5), 3, 2),
        depthwise_case((11, 11, 12), 3, 2, "valid"), depthwise_case((48, 48, 8), 3, 2),
        depthwise_case((10, 10, 8), 5, 1), depthwise_case((8, 8, 6), 5, 1), depthwise_case((12, 12, 16), 5, 2),
        depthwise_case((8, 8, 16), 1, 1), depthwise_case((6, 6, 7), 1, 1),
        depthwise_case((12, 12, 8), 3, 1, dilation=2),
        depthwise_case((10, 10, 8), (3, 1), 1), depthwise_case((8, 8, 4), 7, 1),
        # depth multiplier 2: every channel on the one-at-a-time loop of the DSP kernel
        depthwise_case((8, 8, 8), 3, 1, multiplier=2), depthwise_case((10, 10, 3), 3, 2, multiplier=2),
    ]
    names = [c.name for c in out]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate cases: {sorted(duplicates)}")
    return out


def geometry(layer: QuantLayer) -> dict:
    """What a point keeps of its layer: enough to rebuild its features (tests/test_op_costs.py does)."""
    doc = {"op": layer.op.value, "in_shape": list(layer.in_shape), "out_shape": list(layer.out_shape),
           "stride": list(layer.stride), "padding": list(layer.padding), "dilation": list(layer.dilation),
           "window": list(layer.window), "depth_multiplier": layer.depth_multiplier, "act_min": layer.act_min,
           "act_max": layer.act_max}  # fmt: skip
    if layer.weights is not None:
        doc["weights_shape"] = list(layer.weights.shape)
        # the DSP depthwise's lean loop copy runs when every channel shifts right and act_max is 127
        doc["right_only"] = bool(layer.act_max == 127 and (layer.shift <= 0).all()
                                 and (layer.multiplier != np.iinfo(np.int32).min).all())  # fmt: skip
    return doc


def measure_case(case: Case, work: Path, samples: int) -> list[dict]:
    """Every costed layer of the case's model on every target: one point each."""
    rng = _rng(case.name)
    x = rng.uniform(-case.input_range, case.input_range,
                    (CALIBRATION_SAMPLES, *case.model.input_shape)).astype(np.float32)
    quant = quantize_model(case.model, x, {"source": "bench/op_costs/measure.py"})
    run_dir = work / "runs" / case.name
    write_imported_run(run_dir, quant, {"source": "bench/op_costs/measure.py"})
    points = []
    for board_name, variant in TARGETS:
        fw_dir = work / "fw" / f"{board_name}-{variant}" / case.name
        compile_run(run_dir, board_name, fw_dir, kernels_choice=variant)
        ev = evaluate_firmware(fw_dir, limit=samples, progress=False, transport="semihosting")
        if ev.mismatches:
            raise RuntimeError(f"{case.name} on {board_name}/{variant}: {ev.mismatches} outputs differ from the "
                               "int8 reference")
        core = load_board(board_name).core
        for layer in quant.layers:
            if layer.op not in COSTED_OPS:
                continue
            points.append({"case": case.name, "layer": layer.name, "role": "case" if layer.name == "op" else "extra",
                           "op": layer.op.value, "variant": variant, "board": board_name, "core": core,
                           "geometry": geometry(layer), "instructions": round(ev.layer_instructions[layer.name], 1),
                           "samples": ev.samples})  # fmt: skip
    return points


def toolchain() -> list[str]:
    out = []
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        try:
            out.append(subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.splitlines()[0])
        except (OSError, IndexError):
            out.append(f"{tool}: not found")
    return out


def write_points(path: Path, doc: dict) -> None:
    """The points file: one point per line (diffs stay readable)."""
    head = {k: v for k, v in doc.items() if k != "points"}
    lines = [json.dumps(head, indent=1)[:-2] + ',\n "points": [']
    lines.append(",\n".join(json.dumps(p) for p in doc["points"]))
    lines.append("]}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", choices=[op.value for op in COSTED_OPS], help="only these ops' cases")
    parser.add_argument("--samples", type=int, default=6, help="inputs per case (the counts are averaged)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "op_costs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "op_costs" / "results" / "points.json")
    args = parser.parse_args()
    chosen = [c for c in cases() if args.ops is None or c.op.value in args.ops]
    points = []
    if args.ops is not None and args.out.is_file():  # re-measure some ops: keep the other cases' points
        names = {c.name for c in chosen}
        points = [p for p in json.loads(args.out.read_text())["points"] if p["case"] not in names]
    t0 = time.time()
    for i, case in enumerate(chosen, 1):
        case_points = measure_case(case, args.work, args.samples)
        points += case_points
        counts = "  ".join(f"{p['variant']}/{p['core']}: {p['instructions']:,.0f}" for p in case_points
                           if p["role"] == "case")  # fmt: skip
        print(f"[{i}/{len(chosen)} {time.time() - t0:5.0f} s] {case.name:44} {counts}", flush=True)
    doc = {"note": "Per-layer instruction counts (SysTick under qemu-system-arm -icount shift=0, averaged over "
                   "seeded int8 inputs; one tick = 40 instructions) of the ops mcuprune.model.op_costs predicts, "
                   "made by bench/op_costs/measure.py.",
           "generated": datetime.date.today().isoformat(), "toolchain": toolchain(),
           "targets": [list(t) for t in TARGETS], "points": points}  # fmt: skip
    write_points(args.out, doc)
    print(f"{len(points)} points from {len(chosen)} cases -> {args.out}")


if __name__ == "__main__":
    main()
