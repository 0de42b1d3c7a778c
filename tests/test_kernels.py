"""Host tests of the C kernels: every variant against the numpy reference, bit for bit.

One case table, one case per code path, runs unchanged against each kernel variant. The kernels
are compiled for the host into a shared library (the DSP variant with -DMCUP_EMULATE_DSP, i.e.
portable C definitions of the intrinsics) and called through ctypes; the oracle is
mcuprune.model.reference on QuantLayers built here. Cross-compilation for Cortex-M checks the same
files build warning-free for the real targets. On-target bit-exactness is covered end to end.
"""

from __future__ import annotations

import ctypes
import doctest
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from host_c import kernel_library, require
from hypothesis import given, settings
from kernel_cases import Case, QuantParamsC, c_ptr, make_layer, quant_params, random_cases

import mcuprune.model.ops
from mcuprune.model.ir import Op, QuantLayer
from mcuprune.model.ops import (
    OPS,
    STRIP_MAX_WORDS,
    STRIP_PIXELS,
    STRIP_UNROLL_WORDS,
    VARIANTS,
    conv_strip_bytes,
    kernel_sources,
    scratch_bytes,
)
from mcuprune.model.reference import conv2d_s8, dense_s8, maxpool2d
from mcuprune.resources import INCLUDE_DIR, KERNEL_DIR

CANARY = 0x5A  # fills the bytes around every output and past every scratch buffer
HARNESS_DIR = Path(__file__).resolve().parent / "kernel_harness"


# --- ctypes mirrors of firmware/include/mcup_nn.h (mcup_quant_params: kernel_cases.py) --------

_I8P = ctypes.POINTER(ctypes.c_int8)


class FcParamsC(ctypes.Structure):
    _fields_ = [
        ("in_features", ctypes.c_int32),
        ("out_features", ctypes.c_int32),
        ("weights", _I8P),
        ("q", QuantParamsC),
    ]


class Conv2dParamsC(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int32)
        for name in ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "stride", "pad")
    ] + [("weights", _I8P), ("q", QuantParamsC)]


class Maxpool2dParamsC(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in ("in_h", "in_w", "c", "pool")]


