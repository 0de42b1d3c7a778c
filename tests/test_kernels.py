"""Host tests of the dense-weight C kernels (FC, conv): every variant against the numpy reference, bit for bit.

One case table, one case per code path, runs unchanged against each kernel variant. The kernels
are compiled for the host into a shared library (the DSP variant with -DMCUP_EMULATE_DSP, i.e.
portable C definitions of the intrinsics) and called through ctypes (kernel_cases.KernelLib, its
parameter structs generated from the operator table); the oracle is mcuprune.model.reference on
QuantLayers built in kernel_cases.py. Cross-compilation for Cortex-M checks every kernel file builds
warning-free for the real targets; a QEMU run checks them on the cores. The kernels of the ops
without dense conv/FC weights (depthwise, pooling, mean, add, pad, softmax) are tested in
test_graph_kernels.py, the sparse formats in test_sparse.py.
"""

from __future__ import annotations

import ctypes
import doctest
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from host_c import kernel_library, require
from hypothesis import given, settings
from kernel_cases import (
    Case,
    KernelLib,
    geometry_cases,
    layout_expected,
    layout_source,
    make_layer,
    random_cases,
    struct_of,
)

import mcuprune.model.ops
from mcuprune.model.ir import Op, QuantLayer
from mcuprune.model.ops import (
    OPS,
    PW_PIXELS,
    STRIP_MAX_OUT_C,
    STRIP_MAX_WORDS,
    STRIP_PIXELS,
    STRIP_UNROLL_WORDS,
    VARIANTS,
    conv_is_pointwise,
    conv_strip_bytes,
    kernel_sources,
    scratch_bytes,
)
from mcuprune.model.reference import conv2d_s8, dense_s8
from mcuprune.resources import INCLUDE_DIR, KERNEL_DIR

DENSE_KERNELS = [(Op.CONV2D, "dense"), (Op.DENSE, "dense")]


@pytest.fixture(scope="module", params=VARIANTS)
def kernels(request, tmp_path_factory) -> KernelLib:
    variant = request.param
    build = tmp_path_factory.mktemp(f"kernels_{variant}")
    layout = build / "layout.c"
    layout.write_text(layout_source(_layout_structs(), "mcup_test_layout"))
    return KernelLib(variant, kernel_library(build / f"libmcup_{variant}.so", variant, DENSE_KERNELS, [layout]))


def _layout_structs() -> list[type[ctypes.Structure]]:
    return [struct_of(make_layer(FC_CASES[0])[0], "dense"), struct_of(make_layer(CONV_CASES[0])[0], "dense")]


def test_ctypes_mirrors_match_header(kernels: KernelLib):
    """The structs ops.py's fields describe (in C order) are the ones mcup_nn.h declares."""
    expected = layout_expected(_layout_structs())
    layout = (ctypes.c_int32 * len(expected)).in_dll(kernels.lib, "mcup_test_layout")
    assert list(layout) == expected


# --- the case table (Case, make_layer: kernel_cases.py) -------------------------------------

FC_CASES = [
    Case("fc_len4_even_rows", Op.DENSE, (16,), 8),
    Case("fc_tail1", Op.DENSE, (17,), 6, in_zp=3, out_zp=-5),
    Case("fc_tail2", Op.DENSE, (18,), 4, in_zp=-7, out_zp=10),
    Case("fc_tail3_odd_rows", Op.DENSE, (19,), 5, in_zp=11),
    Case("fc_in1", Op.DENSE, (1,), 3, in_zp=-20),
    Case("fc_in3_out1", Op.DENSE, (3,), 1, in_zp=5),
    Case("fc_in_zp_min", Op.DENSE, (64,), 10, in_zp=-128),
    Case("fc_in_zp_max", Op.DENSE, (65,), 9, in_zp=127),
    Case("fc_out_zp_min", Op.DENSE, (24,), 10, in_zp=-128, out_zp=-128),
    Case("fc_out_zp_max", Op.DENSE, (25,), 9, in_zp=127, out_zp=127),
    Case("fc_relu", Op.DENSE, (40,), 7, in_zp=-3, out_zp=-20, relu=True),
    Case("fc_relu_zp_high", Op.DENSE, (23,), 6, out_zp=100, relu=True),
    Case("fc_null_bias", Op.DENSE, (30,), 7, in_zp=9, null_bias=True),
    Case("fc_saturate", Op.DENSE, (50,), 12, in_zp=-1, rescale=20.0),
    Case("fc_left_shift", Op.DENSE, (2,), 4, x_max=8, w_max=2),
    Case("fc_large", Op.DENSE, (1568,), 64, in_zp=-128, out_zp=-4, relu=True, seed=3),
    Case("fc_misaligned", Op.DENSE, (23,), 5, in_zp=4, misalign=True),
]

