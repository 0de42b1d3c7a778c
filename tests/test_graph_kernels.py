"""Host tests of the C kernels of the graph ops: depthwise conv, max/average pooling, mean, add, pad
and softmax, every variant against the numpy reference, bit for bit.

As in test_kernels.py: the kernels are compiled for the host into a shared library (the DSP variant
with -DMCUP_EMULATE_DSP) and called through ctypes (kernel_cases.KernelLib, parameter structs
generated from the operator table and checked against the header), with canaries around every
output and past every scratch buffer; the oracle is mcuprune.model.reference on the layers of the
shared case table (kernel_cases.py), built through the quantization functions of int8_params.

A second build runs every kernel of the repository (these, the dense and sparse conv/FC) under
AddressSanitizer and UndefinedBehaviorSanitizer on exactly-sized heap buffers, with the parameter
structs written by the code generator's own helpers (emit.params_initializer, c_definitions), so
a field the table emits and the header lacks fails to compile.
"""

from __future__ import annotations

import ctypes
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from host_c import VARIANT_DEFINES, host_build, kernel_library
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import (
    ADD_CASES,
    GEOMETRIES,
    MEAN_CASES,
    PAD_CASES,
    POOL_CASES,
    SOFTMAX_CASES,
    AddCase,
    Case,
    Geometry,
    KernelLib,
    MeanCase,
    PoolCase,
    SoftmaxCase,
    geometry_cases,
    layout_expected,
    layout_source,
    make_add_layer,
    make_layer,
    make_mean_layer,
    make_pad_layer,
    make_pool_layer,
    make_softmax_layer,
    params_struct,
    random_cases,
    struct_of,
)

from mcuprune.codegen.emit import c_definitions, params_initializer
from mcuprune.model.formats import SPARSE_FORMATS, pack
from mcuprune.model.int8_params import softmax_diff_min
from mcuprune.model.ir import Op, QuantLayer
from mcuprune.model.ops import OPS, VARIANTS, kernel_sources, scratch_bytes, spec_of
from mcuprune.model.reference import (
    add_s8,
    avgpool2d_s8,
    depthwise_conv2d_s8,
    maxpool2d_s8,
    mean_s8,
    pad_s8,
    softmax_s8,
)
from mcuprune.resources import INCLUDE_DIR

GRAPH_KERNELS = [(Op.DEPTHWISE_CONV2D, "dense"), (Op.MAXPOOL2D, None), (Op.AVGPOOL2D, None), (Op.MEAN, None),
                 (Op.ADD, None), (Op.PAD, None), (Op.SOFTMAX, None)]  # fmt: skip


def _dw(name: str, in_shape: tuple[int, int, int], **kw) -> Case:
    return Case(name, Op.DEPTHWISE_CONV2D, in_shape, 0, **kw)