def _at(values: np.ndarray, lead: int, fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A copy of int8 `values` (flattened) starting `lead` bytes past a word boundary, and its buffer
    (which has `fill` bytes around it): lead = 1 makes every 32-bit load of the kernels unaligned."""
    flat = np.ascontiguousarray(values, dtype=np.int8).ravel()
    buf = np.full(flat.size + 16, fill, dtype=np.int8)
    start = (-buf.ctypes.data) % 8 + lead  # numpy's alignment is not guaranteed past 8 bytes
    view = buf[start : start + flat.size]
    view[:] = flat
    assert view.ctypes.data % 4 == lead % 4
    return view, buf


class Call:
    """Keeps the numpy arrays a C parameter struct points into alive for one call.

    lead = 1 places the weights one byte past a word boundary; act_max overrides the clamp's top
    (QuantLayer always has 127)."""

    def __init__(self, layer: QuantLayer, null_bias: bool, lead: int = 0, act_max: int | None = None):
        w, self.w_buf = _at(layer.weights, lead)
        self.q, quant = quant_params(layer, null_bias, act_max)
        self.keep = [w, *quant]
        self.weights = c_ptr(w, ctypes.c_int8)


class Kernels:
    """One compiled kernel variant, called like the numpy reference ops."""

    def __init__(self, variant: str, lib: ctypes.CDLL):
        self.variant = variant
        self.lib = lib
        for fn in ("mcup_fc_s8_dense_get_buffer_size", "mcup_conv2d_s8_dense_get_buffer_size"):
            getattr(lib, fn).restype = ctypes.c_int32

    def _run(self, fn, params, x: np.ndarray, out_size: int, scratch: int | None, lead: int = 0) -> np.ndarray:
        """Call fn(params, x, out[, scratch]) with canaries around out and just past scratch.

        lead = 1 places input and output one byte past a word boundary."""
        x, _x_buf = _at(x, lead)
        out, out_buf = _at(np.full(out_size, CANARY, dtype=np.int8), lead, fill=CANARY)
        args = [ctypes.byref(params), c_ptr(x, ctypes.c_int8), c_ptr(out, ctypes.c_int8)]
        words = np.full((scratch or 0) // 4 + 4, CANARY * 0x01010101, dtype=np.uint32)  # 4-aligned
        if scratch is not None:  # maxpool takes no scratch argument
            args.append(ctypes.c_void_p(words.ctypes.data) if scratch else None)
        fn(*args)
        start = out.ctypes.data - out_buf.ctypes.data
        outside = np.concatenate([out_buf[:start], out_buf[start + out_size :]])
        assert (outside == CANARY).all(), "kernel wrote outside its output"
        assert (words[(scratch or 0) // 4 :] == CANARY * 0x01010101).all(), "kernel wrote past its scratch"
        return out.copy()

    def fc_buffer_size(self, params: FcParamsC) -> int:
        return self.lib.mcup_fc_s8_dense_get_buffer_size(ctypes.byref(params))

    def conv_buffer_size(self, params: Conv2dParamsC) -> int:
        return self.lib.mcup_conv2d_s8_dense_get_buffer_size(ctypes.byref(params))

    def fc_params(self, layer: QuantLayer, null_bias: bool, lead: int = 0) -> tuple[FcParamsC, Call]:
        call = Call(layer, null_bias, lead)
        out_f, in_f = layer.weights.shape
        return FcParamsC(in_features=in_f, out_features=out_f, weights=call.weights, q=call.q), call

    def conv_params(
        self, layer: QuantLayer, null_bias: bool, lead: int = 0, act_max: int | None = None
    ) -> tuple[Conv2dParamsC, Call]:
        call = Call(layer, null_bias, lead, act_max)
        out_c, k_h, k_w, in_c = layer.weights.shape
        (in_h, in_w, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape
        params = Conv2dParamsC(
            in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c,
            k_h=k_h, k_w=k_w, stride=layer.stride, pad=layer.pad, weights=call.weights, q=call.q,
        )  # fmt: skip
        return params, call

    def dense(self, x: np.ndarray, layer: QuantLayer, null_bias: bool = False, lead: int = 0) -> np.ndarray:
        params, _call = self.fc_params(layer, null_bias, lead)
        fn = getattr(self.lib, OPS[Op.DENSE].function("dense"))
        return self._run(fn, params, x, layer.weights.shape[0], self.fc_buffer_size(params), lead)

    def conv2d(
        self, x: np.ndarray, layer: QuantLayer, null_bias: bool = False, lead: int = 0, act_max: int | None = None
    ) -> np.ndarray:
        params, _call = self.conv_params(layer, null_bias, lead, act_max)
        fn = getattr(self.lib, OPS[Op.CONV2D].function("dense"))
        out = self._run(fn, params, x, int(np.prod(layer.out_shape)), self.conv_buffer_size(params), lead)
        return out.reshape(layer.out_shape)

    def maxpool2d(self, x: np.ndarray, pool: int, lead: int = 0) -> np.ndarray:
        h, w, c = x.shape
        params = Maxpool2dParamsC(in_h=h, in_w=w, c=c, pool=pool)
        fn = getattr(self.lib, OPS[Op.MAXPOOL2D].function())
        out = self._run(fn, params, x, (h // pool) * (w // pool) * c, scratch=None, lead=lead)
        return out.reshape(h // pool, w // pool, c)


@pytest.fixture(scope="module", params=VARIANTS)
def kernels(request, tmp_path_factory) -> Kernels:
    variant = request.param
    lib_path = tmp_path_factory.mktemp(f"kernels_{variant}") / f"libmcup_{variant}.so"
    dense_kernels = [(Op.CONV2D, "dense"), (Op.DENSE, "dense"), (Op.MAXPOOL2D, None)]
    return Kernels(variant, kernel_library(lib_path, variant, dense_kernels, [HARNESS_DIR / "layout.c"]))


def test_ctypes_mirrors_match_header(kernels: Kernels):
    expected = [
        ctypes.sizeof(QuantParamsC),
        QuantParamsC.input_offset.offset,
        QuantParamsC.act_max.offset,
        ctypes.sizeof(FcParamsC),
        FcParamsC.weights.offset,
        FcParamsC.q.offset,
        ctypes.sizeof(Conv2dParamsC),
        Conv2dParamsC.pad.offset,
        Conv2dParamsC.weights.offset,
        Conv2dParamsC.q.offset,
        ctypes.sizeof(Maxpool2dParamsC),
        Maxpool2dParamsC.pool.offset,
    ]
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
    Case("conv_in1_left_shift", Op.CONV2D, (6, 6, 1), 3, pad=1, x_max=8, w_max=4),  # shift > 0
    Case("conv_in1_relu_zp", Op.CONV2D, (6, 8, 1), 4, pad=1, in_zp=-128, out_zp=20, relu=True),
    Case("conv_in1_act_max", Op.CONV2D, (6, 8, 1), 4, pad=1, in_zp=3, act_max=40),
    Case("conv_in1_in_zp_max", Op.CONV2D, (5, 6, 1), 3, pad=1, in_zp=127, out_zp=-100),
    Case("conv_in1_null_bias", Op.CONV2D, (5, 6, 1), 5, pad=1, in_zp=-128, null_bias=True),
    Case("conv_in1_misaligned", Op.CONV2D, (7, 9, 1), 5, pad=1, in_zp=-1, misalign=True),
    Case("conv_in3_stride2_misaligned", Op.CONV2D, (9, 9, 3), 7, stride=2, pad=1, in_zp=-128, misalign=True),
    Case("conv_in3_saturate", Op.CONV2D, (6, 7, 3), 5, pad=1, in_zp=1, rescale=20.0),
]

# (shape, pool, lead): channels % 4 = 0..3, pool 1..3 (2 has its own loop), odd sizes whose last
# row/column is dropped, and input/output one byte past a word boundary (lead = 1).
POOL_CASES = [
    ((4, 4, 3), 2, 0),
    ((5, 7, 2), 2, 0),
    ((6, 6, 1), 3, 0),
    ((3, 3, 5), 1, 0),
    ((8, 8, 16), 2, 0),
    ((7, 9, 8), 3, 0),
    ((6, 10, 4), 2, 1),
    ((5, 5, 7), 2, 1),
    ((9, 9, 6), 3, 1),
    ((28, 28, 16), 2, 0),
    ((14, 14, 32), 2, 1),
]


@pytest.mark.parametrize("case", FC_CASES, ids=lambda c: c.name)
def test_fc_matches_reference(kernels: Kernels, case: Case):
    layer, x = make_layer(case)
    expected = dense_s8(x[None], layer)[0]
    got = kernels.dense(x, layer, null_bias=case.null_bias, lead=int(case.misalign))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv2d_matches_reference(kernels: Kernels, case: Case):
    layer, x = make_layer(case)
    # The clamp is the last step, so a lower top applies on top of the reference's 127.
    expected = np.minimum(conv2d_s8(x[None], layer)[0], case.act_max)
    got = kernels.conv2d(x, layer, null_bias=case.null_bias, lead=int(case.misalign), act_max=case.act_max)
    np.testing.assert_array_equal(got, expected)


def small_cases(op: Op):
    """Dense layers of any shape the kernels accept, for the property tests below."""
    return random_cases(op, max_features=40, max_hw=7, max_in_c=9)


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(case=small_cases(Op.CONV2D))
def test_conv2d_random_shapes(kernels: Kernels, case: Case):
    layer, x = make_layer(case)
    got = kernels.conv2d(x, layer, null_bias=case.null_bias)
    np.testing.assert_array_equal(got, conv2d_s8(x[None], layer)[0])
    params, _call = kernels.conv_params(layer, null_bias=False)
    assert scratch_bytes(layer, "dense", kernels.variant) == kernels.conv_buffer_size(params)


@settings(max_examples=100, derandomize=True, deadline=None, database=None)
@given(case=small_cases(Op.DENSE))
def test_fc_random_shapes(kernels: Kernels, case: Case):
    layer, x = make_layer(case)
    got = kernels.dense(x, layer, null_bias=case.null_bias)
    np.testing.assert_array_equal(got, dense_s8(x[None], layer)[0])


@pytest.mark.parametrize(("shape", "pool", "lead"), POOL_CASES, ids=str)
def test_maxpool2d_matches_reference(kernels: Kernels, shape: tuple[int, int, int], pool: int, lead: int):
    x = np.random.default_rng(sum(shape)).integers(-128, 128, size=shape).astype(np.int8)
    np.testing.assert_array_equal(kernels.maxpool2d(x, pool, lead), maxpool2d(x[None], pool)[0])


@pytest.mark.parametrize("pool", [2, 3])
def test_maxpool2d_extreme_values(kernels: Kernels, pool: int):
    """Byte-wise differences up to 127 - (-128) = 255: the signed compare must not wrap."""
    values = np.array([-128, -127, -1, 0, 1, 126, 127], dtype=np.int8)
    x = np.random.default_rng(pool).choice(values, size=(6, 6, 9)).astype(np.int8)
    np.testing.assert_array_equal(kernels.maxpool2d(x, pool), maxpool2d(x[None], pool)[0])


def _dsp_conv_path(layer: QuantLayer) -> str:
    """Which code path of firmware/kernels/dsp/conv2d_s8_dense.c a layer takes (mirrors the C)."""
    if conv_strip_bytes(layer) is None:
        return "im2col"
    _, k_h, k_w, in_c = layer.weights.shape
    words = (k_h + 1) // 2 * k_w * in_c
    if k_h == 3 and words == 6 and layer.stride * in_c == 1:
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
        "im2col", "strip-pairs", "strip-generic-odd", "strip-generic-even",
        *(f"strip-unrolled-odd-row-{n}" for n in (4, 6, 8)),
        *(f"strip-unrolled-plain-{n}" for n in (2, 4, 6, 8)),
    }  # fmt: skip
    strip = [(c, la) for c, la in conv if _dsp_conv_path(la) != "im2col"]
    assert any(c.misalign for c, la in conv if _dsp_conv_path(la) == "im2col")
    assert any(c.misalign for c, _ in strip)
    assert any(la.out_shape[1] > STRIP_PIXELS for _, la in strip)  # a row in several segments
    assert any(la.out_shape[1] % 2 for c, la in strip if _dsp_conv_path(la) == "strip-pairs")
    assert any(la.shift.max() > 0 for _, la in strip)  # the general requantization loop
    assert any(c.act_max < 127 for c, _ in strip)
    assert any(la.act_min > -128 for _, la in strip)


def test_strip_constants_match_c():
    """kernels.py mirrors the DSP conv's #defines; the scratch sizes depend on them."""
    source = (KERNEL_DIR / "dsp" / "conv2d_s8_dense.c").read_text()
    for name, value in [("STRIP_UNROLL_WORDS", STRIP_UNROLL_WORDS), ("STRIP_MAX_WORDS", STRIP_MAX_WORDS),
                        ("STRIP_PIXELS", STRIP_PIXELS)]:  # fmt: skip
        assert f"#define {name} {value}\n" in source


@pytest.mark.parametrize("case", FC_CASES + CONV_CASES, ids=lambda c: c.name)
def test_scratch_bytes_matches_c(kernels: Kernels, case: Case):
    layer, _ = make_layer(case)
    if case.op is Op.DENSE:
        params, _call = kernels.fc_params(layer, null_bias=False)
        c_size = kernels.fc_buffer_size(params)
    else:
        params, _call = kernels.conv_params(layer, null_bias=False)
        c_size = kernels.conv_buffer_size(params)
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
    header = (INCLUDE_DIR / "mcup_nn.h").read_text()
    assert set(OPS) == set(Op)
    for spec in OPS.values():
        assert f" {spec.function('dense' if spec.weighted else None)}(" in header


# --- cross-compilation for the targets ---------------------------------------------------------

ARM_CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-mthumb"]
M4_FLAGS = ["-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
TARGETS = {  # target -> (cpu flags, variants that must build)
    "m3": (["-mcpu=cortex-m3", "-mfloat-abi=soft"], ("reference",)),
    "m4": (M4_FLAGS, ("reference", "dsp")),
    "m7": (["-mcpu=cortex-m7", "-mfloat-abi=hard", "-mfpu=fpv5-d16"], ("dsp",)),
    "m33": (["-mcpu=cortex-m33", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"], ("dsp",)),
    "m55": (["-mcpu=cortex-m55", "-mfloat-abi=hard"], ("dsp",)),
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