CONV_CASES = [
    Case("conv_in1_first_layer", Op.CONV2D, (9, 8, 1), 4, pad=1, in_zp=-128, out_zp=-128),
    Case("conv_in1_odd_out", Op.CONV2D, (7, 7, 1), 5, in_zp=12),
    Case("conv_in4_pad1", Op.CONV2D, (6, 6, 4), 6, pad=1, in_zp=-3, out_zp=7),
    Case("conv_in8_pad0_stride2", Op.CONV2D, (9, 9, 8), 4, stride=2, in_zp=5),
    Case("conv_in16_pad1_stride2", Op.CONV2D, (8, 7, 16), 8, stride=2, pad=1, in_zp=-128),
    Case("conv_in3_tail3", Op.CONV2D, (5, 6, 3), 3, pad=1, in_zp=-9),  # k = 27
    Case("conv_in2_tail2", Op.CONV2D, (5, 5, 2), 2, in_zp=4),  # k = 18, odd pixel count
    Case("conv_in5_tail1", Op.CONV2D, (4, 5, 5), 7, pad=1, in_zp=127, out_zp=-10),  # k = 45
    Case("conv_zp_extremes", Op.CONV2D, (5, 4, 8), 5, pad=1, in_zp=127, out_zp=127),
    Case("conv_k1_pointwise", Op.CONV2D, (4, 4, 12), 6, k=1, in_zp=2),
    Case("conv_k1_in3", Op.CONV2D, (3, 5, 3), 5, k=1, stride=2, in_zp=-2),
    Case("conv_k5_pad2", Op.CONV2D, (6, 6, 4), 4, k=5, pad=2, in_zp=1),
    Case("conv_k5_wider_than_image", Op.CONV2D, (2, 3, 1), 3, k=5, pad=2, in_zp=-60),
    Case("conv_k1_pad1_all_padding_corners", Op.CONV2D, (3, 3, 3), 4, k=1, pad=1, in_zp=30),
    Case("conv_1x3", Op.CONV2D, (4, 6, 2), 3, k=1, k_w=3, pad=1, in_zp=-5),
    Case("conv_3x1_stride3", Op.CONV2D, (7, 5, 4), 2, k=3, k_w=1, stride=3, in_zp=8),
    Case("conv_single_pixel", Op.CONV2D, (3, 3, 8), 3, in_zp=-1),
    Case("conv_out_c1", Op.CONV2D, (4, 4, 4), 1, pad=1),
    Case("conv_relu", Op.CONV2D, (6, 6, 8), 6, pad=1, in_zp=-128, out_zp=-128, relu=True),
    Case("conv_null_bias", Op.CONV2D, (5, 5, 4), 5, pad=1, in_zp=6, null_bias=True),
    Case("conv_saturate", Op.CONV2D, (5, 5, 8), 4, pad=1, in_zp=3, rescale=20.0),
    Case("conv_left_shift", Op.CONV2D, (3, 3, 1), 2, k=1, x_max=8, w_max=4),
    Case("conv_bench_shape", Op.CONV2D, (14, 14, 16), 32, pad=1, in_zp=-128, relu=True, seed=4),
    Case("conv_im2col_misaligned", Op.CONV2D, (5, 5, 8), 5, pad=1, in_zp=-7, misalign=True),
    Case("conv_im2col_left_shift_act_max", Op.CONV2D, (4, 4, 16), 3, pad=1, x_max=4, w_max=2, act_max=60),
    # The DSP strip path (small windows, see conv2d_s8_dense.c): each unrolled variant, the generic
    # loop with odd and even window lengths, segment splits and every requantization variant.
    Case("conv_in1_stride2", Op.CONV2D, (9, 9, 1), 6, stride=2, pad=1, in_zp=-30),  # 3x3x1 unpaired
    Case("conv_3x1x3", Op.CONV2D, (6, 5, 3), 4, k=3, k_w=1, pad=1, in_zp=7),  # 6 words, step 6
    Case("conv_3x2x1", Op.CONV2D, (6, 7, 1), 3, k=3, k_w=2, in_zp=-3),  # 4 words
    Case("conv_3x4x1", Op.CONV2D, (6, 9, 1), 3, k=3, k_w=4, pad=1, in_zp=2),  # 8 words
    Case("conv_2x2x1_stride2", Op.CONV2D, (5, 5, 1), 3, k=2, stride=2, in_zp=9),  # 2 words, no odd row
    Case("conv_4x3x1", Op.CONV2D, (7, 6, 1), 5, k=4, k_w=3, pad=1, in_zp=-4),  # even k_h, 6 words
    Case("conv_k1_in4", Op.CONV2D, (4, 4, 4), 6, k=1, in_zp=3),  # 4 words
    Case("conv_k1_in8", Op.CONV2D, (3, 4, 8), 5, k=1, in_zp=-6),  # 8 words
    Case("conv_5x5x1", Op.CONV2D, (8, 8, 1), 4, k=5, pad=2, in_zp=-11),  # 15 words, generic
    Case("conv_in1_wide_segments", Op.CONV2D, (3, 140, 1), 3, pad=1, in_zp=5),  # 128 + 12 columns
    Case("conv_in1_rows_tail", Op.CONV2D, (21, 28, 1), 2, pad=1, in_zp=-1),  # 4-row segments + 1
    Case("conv_in1_left_shift", Op.CONV2D, (6, 6, 1), 3, pad=1, x_max=4, w_max=2),  # shift > 0
    Case("conv_in1_relu_zp", Op.CONV2D, (6, 8, 1), 4, pad=1, in_zp=-128, out_zp=20, relu=True),
    Case("conv_in1_act_max", Op.CONV2D, (6, 8, 1), 4, pad=1, in_zp=3, act_max=40),
    Case("conv_in1_in_zp_max", Op.CONV2D, (5, 6, 1), 3, pad=1, in_zp=127, out_zp=-100),
    Case("conv_in1_null_bias", Op.CONV2D, (5, 6, 1), 5, pad=1, in_zp=-128, null_bias=True),
    Case("conv_in1_misaligned", Op.CONV2D, (7, 9, 1), 5, pad=1, in_zp=-1, misalign=True),
    Case("conv_in3_stride2_misaligned", Op.CONV2D, (9, 9, 3), 7, stride=2, pad=1, in_zp=-128, misalign=True),
    Case("conv_in3_saturate", Op.CONV2D, (6, 7, 3), 5, pad=1, in_zp=1, rescale=20.0),
    Case("conv_k1_in4_stride2", Op.CONV2D, (5, 5, 4), 6, k=1, stride=2, in_zp=3),  # strip, 4 words
    Case("conv_2x4x2", Op.CONV2D, (5, 7, 2), 3, k=2, k_w=4, in_zp=-6),  # strip, 8 words, no odd row
    # The new geometry on the strip path: TFLite SAME padding at stride 2 (extra row/column at the
    # bottom/right), strides (1, 2) and (2, 1), DS-CNN's 10x4 first layer.
    Case("conv_in1_s22_same", Op.CONV2D, (10, 9, 1), 4, stride=2, pad=(0, 1, 1, 1), in_zp=-128, out_zp=-128),
    Case("conv_in3_s12", Op.CONV2D, (7, 9, 3), 5, stride=(1, 2), pad=(1, 1, 0, 1), in_zp=4, relu=True),
    Case("conv_in1_s21", Op.CONV2D, (9, 7, 1), 3, stride=(2, 1), pad=(1, 0, 1, 1), in_zp=-9, act_max=50),
    Case("conv_10x4_s22_same", Op.CONV2D, (19, 10, 1), 8, k=10, k_w=4, stride=2, pad=(4, 4, 1, 2), in_zp=-3),
    Case("conv_10x4_s22_same_c17", Op.CONV2D, (19, 10, 1), 17, k=10, k_w=4, stride=2, pad=(4, 4, 1, 2)),  # im2col
    # The pointwise path (1x1, stride 1, no padding; before the strip path): 4 pixels at a time, a
    # last group of 1..3 pixels, in_c % 4 tails, odd out_c, every requantization variant.
    Case("conv_pw_in12", Op.CONV2D, (4, 4, 12), 6, k=1, in_zp=2),
    Case("conv_pw_in16_odd_pixels", Op.CONV2D, (3, 5, 16), 7, k=1, in_zp=-128, out_zp=-128, relu=True),
    Case("conv_pw_in33_tail1", Op.CONV2D, (2, 3, 33), 5, k=1, in_zp=17, out_zp=3),
    Case("conv_pw_in30_tail2_left_shift", Op.CONV2D, (3, 3, 30), 4, k=1, x_max=4, w_max=2),
    Case("conv_pw_in27_tail3_act_max", Op.CONV2D, (5, 2, 27), 9, k=1, in_zp=-5, act_max=30),
    Case("conv_pw_in64_misaligned", Op.CONV2D, (5, 5, 64), 16, k=1, in_zp=-128, misalign=True, seed=6),
    Case("conv_pw_null_bias_saturate", Op.CONV2D, (1, 2, 40), 3, k=1, in_zp=1, null_bias=True, rescale=20.0),
    Case("conv_pw_single_pixel", Op.CONV2D, (1, 1, 25), 4, k=1, in_zp=-1),
    Case("conv_pw_dilated", Op.CONV2D, (3, 4, 28), 5, k=1, dilation=(2, 2), in_zp=7),  # dilation is moot
    # The shared geometry table on the im2col path (in_c past the strip path) and the strip path.
    *geometry_cases(Op.CONV2D, out_c=5),
    *(
        replace(c, name=c.name + "_in16", in_shape=(*c.in_shape[:2], 16), out_c=6, misalign=i % 5 == 0)
        for i, c in enumerate(geometry_cases(Op.CONV2D))
    ),
]