DW_CASES = [
    *geometry_cases(Op.DEPTHWISE_CONV2D),
    *(
        replace(c, name=c.name + "_m2", depth_multiplier=2, seed=c.seed + 50)
        for c in geometry_cases(Op.DEPTHWISE_CONV2D)[::2]
    ),
    *(
        replace(c, name=c.name + "_c9", in_shape=(*c.in_shape[:2], 9), misalign=i % 3 == 0)
        for i, c in enumerate(geometry_cases(Op.DEPTHWISE_CONV2D))
    ),  # groups of 4 and a tail
    # the DSP kernel's paths: whole groups of 4 (3-wide rows unrolled or not), channel tails,
    # depth multipliers, every requantization variant, windows wholly in the padding
    _dw("dw_c64_same", (6, 5, 64), pad=1, in_zp=-128, out_zp=-128, relu=True, seed=1),
    _dw("dw_c8_s2_same", (9, 9, 8), stride=2, pad=(0, 1, 0, 1), in_zp=-3, seed=2),
    _dw("dw_c13_tail", (5, 6, 13), pad=1, in_zp=7, out_zp=-9, seed=3),
    _dw("dw_c4_misaligned", (5, 5, 4), pad=1, in_zp=-128, misalign=True, seed=4),
    _dw("dw_c12_left_shift", (4, 5, 12), pad=1, x_max=4, w_max=2, seed=5),
    _dw("dw_c8_saturate", (5, 4, 8), pad=1, in_zp=2, rescale=20.0, seed=6),
    _dw("dw_c8_null_bias", (4, 4, 8), pad=1, in_zp=-1, null_bias=True, seed=7),
    _dw("dw_c16_act_max", (5, 5, 16), pad=1, in_zp=-128, out_zp=-20, act_min=-20, act_max=30, seed=8),
    _dw("dw_c5_m3", (5, 5, 5), pad=1, depth_multiplier=3, in_zp=11, seed=9),
    _dw("dw_c4_m2_misaligned", (6, 6, 4), stride=2, pad=(0, 1, 0, 1), depth_multiplier=2, misalign=True, seed=10),
    _dw("dw_windows_in_padding", (2, 2, 8), pad=(3, 0, 3, 0), in_zp=5, seed=11),
    _dw("dw_k5_c8", (7, 7, 8), k=5, pad=2, in_zp=-128, seed=12),
    _dw("dw_k3x1_c8", (6, 5, 8), k=3, k_w=1, pad=(1, 1, 0, 0), in_zp=3, seed=13),
    _dw("dw_wide_c4", (3, 40, 4), pad=1, in_zp=-7, seed=14),
    _dw("dw_25x5x64_shape", (25, 5, 64), pad=1, in_zp=-128, out_zp=-128, relu=True, seed=15),
]


@pytest.fixture(scope="module", params=VARIANTS)
def graph_kernels(request, tmp_path_factory) -> KernelLib:
    variant = request.param
    build = tmp_path_factory.mktemp(f"graph_{variant}")
    layout = build / "layout.c"
    layout.write_text(layout_source(_layout_structs(), "mcup_graph_layout"))
    return KernelLib(variant, kernel_library(build / f"libmcup_graph_{variant}.so", variant, GRAPH_KERNELS, [layout]))


def _layout_structs() -> list[type[ctypes.Structure]]:
    layers = [make_layer(DW_CASES[0])[0], make_pool_layer(POOL_CASES[0])[0], make_mean_layer(MEAN_CASES[0])[0],
              make_add_layer(ADD_CASES[0])[0], make_pad_layer(PAD_CASES[0])[0],
              make_softmax_layer(SOFTMAX_CASES[0])[0]]  # fmt: skip
    return [struct_of(layer, "dense") for layer in layers]


def test_ctypes_mirrors_match_header(graph_kernels: KernelLib):
    """The structs ops.py's fields describe (in C order) are the ones mcup_nn.h declares."""
    expected = layout_expected(_layout_structs())
    layout = (ctypes.c_int32 * len(expected)).in_dll(graph_kernels.lib, "mcup_graph_layout")
    assert list(layout) == expected


# --- depthwise convolution ------------------------------------------------------------------------


@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: c.name)
def test_depthwise_matches_reference(graph_kernels: KernelLib, case: Case):
    layer, x = make_layer(case)
    got = graph_kernels.run(layer, [x], null_bias=case.null_bias, lead=int(case.misalign))
    np.testing.assert_array_equal(got, depthwise_conv2d_s8(x[None], layer)[0])
    assert scratch_bytes(layer, "dense", graph_kernels.variant) == graph_kernels.buffer_size(layer)


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(case=random_cases(Op.DEPTHWISE_CONV2D, max_features=1, max_hw=7, max_in_c=10))
def test_depthwise_random_shapes(graph_kernels: KernelLib, case: Case):
    layer, x = make_layer(case)
    got = graph_kernels.run(layer, [x], null_bias=case.null_bias)
    np.testing.assert_array_equal(got, depthwise_conv2d_s8(x[None], layer)[0])
    assert scratch_bytes(layer, "dense", graph_kernels.variant) == graph_kernels.buffer_size(layer)


