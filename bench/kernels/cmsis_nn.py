#!/usr/bin/env python3
"""mcuprune's int8 and int4 kernels against CMSIS-NN's on the demo layers: instructions in QEMU (M4, DSP).

CMSIS-NN (https://github.com/ARM-software/CMSIS-NN) is the library TFLite Micro calls on Cortex-M;
``arm_fully_connected_s4`` and ``arm_convolve_wrapper_s4`` are its int4-weight kernels, next to
``arm_fully_connected_s8`` and ``arm_convolve_wrapper_s8``. This script builds one ELF for
mps2-an386 (Cortex-M4, the DSP kernels) with both libraries and the same layers as
bench/kernels/run.py (fc_1568x64 and conv_14x14x16_32_k3p1, seeds 1 and 2, and their int4 twins),
runs it under ``qemu-system-arm -icount shift=0`` and checks every output against the numpy
reference. CMSIS-NN's fully connected kernels are per-tensor, so the FC layers here use one
multiplier and shift for every channel (both libraries run that same layer); the convolutions are
per channel. CMSIS-NN is compiled with the harness's -O2 and cpu flags, without -Werror.

    .venv/bin/python bench/kernels/cmsis_nn.py --cmsis-nn PATH/TO/CMSIS-NN [--build-dir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench" / "harness"), str(HERE)]

from qemu_bench import CFLAGS, M4, Target, bench_data, build, c_array, fnv1a, run_all  # noqa: E402
from run import CASES, layer_c, make_layer, reference_output, s4  # noqa: E402

from mcuprune.model.formats import pack_nibbles  # noqa: E402
from mcuprune.model.ir import Op, QuantLayer  # noqa: E402
from mcuprune.model.ops import scratch_bytes  # noqa: E402

TARGET = Target("cortex-m4", "dsp", "mps2-an386", M4)
LAYERS = ("fc_1568x64", "conv_14x14x16_32_k3p1")
CMSIS_SCRATCH = 1 << 14  # bytes of scratch the CMSIS-NN cases may take (checked at run time)


def cmsis_library(cmsis: Path, out: Path) -> Path:
    """CMSIS-NN's int8/int4 convolution, fully connected and support functions as an archive."""
    out.mkdir(parents=True, exist_ok=True)
    objects = []
    for folder in ("ConvolutionFunctions", "FullyConnectedFunctions", "NNSupportFunctions"):
        for source in sorted((cmsis / "Source" / folder).glob("*.c")):
            if "_f16" in source.name or "_f32" in source.name:
                continue
            obj = out / f"{source.stem}.o"
            flags = [f for f in CFLAGS if f not in ("-Werror", "-Wall", "-Wextra")]
            subprocess.run(["arm-none-eabi-gcc", *TARGET.cpu_flags, *flags, f"-I{cmsis / 'Include'}", "-c",
                            str(source), "-o", str(obj)], check=True)  # fmt: skip
            objects.append(obj)
    archive = out / "libcmsis-nn.a"
    archive.unlink(missing_ok=True)
    subprocess.run(["arm-none-eabi-ar", "rcs", str(archive), *map(str, objects)], check=True)
    return archive


def per_tensor(layer: QuantLayer) -> QuantLayer:
    """The layer with channel 0's multiplier and shift for every channel (CMSIS-NN's FC is per tensor)."""
    n = layer.out_channels
    return replace(layer, multiplier=np.full(n, layer.multiplier[0], np.int32), shift=np.full(n, layer.shift[0],
                                                                                                np.int32))