@pytest.mark.parametrize("case", FC_CASES, ids=lambda c: c.name)
def test_fc_matches_reference(kernels: KernelLib, case: Case):
    layer, x = make_layer(case)
    expected = dense_s8(x[None], layer)[0]
    got = kernels.run(layer, [x], null_bias=case.null_bias, lead=int(case.misalign))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv2d_matches_reference(kernels: KernelLib, case: Case):
    layer, x = make_layer(case)
    got = kernels.run(layer, [x], null_bias=case.null_bias, lead=int(case.misalign))
    np.testing.assert_array_equal(got, conv2d_s8(x[None], layer)[0])


def small_cases(op: Op):
    """Dense layers of any shape the kernels accept, for the property tests below."""
    return random_cases(op, max_features=40, max_hw=7, max_in_c=9)


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(case=small_cases(Op.CONV2D))
def test_conv2d_random_shapes(kernels: KernelLib, case: Case):
    layer, x = make_layer(case)
    got = kernels.run(layer, [x], null_bias=case.null_bias)
    np.testing.assert_array_equal(got, conv2d_s8(x[None], layer)[0])
    assert scratch_bytes(layer, "dense", kernels.variant) == kernels.buffer_size(layer)


@settings(max_examples=100, derandomize=True, deadline=None, database=None)
@given(case=small_cases(Op.DENSE))
def test_fc_random_shapes(kernels: KernelLib, case: Case):
    layer, x = make_layer(case)
    got = kernels.run(layer, [x], null_bias=case.null_bias)
    np.testing.assert_array_equal(got, dense_s8(x[None], layer)[0])