def test_depthwise_cases_exercise_their_paths():
    """Whole groups of 4 channels and tails, 3-wide rows inside the image and not, depth
    multipliers 1..3, left shifts, clamps that bite, misaligned buffers, the new geometry."""
    layers = [(c, make_layer(c)[0]) for c in DW_CASES]
    assert {la.depth_multiplier for _, la in layers} == {1, 2, 3}
    assert any(la.out_channels % 4 and la.out_channels > 4 and la.depth_multiplier == 1 for _, la in layers)
    assert any(la.weights.shape[2] == 3 for _, la in layers) and any(la.weights.shape[2] != 3 for _, la in layers)
    assert any(la.shift.max() > 0 for _, la in layers)
    assert any(la.act_max < 127 for _, la in layers) and any(la.act_min > -128 for _, la in layers)
    assert any(c.misalign and la.depth_multiplier == 1 and la.out_channels >= 4 for c, la in layers)
    assert {la.stride for _, la in layers} >= {(1, 1), (2, 2), (1, 2), (2, 1)}
    assert any(la.dilation != (1, 1) for _, la in layers)


# --- pooling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_pool_matches_reference(graph_kernels: KernelLib, case: PoolCase):
    layer, x = make_pool_layer(case)
    reference = maxpool2d_s8 if case.op is Op.MAXPOOL2D else avgpool2d_s8
    got = graph_kernels.run(layer, [x], lead=int(case.misalign))
    np.testing.assert_array_equal(got, reference(x[None], layer)[0])


@st.composite
def pool_cases(draw) -> PoolCase:
    """Any window, stride and padding whose windows all touch the image, any clamp."""
    h, w, c = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 11))
    k_h, k_w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, k_h - 1)), draw(st.integers(0, k_h - 1)), draw(st.integers(0, k_w - 1)),
               draw(st.integers(0, k_w - 1)))  # fmt: skip
    geometry = Geometry("random", (h, w, c), (k_h, k_w), stride, padding)
    if h + padding[0] + padding[1] < k_h or w + padding[2] + padding[3] < k_w or not geometry.pool_ok:
        geometry = Geometry("random", (h, w, c), (1, 1), stride)
    act_min, act_max = sorted((draw(st.integers(-128, 127)), draw(st.sampled_from([127, 127, 40, -128]))))
    op = draw(st.sampled_from([Op.MAXPOOL2D, Op.AVGPOOL2D]))
    return PoolCase("random", op, geometry, zp=draw(st.integers(-128, 127)), act_min=act_min, act_max=act_max,
                    misalign=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))  # fmt: skip


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(case=pool_cases())
def test_pool_random_shapes(graph_kernels: KernelLib, case: PoolCase):
    test_pool_matches_reference(graph_kernels, case)


@pytest.mark.parametrize("op", [Op.MAXPOOL2D, Op.AVGPOOL2D])
@pytest.mark.parametrize("window", [2, 3])
def test_pool_extreme_values(graph_kernels: KernelLib, op: Op, window: int):
    """Byte-wise differences up to 127 - (-128) = 255 (max: the signed compare must not wrap) and
    sums of -128s and 127s (average: ties and the rounding of negative sums)."""
    values = np.array([-128, -127, -1, 0, 1, 126, 127], dtype=np.int8)
    case = PoolCase("extreme", op, Geometry("extreme", (6, 6, 9), (window, window), (window, window)))
    layer, _ = make_pool_layer(case)
    x = np.random.default_rng(window).choice(values, size=(6, 6, 9)).astype(np.int8)
    reference = maxpool2d_s8 if op is Op.MAXPOOL2D else avgpool2d_s8
    np.testing.assert_array_equal(graph_kernels.run(layer, [x]), reference(x[None], layer)[0])


def test_pool_cases_exercise_their_paths():
    """Windows that tile the image (the DSP max-pool's fast path, 2x2 and not) and windows that do
    not; clamps that bite; c % 4 = 0..3; misaligned buffers; padded windows."""
    layers = [(c, make_pool_layer(c)[0]) for c in POOL_CASES if c.op is Op.MAXPOOL2D]

    def tiles(la: QuantLayer) -> bool:
        return la.window == la.stride and not any(la.padding) and (la.act_min, la.act_max) == (-128, 127)

    assert any(tiles(la) and la.window == (2, 2) for _, la in layers)
    assert any(tiles(la) and la.window != (2, 2) for _, la in layers)
    assert any(not tiles(la) and la.window == (2, 2) for _, la in layers)
    assert {la.in_shape[2] % 4 for _, la in layers} == {0, 1, 2, 3}
    assert any(la.act_min > -128 for _, la in layers) and any(la.act_max < 127 for _, la in layers)
    assert any(c.misalign for c, _ in layers) and any(any(la.padding) for _, la in layers)