def cmsis_case(name: str, layer: QuantLayer, x_name: str) -> tuple[str, str]:
    """C of one CMSIS-NN call on `layer` (its weights as CMSIS-NN takes them: int8, or int4 packed
    two per byte over the whole tensor, TFLite's order) and its bench_cases[] entry."""
    bits = layer.weight_bits
    w = layer.weights.astype(np.int8)
    weights = w.ravel() if bits == 8 else pack_nibbles(w.ravel()).view(np.int8)
    parts = [c_array("int8_t", f"{name}_w", weights), c_array("int32_t", f"{name}_b", layer.bias),
             c_array("int32_t", f"{name}_m", layer.multiplier), c_array("int32_t", f"{name}_s", layer.shift)]
    act = f"{{{layer.act_min}, {layer.act_max}}}"
    in_off, out_off = -layer.input_q.zero_point, layer.output_q.zero_point
    out_size = int(np.prod(layer.out_shape))
    width = f"s{bits}"
    if layer.op is Op.DENSE:
        n_out, n_in = layer.weights.shape  # [out][in]
        body = f"""
    const cmsis_nn_context ctx = {{s, 0}};
    const cmsis_nn_fc_params fc = {{{in_off}, 0, {out_off}, {act}}};
    const cmsis_nn_per_tensor_quant_params q = {{{int(layer.multiplier[0])}, {int(layer.shift[0])}}};
    const cmsis_nn_dims in_d = {{1, 1, 1, {n_in}}}, f_d = {{{n_in}, 1, 1, {n_out}}}, b_d = {{1, 1, 1, {n_out}}};
    const cmsis_nn_dims out_d = {{1, 1, 1, {n_out}}};
    (void)arm_fully_connected_{width}(&ctx, &fc, &q, &in_d, {x_name}, &f_d, {name}_w, &b_d, {name}_b, &out_d,
                                      bench_output);"""
    else:
        out_c, k_h, k_w, in_c = layer.weights.shape
        (h, w_, _), (oh, ow, _) = layer.in_shape, layer.out_shape
        top, _, left, _ = layer.padding
        body = f"""
    const cmsis_nn_conv_params conv = {{{in_off}, {out_off}, {{{layer.stride[1]}, {layer.stride[0]}}},
        {{{left}, {top}}}, {{{layer.dilation[1]}, {layer.dilation[0]}}}, {act}}};
    const cmsis_nn_per_channel_quant_params q = {{(int32_t *){name}_m, (int32_t *){name}_s}};
    const cmsis_nn_dims in_d = {{1, {h}, {w_}, {in_c}}}, f_d = {{{out_c}, {k_h}, {k_w}, {in_c}}};
    const cmsis_nn_dims b_d = {{1, 1, 1, {out_c}}}, out_d = {{1, {oh}, {ow}, {out_c}}};
    const int32_t size = arm_convolve_wrapper_{width}_get_buffer_size(&conv, &in_d, &f_d, &out_d);
    if (size > {CMSIS_SCRATCH}) {{
        bench_write("ERROR CMSIS-NN scratch too small\\n");
        bench_exit(1);
    }}
    const cmsis_nn_context ctx = {{s, size}};
    (void)arm_convolve_wrapper_{width}(&ctx, &conv, &q, &in_d, {x_name}, &f_d, {name}_w, &b_d, {name}_b, &out_d,
                                       bench_output);"""
    parts.append(f"static void {name}_run(void *s)\n{{{body}\n}}\n"
                 f"static int32_t {name}_scratch(void) {{ return 0; }}\n")  # fmt: skip
    return "\n".join(parts), f'{{"{name}", {name}_run, {name}_scratch, 0, 0, {out_size}}}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cmsis-nn", type=Path, required=True, help="a CMSIS-NN source tree (Include/, Source/)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench_cmsis_nn")
    args = parser.parse_args()
    archive = cmsis_library(args.cmsis_nn, args.build_dir / "cmsis-nn")

    cases = [c for c in CASES if c.name in LAYERS]
    cases += [s4(c) for c in cases]
    defs, entries, expected, rows = ['#include "arm_nnfunctions.h"\n'], [], {}, []
    scratch = CMSIS_SCRATCH
    for case in cases:
        layer, xs = make_layer(case)
        if layer.op is Op.DENSE:
            layer = per_tensor(layer)
        text, entry = layer_c(case, layer, xs, TARGET.variant)  # mcuprune's kernel, named case.name
        cmsis_text, cmsis_entry = cmsis_case(f"{case.name}_cmsis", layer, f"{case.name}_input0")
        defs += [text, cmsis_text]
        entries += [entry, cmsis_entry]
        want = fnv1a(reference_output(layer, xs))
        expected[case.name] = expected[f"{case.name}_cmsis"] = want
        scratch = max(scratch, scratch_bytes(layer, "dense", TARGET.variant))
        rows.append((case.name, layer))
    data = bench_data("bench/kernels/cmsis_nn.py", defs, entries)
    kernels = {(layer.op, "dense", layer.weight_bits) for _, layer in rows}
    max_out = max(int(np.prod(layer.out_shape)) for _, layer in rows)
    elf = build(args.build_dir / "m4-dsp", TARGET, data, kernels, max_out, scratch, [archive],
                [args.cmsis_nn / "Include"])
    run = run_all({"m4-dsp": (elf, TARGET.machine)})["m4-dsp"]
    ok = run.calibration_error() is None
    print("| layer | weights | mcuprune instr | CMSIS-NN instr | mcuprune / CMSIS-NN | checksums (= numpy) |")
    print("|---|---|---:|---:|---:|---|")
    for name, layer in rows:
        ours, theirs = run.cases[name], run.cases[f"{name}_cmsis"]
        good = ours[1] == theirs[1] == expected[name]
        ok &= good
        state = "ok" if good else f"MISMATCH 0x{ours[1]:08x} 0x{theirs[1]:08x}, numpy 0x{expected[name]:08x}"
        print(f"| {name.removesuffix('_s4')} | int{layer.weight_bits} | {ours[0]} | {theirs[0]} | "
              f"{ours[0] / theirs[0]:.2f} | {state} |")
    print("all checksums match the numpy reference" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