def _dsp_conv_path(layer: QuantLayer) -> str:
    """Which code path of firmware/kernels/dsp/conv2d_s8_dense.c a layer takes (mirrors the C)."""
    if conv_is_pointwise(layer):
        return "pointwise"
    if conv_strip_bytes(layer) is None:
        return "im2col"
    _, k_h, k_w, in_c = layer.weights.shape
    words = (k_h + 1) // 2 * k_w * in_c
    if k_h == 3 and words == 6 and layer.stride[1] * in_c == 1:
        return "strip-pairs"
    if words in ((4, 6, 8) if k_h == 3 else (2, 4, 6, 8)):
        return f"strip-unrolled-{'odd-row' if k_h == 3 else 'plain'}-{words}"
    return f"strip-generic-{'odd' if words % 2 else 'even'}"


def test_cases_exercise_their_paths():
    """The table keeps covering every tail: k % 4, odd rows/channels, odd pixel counts, and every
    path of the DSP conv, aligned and not."""
    layers = [make_layer(c)[0] for c in FC_CASES + CONV_CASES]
    fan_in = {int(np.prod(la.weights.shape[1:])) % 4 for la in layers}
    assert fan_in == {0, 1, 2, 3}
    assert any(la.out_channels % 2 for la in layers if la.op is Op.DENSE)
    assert any(la.out_channels % 2 for la in layers if la.op is Op.CONV2D)
    assert any(np.prod(la.out_shape[:2]) % 2 for la in layers if la.op is Op.CONV2D)
    assert any(la.shift.max() > 0 for la in layers)
    assert any(la.weights.shape[-1] == 1 for la in layers if la.op is Op.CONV2D)
    conv = [(c, make_layer(c)[0]) for c in CONV_CASES]
    paths = {_dsp_conv_path(la) for _, la in conv}
    assert paths == {
        "im2col", "pointwise", "strip-pairs", "strip-generic-odd", "strip-generic-even",
        *(f"strip-unrolled-odd-row-{n}" for n in (4, 6, 8)),
        *(f"strip-unrolled-plain-{n}" for n in (2, 4, 6, 8)),
    }  # fmt: skip
    strip = [(c, la) for c, la in conv if _dsp_conv_path(la).startswith("strip")]
    for path in ("im2col", "pointwise"):
        assert any(c.misalign for c, la in conv if _dsp_conv_path(la) == path)
        assert any(la.shift.max() > 0 for _, la in conv if _dsp_conv_path(la) == path)
        assert any(la.act_max < 127 for _, la in conv if _dsp_conv_path(la) == path)
    assert any(c.misalign for c, _ in strip)
    assert any(la.out_shape[1] > STRIP_PIXELS for _, la in strip)  # a row in several segments
    assert any(la.out_shape[1] % 2 for c, la in strip if _dsp_conv_path(la) == "strip-pairs")
    assert any(la.shift.max() > 0 for _, la in strip)  # the general requantization loop
    assert any(la.act_max < 127 for _, la in strip)
    assert any(la.act_min > -128 for _, la in strip)
    # the new geometry: every stride pair, asymmetric padding, dilation, on the strip and im2col paths
    geometry = {(la.stride, la.dilation != (1, 1), len(set(la.padding)) > 1) for _, la in conv}
    assert {s for s, _, _ in geometry} >= {(1, 1), (2, 2), (1, 2), (2, 1)}
    assert any(d for _, d, _ in geometry) and any(a for _, _, a in geometry)
    assert any(la.stride != (1, 1) and len(set(la.padding)) > 1 for _, la in strip)