# --- mean, add, pad, softmax ----------------------------------------------------------------------


@pytest.mark.parametrize("case", MEAN_CASES, ids=lambda c: c.name)
def test_mean_matches_reference(graph_kernels: KernelLib, case):
    layer, x = make_mean_layer(case)
    np.testing.assert_array_equal(graph_kernels.run(layer, [x], lead=1), mean_s8(x[None], layer)[0])


@settings(max_examples=100, derandomize=True, deadline=None, database=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 40), scales=st.tuples(
    st.floats(0.001, 1.0), st.floats(0.001, 1.0)), zps=st.tuples(st.integers(-128, 127),
    st.integers(-128, 127)), seed=st.integers(0, 2**16))  # fmt: skip
def test_mean_random_shapes(graph_kernels: KernelLib, h, w, c, scales, zps, seed):
    case = MeanCase("random", (h, w, c), scales[0], scales[1], zps[0], zps[1], seed=seed)
    test_mean_matches_reference(graph_kernels, case)


@pytest.mark.parametrize("case", ADD_CASES, ids=lambda c: c.name)
def test_add_matches_reference(graph_kernels: KernelLib, case: AddCase):
    layer, x1, x2 = make_add_layer(case)
    got = graph_kernels.run(layer, [x1, x2], lead=case.seed % 2)
    np.testing.assert_array_equal(got, add_s8(x1[None], layer, x2[None])[0])


@settings(max_examples=100, derandomize=True, deadline=None, database=None)
@given(
    n=st.integers(1, 70),
    scales=st.tuples(*(st.floats(0.002, 0.5) for _ in range(3))),
    zps=st.tuples(*(st.integers(-128, 127) for _ in range(3))),
    clamp=st.sampled_from([(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-1.0, 1.0)]),
    seed=st.integers(0, 99),
)
def test_add_random(graph_kernels: KernelLib, n, scales, zps, clamp, seed):
    s1, s2, so = scales
    if 2 * max(s1, s2) / (2**20 * so) >= 1.0:
        so = 2 * max(s1, s2)  # TFLM refuses the output scale otherwise
    case = AddCase("random", (n,), (s1, s2, so), zps, clamp, seed)
    test_add_matches_reference(graph_kernels, case)


def test_add_output_may_be_an_input(graph_kernels: KernelLib):
    """mcup_nn.h allows output == input1 (the arena may place an ADD's output over its input)."""
    layer, x1, x2 = make_add_layer(ADD_CASES[1])
    params, _keep = params_struct(layer)
    buf1 = x1.ravel().copy()
    buf2 = x2.ravel().copy()
    fn = graph_kernels.lib.mcup_add_s8
    ptr = ctypes.POINTER(ctypes.c_int8)
    fn(ctypes.byref(params), buf1.ctypes.data_as(ptr), buf2.ctypes.data_as(ptr), buf1.ctypes.data_as(ptr))
    np.testing.assert_array_equal(buf1.reshape(layer.out_shape), add_s8(x1[None], layer, x2[None])[0])


@pytest.mark.parametrize("case", PAD_CASES, ids=lambda c: c.name)
def test_pad_matches_reference(graph_kernels: KernelLib, case):
    layer, x = make_pad_layer(case)
    np.testing.assert_array_equal(graph_kernels.run(layer, [x], lead=case.zp % 2), pad_s8(x[None], layer)[0])