def test_strip_constants_match_c():
    """ops.py mirrors the DSP conv's #defines; the scratch sizes and paths depend on them."""
    source = (KERNEL_DIR / "dsp" / "conv2d_s8_dense.c").read_text()
    for name, value in [("STRIP_UNROLL_WORDS", STRIP_UNROLL_WORDS), ("STRIP_MAX_WORDS", STRIP_MAX_WORDS),
                        ("STRIP_MAX_OUT_C", STRIP_MAX_OUT_C), ("STRIP_PIXELS", STRIP_PIXELS),
                        ("PW_PIXELS", PW_PIXELS)]:  # fmt: skip
        assert f"#define {name} {value}\n" in source


@pytest.mark.parametrize("case", FC_CASES + CONV_CASES, ids=lambda c: c.name)
def test_scratch_bytes_matches_c(kernels: KernelLib, case: Case):
    layer, _ = make_layer(case)
    c_size = kernels.buffer_size(layer)
    assert scratch_bytes(layer, "dense", kernels.variant) == c_size
    assert c_size % 4 == 0
    assert (c_size == 0) == (kernels.variant == "reference")


# --- Python side of the kernel registry --------------------------------------------------------


def test_kernel_sources_one_per_op_in_op_order():
    dsp = kernel_sources("dsp", [(Op.MAXPOOL2D, None), (Op.DENSE, "dense"), (Op.CONV2D, "dense"), ("dense", "dense")])
    assert [p.relative_to(KERNEL_DIR).as_posix() for p in dsp] == [
        "dsp/conv2d_s8_dense.c",  # one per kernel, in table order
        "dsp/fc_s8_dense.c",
        "dsp/maxpool2d_s8.c",
    ]
    ref = kernel_sources("reference", [("conv2d", "dense")])
    assert [p.relative_to(KERNEL_DIR).as_posix() for p in ref] == ["reference/conv2d_s8_dense.c"]
    assert all(p.is_file() for p in dsp + ref)