@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=lambda c: c.name)
def test_softmax_matches_reference(graph_kernels: KernelLib, case: SoftmaxCase):
    layer, x = make_softmax_layer(case)
    np.testing.assert_array_equal(graph_kernels.run(layer, [x], lead=case.seed % 2), softmax_s8(x[None], layer)[0])


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(
    rows=st.integers(1, 4),
    depth=st.integers(1, 64),
    scale=st.floats(0.0005, 2.0),
    beta=st.sampled_from([1.0, 0.5, 2.0]),
    lo=st.integers(-128, 127),
    seed=st.integers(0, 2**16),
)
def test_softmax_random(graph_kernels: KernelLib, rows, depth, scale, beta, lo, seed):
    case = SoftmaxCase("random", (rows, depth), scale, beta, (lo, 128), seed)
    test_softmax_matches_reference(graph_kernels, case)


def test_softmax_cases_exercise_diff_min():
    """Some cases drop entries below diff_min (probability 0), some keep every entry."""
    dropped = []
    for case in SOFTMAX_CASES:
        layer, x = make_softmax_layer(case)
        diff = x.astype(int) - x.max(axis=-1, keepdims=True)
        dropped.append(bool((diff < softmax_diff_min(int(layer.shift[0]))).any()))
    assert any(dropped) and not all(dropped)


def test_graph_kernels_need_no_scratch():
    """Only weighted ops take scratch: the others' table entries say 0 for every variant."""
    layers = [make_pool_layer(POOL_CASES[0])[0], make_mean_layer(MEAN_CASES[0])[0], make_add_layer(ADD_CASES[0])[0],
              make_pad_layer(PAD_CASES[0])[0], make_softmax_layer(SOFTMAX_CASES[0])[0]]  # fmt: skip
    for layer in layers:
        assert not spec_of(layer.op).weighted
        assert all(scratch_bytes(layer, None, v) == 0 for v in VARIANTS)


# --- every kernel under AddressSanitizer and UndefinedBehaviorSanitizer -----------------------------


def _sanitizer_cases() -> list[tuple[str, QuantLayer, str | None, list[np.ndarray]]]:
    """(name, layer, format, inputs) of every kernel: the geometry table on dense and sparse conv,
    depthwise, FC (each with int8 and with int4 weights), pooling, mean, add, pad, softmax."""
    out = []
    for bits in (8, 4):
        tag = "" if bits == 8 else "s4"
        for i, case in enumerate(geometry_cases(Op.CONV2D) + DW_CASES[:20]):
            case = replace(case, bits=bits)
            layer, x = make_layer(case)
            formats = ("dense",) if layer.op is Op.DEPTHWISE_CONV2D else ("dense", *SPARSE_FORMATS)
            for fmt in formats:
                if fmt != "dense":
                    layer, x = make_layer(replace(case, sparsity=0.6, seed=case.seed + 7))
                out.append((f"c{tag}{i}_{fmt}", layer, fmt, [x]))
        for i, sparsity in enumerate((None, 0.7)):
            layer, x = make_layer(Case("fc", Op.DENSE, (37,), 7, in_zp=-5, sparsity=sparsity, seed=i, bits=bits))
            out += [(f"fc{tag}{i}_{fmt}", layer, fmt, [x])
                    for fmt in (("dense",) if sparsity is None else SPARSE_FORMATS)]
    out += [(f"p{i}", *make_pool_layer(c)[:1], None, [make_pool_layer(c)[1]]) for i, c in enumerate(POOL_CASES)]
    out += [(f"m{i}", *make_mean_layer(c)[:1], None, [make_mean_layer(c)[1]]) for i, c in enumerate(MEAN_CASES)]
    out += [(f"a{i}", make_add_layer(c)[0], None, list(make_add_layer(c)[1:])) for i, c in enumerate(ADD_CASES)]
    out += [(f"d{i}", *make_pad_layer(c)[:1], None, [make_pad_layer(c)[1]]) for i, c in enumerate(PAD_CASES)]
    out += [
        (f"s{i}", *make_softmax_layer(c)[:1], None, [make_softmax_layer(c)[1]]) for i, c in enumerate(SOFTMAX_CASES)
    ]
    return out


def _c_bytes(name: str, values: np.ndarray) -> str:
    flat = ", ".join(str(int(v)) for v in np.asarray(values).ravel())
    return f"static const int8_t {name}[{max(values.size, 1)}] = {{{flat or '0'}}};\n"


def _sanitizer_source(cases) -> str:
    """One C file: each case's arrays and params struct (through the code generator's helpers), and
    a runner that copies the inputs into exactly-sized heap buffers, calls the kernel and prints the
    output bytes."""
    parts = ['#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include "mcup_nn.h"\n'
             '#include "mcup_sparse.h"\n\n'
             "static int8_t *copy(const int8_t *src, size_t n)\n{\n    int8_t *dst = malloc(n);\n"
             "    memcpy(dst, src, n);\n    return dst;\n}\n\n"
             "static void print(const char *name, const int8_t *out, size_t n)\n{\n"
             '    printf("%s", name);\n    for (size_t i = 0; i < n; i++) {\n        printf(" %d", out[i]);\n'
             '    }\n    printf("\\n");\n    free((void *)out);\n}\n\n']  # fmt: skip
    calls = []
    for name, layer, fmt, inputs in cases:
        layer = replace(layer, name=name)
        spec = spec_of(layer.op)
        fmt = fmt if spec.weighted else None
        if spec.weighted:
            parts.append(c_definitions(name, pack(layer.weights, fmt, layer.weight_bits)))
            for f in ("bias", "multiplier", "shift"):
                values = ", ".join(str(int(v)) for v in getattr(layer, f))
                parts.append(f"const int32_t mcup_param_{name}_{f}[] = {{{values}}};\n")
        parts += [_c_bytes(f"{name}_in{i}", x) for i, x in enumerate(inputs)]
        bits = layer.weight_bits if spec.weighted else 8
        parts.append(f"static const {spec.struct(fmt, bits)} {name}_params = {params_initializer(layer, fmt)};\n")
        out_size = int(np.prod(layer.out_shape))
        body = [
            f"static void run_{name}(void)\n{{\n    int8_t *out = malloc({out_size});\n",
            *(f"    int8_t *in{i} = copy({name}_in{i}, {x.size});\n" for i, x in enumerate(inputs)),
        ]
        args = ", ".join([f"&{name}_params", *(f"in{i}" for i in range(len(inputs))), "out"])
        function = spec.function(fmt, bits)
        if spec.weighted:
            body += [f"    const int32_t size = {function}_get_buffer_size(&{name}_params);\n",
                     "    void *scratch = size > 0 ? malloc((size_t)size) : NULL;\n",
                     f"    {function}({args}, scratch);\n    free(scratch);\n"]  # fmt: skip
        else:
            body.append(f"    {function}({args});\n")
        body += [f"    free(in{i});\n" for i in range(len(inputs))]
        body.append(f'    print("{name}", out, {out_size});\n}}\n\n')
        parts.append("".join(body))
        calls.append(f"    run_{name}();\n")
    parts.append("int main(void)\n{\n" + "".join(calls) + "    return 0;\n}\n")
    return "".join(parts)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_kernel_under_sanitizers(tmp_path: Path, variant: str):
    cases = _sanitizer_cases()
    kernels = {(layer.op, fmt, layer.weight_bits) if spec_of(layer.op).weighted else (layer.op, None)
               for _, layer, fmt, _ in cases}
    exe = host_build(tmp_path / "kernels_sanitized", kernel_sources(variant, kernels), [INCLUDE_DIR],
                     VARIANT_DEFINES[variant], text=_sanitizer_source(cases))  # fmt: skip
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr == "", result.stderr[-4000:]
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in result.stdout.splitlines())
    assert len(lines) == len(cases)
    for name, layer, _fmt, inputs in cases:
        batch = [x[None] for x in inputs]
        expected = spec_of(layer.op).reference_s8(batch[0], layer, *batch[1:])[0]
        got = np.array([int(v) for v in lines[name].split()], dtype=np.int8)
        np.testing.assert_array_equal(got, expected.ravel(), err_msg=name)


def test_table_covers_every_kernel():
    """Every op with a kernel is exercised here or in test_kernels.py / test_sparse.py."""
    tested_here = {op for op, _ in GRAPH_KERNELS}
    assert tested_here | {Op.CONV2D, Op.DENSE} == {op for op, spec in OPS.items() if spec.kernel is not None}
    assert len(GEOMETRIES) >= 12