def test_kernel_sources_falls_back_to_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A variant folder without an op's file builds that op's reference kernel."""
    for variant, names in {"reference": ["conv2d_s8_dense.c", "maxpool2d_s8.c"], "dsp": ["conv2d_s8_dense.c"]}.items():
        (tmp_path / variant).mkdir()
        for name in names:
            (tmp_path / variant / name).touch()
    monkeypatch.setattr(mcuprune.model.ops, "KERNEL_DIR", tmp_path)
    dsp = kernel_sources("dsp", [(Op.MAXPOOL2D, None), (Op.CONV2D, "dense")])
    assert [p.relative_to(tmp_path).as_posix() for p in dsp] == ["dsp/conv2d_s8_dense.c", "reference/maxpool2d_s8.c"]


def test_kernel_sources_rejects_unknown_variant():
    with pytest.raises(ValueError, match="unknown kernel variant"):
        kernel_sources("mve", [(Op.DENSE, "dense")])


def test_kernel_functions_are_declared_in_header():
    """Every op with a kernel: its function (and _get_buffer_size for a weighted one) and struct
    in mcup_nn.h, its file in the reference folder (RESHAPE has no kernel)."""
    header = (INCLUDE_DIR / "mcup_nn.h").read_text()
    assert set(OPS) == set(Op)
    for spec in OPS.values():
        if spec.kernel is None:
            continue
        fmt = "dense" if spec.weighted else None
        assert f" {spec.function(fmt)}(" in header
        assert (f" {spec.function(fmt)}_get_buffer_size(" in header) == spec.weighted
        assert f" {spec.struct(fmt)};" in header
        assert (KERNEL_DIR / "reference" / spec.source(fmt)).is_file()
    dsp = {p.name for p in (KERNEL_DIR / "dsp").glob("*.c")}
    assert dsp <= {p.name for p in (KERNEL_DIR / "reference").glob("*.c")}  # every twin has a reference


# --- cross-compilation for the targets ---------------------------------------------------------

ARM_CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-mthumb"]
M4_FLAGS = ["-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
TARGETS = {  # target -> (cpu flags, variants that must build)
    "m3": (["-mcpu=cortex-m3", "-mfloat-abi=soft"], ("reference",)),
    "m4": (M4_FLAGS, ("reference", "dsp")),
    "m7": (["-mcpu=cortex-m7", "-mfloat-abi=hard", "-mfpu=fpv5-d16"], ("reference", "dsp")),
    "m33": (["-mcpu=cortex-m33", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"], ("reference", "dsp")),
    "m55": (["-mcpu=cortex-m55", "-mfloat-abi=hard"], ("reference", "dsp")),
}
ARM_BUILDS = [
    pytest.param(target, variant, path, id=f"{target}-{variant}-{path.name}")
    for target, (_, variants) in TARGETS.items()
    for variant in variants
    for path in sorted((KERNEL_DIR / variant).glob("*.c"))
]


@pytest.mark.parametrize(("target", "variant", "source"), ARM_BUILDS)
def test_kernel_cross_compiles(tmp_path: Path, target: str, variant: str, source: Path):
    cc = require("arm-none-eabi-gcc")
    cmd = [cc, *ARM_CFLAGS, *TARGETS[target][0], f"-I{INCLUDE_DIR}", "-c", str(source)]
    result = subprocess.run([*cmd, "-o", str(tmp_path / "k.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dsp_kernels_refuse_cores_without_dsp(tmp_path: Path):
    cc = require("arm-none-eabi-gcc")
    source = KERNEL_DIR / "dsp" / "fc_s8_dense.c"
    cmd = [cc, *ARM_CFLAGS, *TARGETS["m3"][0], f"-I{INCLUDE_DIR}", "-c", str(source)]
    cmd += ["-o", str(tmp_path / "k.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0
    assert "DSP extension" in result.stderr


def test_ops_doctests():
    assert doctest.testmod(mcuprune.model.ops).failed == 0


# --- on target: the benchmark harness doubles as a bit-exactness check in QEMU ----------------


@pytest.mark.qemu
def test_bench_kernels_bit_exact_in_qemu(tmp_path: Path):
    """bench/kernels/run.py runs both variants on mps2-an386 and fails on any numpy mismatch."""
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        require(tool)
    script = Path(__file__).resolve().parent.parent / "bench" / "kernels" / "run.py"
    cmd = [sys.executable, str(script), "--build-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checksums match the numpy reference" in result.stdout
