"""int4 weights: packing and byte accounting, the _s4_ kernels bit-exact vs numpy, cost model, codegen.

The oracle is the same as for the int8 kernels: mcuprune.model.reference on the layer, whose int4
weights are small integers in the same int8 arrays (the arithmetic does not change with the width).
Every int4 kernel (dense conv, depthwise and FC; bitmask, csr8 and csr4 conv and FC) runs the shared
case tables of test_kernels.py, test_sparse.py and test_graph_kernels.py with int4 weights
(kernel_cases.Case(bits=4): values drawn from the whole [-8, 7]), in both variants (the DSP one with
-DMCUP_EMULATE_DSP), through ctypes with canaries around the output and past the scratch.
"""

from __future__ import annotations

import ctypes
import itertools
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from host_c import kernel_library
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import (
    Case,
    KernelLib,
    c_ptr,
    layout_expected,
    layout_source,
    make_layer,
    random_cases,
    struct_of,
)
from test_graph_kernels import DW_CASES
from test_kernels import CONV_CASES as DENSE_CONV_CASES
from test_kernels import FC_CASES as DENSE_FC_CASES
from test_sparse import CONV_CASES as SPARSE_CONV_CASES
from test_sparse import FC_CASES as SPARSE_FC_CASES
from test_sparse import masked_weights

from mcuprune.codegen.emit import c_definitions, generate_model_sources, params_initializer
from mcuprune.errors import UserError
from mcuprune.frontend.tflite import (
    Tensor,
    TensorQuant,
    TfliteGraph,
    export_tflite,
    import_tflite,
    read_tflite,
    write_tflite,
)
from mcuprune.frontend.tflm import run_tflm
from mcuprune.model.costs import (
    choose_format,
    choose_formats,
    cost_key,
    kernel_code_bytes,
    predict_instructions,
)
from mcuprune.model.formats import (
    FORMATS,
    format_bytes,
    layer_bytes,
    pack,
    pack_nibbles,
    unpack,
    unpack_nibbles,
)
from mcuprune.model.int8_params import conv_multipliers
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import RELU, RELU6, FloatLayer, FloatModel, Op, QuantLayer, QuantModel
from mcuprune.model.ops import OPS, VARIANTS, kernel_sources, scratch_bytes
from mcuprune.model.reference import conv2d_s8, dense_s8, depthwise_conv2d_s8
from mcuprune.quantize import quantize_model
from mcuprune.resources import BSP_DIR, INCLUDE_DIR, RUNTIME_DIR

S4_KERNELS = [(op, fmt, 4) for op in (Op.CONV2D, Op.DENSE) for fmt in FORMATS] + [(Op.DEPTHWISE_CONV2D, "dense", 4)]


def s4(case: Case) -> Case:
    return replace(case, name=case.name + "_s4", bits=4)


FC_CASES = [s4(c) for c in DENSE_FC_CASES] + [
    s4(Case("fc_big_odd", Op.DENSE, (1571,), 7, in_zp=-128, out_zp=3, seed=9)),
    s4(Case("fc_in7_misaligned", Op.DENSE, (7,), 5, in_zp=4, misalign=True)),
    s4(Case("fc_in9_odd_rows", Op.DENSE, (9,), 3, in_zp=-2, misalign=True)),
]
CONV_CASES = [s4(c) for c in DENSE_CONV_CASES]
DEPTHWISE_CASES = [s4(c) for c in DW_CASES]
SPARSE_CASES = [s4(c) for c in SPARSE_FC_CASES + SPARSE_CONV_CASES]
REFERENCE = {Op.DENSE: dense_s8, Op.CONV2D: conv2d_s8, Op.DEPTHWISE_CONV2D: depthwise_conv2d_s8}


def _reference(layer: QuantLayer, x: np.ndarray) -> np.ndarray:
    return REFERENCE[layer.op](x[None], layer)[0]


# --- packing and byte accounting ------------------------------------------------------------------


def test_nibble_order_is_tflites():
    """Two per byte, the first in the low nibble, two's complement (TFLM's UnpackDenseInt4IntoInt8)."""
    values = np.array([-8, -1, 0, 7, 3, -5, 1], dtype=np.int8)
    data = pack_nibbles(values)
    assert data.tolist() == [0xF8, 0x70, 0xB3, 0x01]
    assert unpack_nibbles(data, 7).tolist() == values.tolist()
    # TFLM's unpacking of the same bytes: lower = (int8)(b << 4) >> 4, higher = (int8)b >> 4
    signed = data.view(np.int8).astype(np.int64)
    tflm = np.stack([((signed << 4) & 0xFF ^ 0x80) - 0x80 >> 4, signed >> 4], axis=1).ravel()[:7]
    assert tflm.tolist() == values.tolist()


def test_dense_rows_start_on_a_byte():
    w = np.array([[1, 2, 3], [-1, -2, -3]], dtype=np.int8)
    p = pack(w, "dense", 4)
    assert p.weights.dtype == np.uint8
    assert p.weights.tolist() == [0x21, 0x03, 0xEF, 0x0D]  # row 0: 1 2 | 3 pad; row 1: -1 -2 | -3 pad
    assert format_bytes(w, "dense", 4) == 4 == p.nbytes
    even = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    assert pack(even, "dense", 4).weights.tolist() == pack_nibbles(even.ravel()).tolist()  # TFLite's bytes


def test_sparse_values_are_one_nibble_stream():
    w = np.zeros((2, 40), dtype=np.int8)
    w[0, 20], w[1, 0], w[1, 39] = 1, -8, 7
    p4 = pack(w, "csr4", 4)  # entries: filler, 1 | -8, filler, filler, 7 (row 1 starts at entry 2)
    assert p4.row_ptr.tolist() == [0, 2, 6]
    assert p4.values.tolist() == [0x10, 0x08, 0x70]
    assert p4.deltas.tolist() == pack(w, "csr4").deltas.tolist()  # indices as for int8
    bm = pack(w, "bitmask", 4)
    assert bm.values.tolist() == [0x81, 0x07] and bm.mask.tolist() == pack(w, "bitmask").mask.tolist()
    assert pack(w, "csr8", 4).values.tolist() == [0x81, 0x07]


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(w=masked_weights(), fmt=st.sampled_from(FORMATS))
def test_pack_unpack_round_trip_int4(w: np.ndarray, fmt: str):
    w4 = np.clip(w // 16, -8, 7).astype(np.int8)
    packed = pack(w4, fmt, 4)
    np.testing.assert_array_equal(unpack(packed), w4)
    assert packed.nbytes == format_bytes(w4, fmt, 4)
    assert packed.entries == pack(w4, fmt).entries
    for name, array in packed.arrays().items():
        assert array.dtype == (packed.row_ptr.dtype if name == "row_ptr" else np.uint8), name
    int8 = pack(w4, fmt)
    values = "weights" if fmt == "dense" else "values"
    saved = getattr(int8, values).nbytes - getattr(packed, values).nbytes
    assert int8.nbytes - packed.nbytes == saved  # only the values shrink
    assert saved == getattr(int8, values).nbytes // 2 if fmt != "dense" or w4.shape[1] % 2 == 0 else saved >= 0


def test_int4_range_is_checked():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack(np.array([[8, 0]], dtype=np.int8), "dense", 4)
    with pytest.raises(ValueError, match="bits"):
        pack(np.zeros((1, 2), dtype=np.int8), "dense", 3)


@pytest.mark.parametrize("case", SPARSE_CASES[:12] + FC_CASES[:4], ids=lambda c: c.name)
def test_layer_bytes_read_weight_bits(case: Case):
    layer, _ = make_layer(case)
    assert layer.weight_bits == 4
    for fmt in FORMATS:
        packed = pack(layer.weights, fmt, 4)
        assert layer_bytes(layer, fmt) == packed.nbytes + 12 * layer.weights.shape[0]
        assert layer_bytes(layer, fmt) <= layer_bytes(replace(layer, weight_bits=8), fmt)


# --- the kernels ------------------------------------------------------------------------------------


class Int4Kernels(KernelLib):
    def run_layer(self, layer: QuantLayer, x: np.ndarray, fmt: str, null_bias: bool, lead: int = 0) -> np.ndarray:
        arrays = None
        if fmt != "dense":
            arrays = {k: np.ascontiguousarray(a) for k, a in pack(layer.weights, fmt, 4).arrays().items()}
        return self.run(layer, [x], fmt, lead=lead, null_bias=null_bias, weight_arrays=arrays)

    def scratch(self, layer: QuantLayer, fmt: str) -> int:
        arrays = None
        if fmt != "dense":
            arrays = {k: np.ascontiguousarray(a) for k, a in pack(layer.weights, fmt, 4).arrays().items()}
        return self.buffer_size(layer, fmt, arrays)


def _layout_structs() -> list:
    layers = [make_layer(c)[0] for c in (FC_CASES[0], CONV_CASES[0], DEPTHWISE_CASES[0])]
    return [struct_of(la, fmt) for la in layers for fmt in OPS[la.op].formats]


@pytest.fixture(scope="module", params=VARIANTS)
def s4_kernels(request, tmp_path_factory) -> Int4Kernels:
    variant = request.param
    build = tmp_path_factory.mktemp(f"s4_{variant}")
    layout = build / "layout.c"
    layout.write_text(layout_source(_layout_structs(), "mcup_s4_layout"))
    return Int4Kernels(variant, kernel_library(build / f"libmcup_s4_{variant}.so", variant, S4_KERNELS, [layout]))


def test_ctypes_mirrors_match_header(s4_kernels: Int4Kernels):
    expected = layout_expected(_layout_structs())
    layout = (ctypes.c_int32 * len(expected)).in_dll(s4_kernels.lib, "mcup_s4_layout")
    assert list(layout) == expected


@pytest.mark.parametrize("case", FC_CASES + CONV_CASES + DEPTHWISE_CASES, ids=lambda c: c.name)
def test_dense_kernel_matches_reference(s4_kernels: Int4Kernels, case: Case):
    layer, x = make_layer(case)
    got = s4_kernels.run_layer(layer, x, "dense", case.null_bias, lead=int(case.misalign))
    np.testing.assert_array_equal(got, _reference(layer, x))
    assert scratch_bytes(layer, "dense", s4_kernels.variant) == s4_kernels.scratch(layer, "dense")


@pytest.mark.parametrize("fmt", FORMATS[1:])
@pytest.mark.parametrize("case", SPARSE_CASES, ids=lambda c: c.name)
def test_sparse_kernel_matches_reference(s4_kernels: Int4Kernels, case: Case, fmt: str):
    layer, x = make_layer(case)
    got = s4_kernels.run_layer(layer, x, fmt, case.null_bias)
    np.testing.assert_array_equal(got, _reference(layer, x))
    assert scratch_bytes(layer, fmt, s4_kernels.variant) == s4_kernels.scratch(layer, fmt)


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    case=st.sampled_from([Op.DENSE, Op.CONV2D, Op.DEPTHWISE_CONV2D]).flatmap(
        lambda op: random_cases(op, max_features=90, max_hw=7, max_in_c=19, bits=4)
    )
)
def test_dense_kernel_random_shapes(s4_kernels: Int4Kernels, case: Case):
    layer, x = make_layer(case)
    np.testing.assert_array_equal(s4_kernels.run_layer(layer, x, "dense", case.null_bias), _reference(layer, x))
    assert scratch_bytes(layer, "dense", s4_kernels.variant) == s4_kernels.scratch(layer, "dense")


@settings(max_examples=80, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    case=st.sampled_from([Op.DENSE, Op.CONV2D]).flatmap(
        lambda op: random_cases(op, max_features=300, max_hw=6, max_in_c=20,
                                sparsities=[0.0, 0.3, 0.6, 0.85, 0.97, 1.0], bits=4)
    ),
    fmt=st.sampled_from(FORMATS[1:]),
)
def test_sparse_kernel_random_shapes(s4_kernels: Int4Kernels, case: Case, fmt: str):
    layer, x = make_layer(case)
    np.testing.assert_array_equal(s4_kernels.run_layer(layer, x, fmt, case.null_bias), _reference(layer, x))
    assert scratch_bytes(layer, fmt, s4_kernels.variant) == s4_kernels.scratch(layer, fmt)


# --- TFLite export / import, TFLM as the oracle ----------------------------------------------------


def _float_model(weight_bits: dict[str, int]) -> FloatModel:
    """conv 3x3 -> depthwise 3x3 (multiplier 2) -> conv 1x1 -> dense, float weights seeded; the
    layers named in `weight_bits` get that width."""
    rng = np.random.default_rng(7)
    layers = [
        FloatLayer("conv", Op.CONV2D, (8, 8, 3), (8, 8, 6), weights=rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32),
                   bias=rng.normal(0, 0.1, 6).astype(np.float32), padding=(1, 1, 1, 1), clamp=RELU),
        FloatLayer("dw", Op.DEPTHWISE_CONV2D, (8, 8, 6), (4, 4, 12),
                   weights=rng.normal(0, 0.3, (12, 3, 3, 1)).astype(np.float32),
                   bias=rng.normal(0, 0.1, 12).astype(np.float32), stride=(2, 2), padding=(0, 1, 0, 1),
                   depth_multiplier=2, clamp=RELU6),
        FloatLayer("pw", Op.CONV2D, (4, 4, 12), (4, 4, 8), weights=rng.normal(0, 0.3, (8, 1, 1, 12)).astype(np.float32),
                   bias=rng.normal(0, 0.1, 8).astype(np.float32), clamp=RELU),
        FloatLayer("fc", Op.DENSE, (128,), (10,), weights=rng.normal(0, 0.1, (10, 128)).astype(np.float32),
                   bias=rng.normal(0, 0.1, 10).astype(np.float32)),
    ]
    layers = [replace(la, weight_bits=weight_bits.get(la.name, 8)) for la in layers]
    return FloatModel("int4net", (8, 8, 3), 10, tuple(layers))


def _quantized(weight_bits: dict[str, int]) -> tuple[QuantModel, np.ndarray]:
    rng = np.random.default_rng(8)
    calibration = rng.uniform(0, 1, (64, 8, 8, 3)).astype(np.float32)
    model = quantize_model(_float_model(weight_bits), calibration)
    x = rng.integers(-128, 128, (16, 8, 8, 3)).astype(np.int8)
    return model, x


def test_export_int4_runs_in_tflm_like_the_reference():
    """Every weighted layer int4: conv and depthwise as INT4 tensors, the per-channel FC as int8
    values (TFLM runs INT4 FULLY_CONNECTED per tensor only); TFLM == the reference, byte for byte."""
    model, x = _quantized({"conv": 4, "dw": 4, "pw": 4, "fc": 4})
    assert {la.weight_bits for la in model.layers if la.has_weights} == {4}
    assert all(np.abs(la.weights).max() <= 7 for la in model.layers if la.has_weights)
    data = export_tflite(model)
    graph = read_tflite(data)
    types = {t.name: t.dtype for t in graph.tensors if t.name.endswith("/weights")}
    assert types == {"conv/weights": "int4", "dw/weights": "int4", "pw/weights": "int4", "fc/weights": "int8"}
    np.testing.assert_array_equal(run_tflm(data, x), run_s8(model, x).reshape(len(x), -1))
    back = import_tflite(data, "back")
    assert [la.weight_bits for la in back.layers if la.has_weights] == [4, 4, 4, 8]
    for a, b in zip((la for la in model.layers if la.has_weights), (la for la in back.layers if la.has_weights),
                    strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(run_s8(back, x), run_s8(model, x))


def test_export_int4_fc_per_tensor_is_int4():
    """A dense layer whose channels share one scale is written as INT4 per tensor, which TFLM runs."""
    model, x = _quantized({"fc": 4})
    fc = model.layers[-1]
    scale = np.float32(fc.weight_scales.max())
    weights = np.clip(np.round(fc.weights * (fc.weight_scales / scale)[:, None]), -7, 7).astype(np.int8)
    multiplier, shift = conv_multipliers(fc.input_q.scale, np.full(10, scale, np.float32), fc.output_q.scale, 10)
    bias = np.round(fc.bias * fc.weight_scales / scale).astype(np.int32)
    fc = replace(fc, weights=weights, weight_scales=np.full(10, scale, np.float32), multiplier=multiplier,
                 shift=shift, bias=bias)
    model = replace(model, layers=(*model.layers[:-1], fc))
    data = export_tflite(model)
    assert {t.name: t.dtype for t in read_tflite(data).tensors}["fc/weights"] == "int4"
    np.testing.assert_array_equal(run_tflm(data, x), run_s8(model, x).reshape(len(x), -1))
    back = import_tflite(data, "back")
    assert back.layers[-1].weight_bits == 4
    np.testing.assert_array_equal(run_s8(back, x), run_s8(model, x))


def test_int4_tensor_bytes_are_tflites():
    """The writer packs int4 tensors over the flattened tensor, low nibble first; the reader inverts it."""
    t = Tensor("w", (3, 1, 1, 3), "int4", TensorQuant(np.ones(3, np.float32), 0),
               np.arange(-4, 5, dtype=np.int8).reshape(3, 1, 1, 3))
    g = TfliteGraph([Tensor("x", (1, 2, 2, 3), "int8", TensorQuant(np.float32(1.0), 0)), t], [], [0], [0])
    back = read_tflite(write_tflite(g))
    np.testing.assert_array_equal(back.tensors[1].data, t.data)
    assert back.tensors[1].dtype == "int4"


# --- cost model and format choice -------------------------------------------------------------------


def _fc(sparsity: float, bits: int = 4, seed: int = 0) -> QuantLayer:
    return make_layer(Case("fc", Op.DENSE, (1568,), 64, sparsity=sparsity, in_zp=-128, seed=seed, bits=bits))[0]


def test_cost_keys_and_predictions_take_the_width():
    assert cost_key(Op.CONV2D, "csr4", "dsp", "cortex-m4", 4) == "conv2d/s4_csr4/dsp/cortex-m4"
    layer = _fc(0.0)
    for variant in VARIANTS:
        s4_pred = predict_instructions(layer, "dense", variant)
        s8_pred = predict_instructions(replace(layer, weight_bits=8), "dense", variant)
        assert s4_pred > 0 and s8_pred > 0 and s4_pred != s8_pred
    assert kernel_code_bytes(Op.DENSE, "dense", "dsp", bits=4) != kernel_code_bytes(Op.DENSE, "dense", "dsp")
    with pytest.raises(ValueError, match="bits"):
        cost_key(Op.DENSE, "dense", "dsp", "cortex-m4", 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_choose_format_picks_among_the_layers_own_width(variant: str):
    for sparsity in (0.0, 0.5, 0.8, 0.9, 0.95):
        layer = _fc(sparsity)
        fmt = choose_format(layer, variant)
        assert predict_instructions(layer, fmt, variant) <= predict_instructions(layer, "dense", variant)
        assert layer_bytes(layer, fmt) <= layer_bytes(layer, "dense")
        smallest = choose_format(layer, variant, "smallest")
        assert format_bytes(layer.weights, smallest, 4) == min(format_bytes(layer.weights, f, 4) for f in FORMATS)
    assert choose_format(_fc(0.0), variant) == "dense"
    assert choose_format(_fc(0.95), variant) != "dense"


def test_choose_formats_weighs_each_width_apart():
    """An int8 and an int4 layer of one op use different kernels: each width's code is counted for
    its own layers, and each layer takes a format of its own width."""
    int8_big, int4_big = _fc(0.9, bits=8), replace(_fc(0.9, seed=1), name="fc4")
    tiny4 = replace(make_layer(Case("tiny", Op.DENSE, (24,), 4, sparsity=0.5, bits=4))[0], name="tiny4")
    conv4 = make_layer(Case("conv4", Op.CONV2D, (14, 14, 16), 32, sparsity=0.95, pad=1, in_zp=-128, bits=4))[0]
    layers = [int8_big, int4_big, tiny4, conv4]
    got = choose_formats(layers, "dsp", "smallest")
    assert set(got) == {"fc", "fc4", "tiny4", "conv4"}

    def total(picks: dict[str, str]) -> int:
        kernels = {(la.op, picks[la.name], la.weight_bits) for la in layers}
        return sum(layer_bytes(la, picks[la.name]) for la in layers) + sum(
            kernel_code_bytes(op, fmt, "dsp", bits=bits) for op, fmt, bits in kernels)

    best = min(total(dict(zip(got, combo, strict=True))) for combo in itertools.product(FORMATS, repeat=len(got)))
    assert total(got) == best
    fastest = choose_formats(layers, "dsp")
    for layer in layers:
        assert predict_instructions(layer, fastest[layer.name], "dsp") <= predict_instructions(layer, "dense", "dsp")


# --- code generation ----------------------------------------------------------------------------------


EMIT_CASES = [(Op.DENSE, fmt) for fmt in FORMATS] + [(Op.CONV2D, fmt) for fmt in FORMATS] + [
    (Op.DEPTHWISE_CONV2D, "dense")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("op", "fmt"), EMIT_CASES, ids=str)
def test_emitted_c_runs_bit_exact(tmp_path: Path, op: Op, fmt: str, variant: str):
    """c_definitions + params_initializer give int4 arrays and a struct the int4 kernel runs."""
    case = {Op.DENSE: FC_CASES[-1], Op.CONV2D: s4(SPARSE_CONV_CASES[9]), Op.DEPTHWISE_CONV2D: DEPTHWISE_CASES[3]}[op]
    layer, x = make_layer(case)
    packed = pack(layer.weights, fmt, 4)
    prefix = f"mcup_param_{layer.name}"
    quant = "".join(f"const int32_t {prefix}_{name}[] = {{{', '.join(str(int(v)) for v in getattr(layer, name))}}};\n"
                    for name in ("bias", "multiplier", "shift"))  # fmt: skip
    definitions = c_definitions(layer.name, packed)
    assert "const int8_t" not in definitions  # every int4 weight array is bytes of nibbles
    function = OPS[op].function(fmt, 4)
    source = ('#include <stddef.h>\n#include "mcup_nn.h"\n#include "mcup_sparse.h"\n\n' + definitions + quant
              + f"static const {OPS[op].struct(fmt, 4)} layer = {params_initializer(layer, fmt)};\n"
              f"int32_t scratch_size(void) {{ return {function}_get_buffer_size(&layer); }}\n"
              f"void run(const int8_t *in, int8_t *out, void *s) {{ {function}(&layer, in, out, s); }}\n")  # fmt: skip
    (tmp_path / "model.c").write_text(source)
    lib = kernel_library(tmp_path / "libmodel.so", variant, [(op, fmt, 4)], [tmp_path / "model.c"])
    lib.scratch_size.restype = ctypes.c_int32
    assert lib.scratch_size() == scratch_bytes(layer, fmt, variant)
    scratch = np.zeros(lib.scratch_size() // 4 + 1, dtype=np.uint32)
    out = np.zeros(int(np.prod(layer.out_shape)), dtype=np.int8)
    lib.run(c_ptr(x.ravel(), ctypes.c_int8), c_ptr(out, ctypes.c_int8), ctypes.c_void_p(scratch.ctypes.data))
    np.testing.assert_array_equal(out.reshape(layer.out_shape), _reference(layer, x))


def test_generated_sources_name_the_int4_kernels(tmp_path: Path):
    model, _ = _quantized({"conv": 4, "dw": 4, "fc": 4})
    gen = generate_model_sources(model, "dsp", tmp_path / "src")
    c = (tmp_path / "src" / "model.c").read_text()
    data = (tmp_path / "src" / "model_data.c").read_text()
    assert "static const mcup_conv2d_s4_params mcup_layer_conv" in c and "mcup_conv2d_s4_dense(&mcup_layer_conv" in c
    assert "mcup_depthwise_conv2d_s4_dense(&mcup_layer_dw" in c and "mcup_fc_s4_dense(&mcup_layer_fc" in c
    assert "mcup_conv2d_s8_dense(&mcup_layer_pw" in c  # the int8 layer keeps its kernel
    assert "const uint8_t mcup_param_conv_weights[" in data and "const int8_t mcup_param_pw_weights[" in data
    # every emitted byte counted: the arrays are exactly what layer_bytes says
    for layer in (la for la in model.layers if la.has_weights):
        emitted = sum(a.nbytes for a in gen.arrays if a.name.startswith(f"mcup_param_{layer.name}_"))
        assert emitted == layer_bytes(layer, gen.formats[layer.name])
    names = {p.name for p in gen.kernel_sources(model, "dsp")}
    assert {"conv2d_s4_dense.c", "conv2d_s8_dense.c", "depthwise_conv2d_s4_dense.c", "fc_s4_dense.c"} <= names
    for name in ("model.c", "model_data.c"):
        subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-std=c11", "-O2", "-Wall", "-Wextra",
                        "-Werror", "-c", f"-I{tmp_path / 'src'}", f"-I{INCLUDE_DIR}", f"-I{BSP_DIR}",
                        f"-I{RUNTIME_DIR}", str(tmp_path / "src" / name), "-o", str(tmp_path / f"{name}.o")],
                       check=True)  # fmt: skip


def test_codegen_refuses_bad_widths(tmp_path: Path):
    model, _ = _quantized({"conv": 4})
    conv = model.layers[0]
    with pytest.raises(UserError, match="outside \\[-8, 7\\]"):
        generate_model_sources(replace(model, layers=(replace(conv, weights=conv.weights * 2), *model.layers[1:])),
                               "dsp", tmp_path)
    with pytest.raises(UserError, match="2-bit weights"):
        generate_model_sources(replace(model, layers=(replace(conv, weight_bits=2), *model.layers[1:])), "dsp",
                               tmp_path)


def test_tvm_backend_refuses_int4_layers():
    from mcuprune.codegen.tvm_backend import kernel_for

    model, _ = _quantized({"fc": 4})
    with pytest.raises(UserError, match="4-bit weights; the tvm kernel backend runs int8 weights only"):
        kernel_for(model.layers[-1])


# --- on the device -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_int4(digits_run, tmp_path_factory: pytest.TempPathFactory) -> QuantModel:
    """The digits CNN, half of every layer's smallest weights zeroed (no fine-tuning: more costs the
    untuned model its accuracy), quantized with int4 weights in its two conv layers and its first
    dense layer (the classifier stays int8: a model of both widths)."""
    import torch

    from mcuprune.quantize import quantize_image_model
    from mcuprune.target.compile import quantize_run
    from mcuprune.train.training import _weight_modules, load_float_model, load_torch_model, save_run

    run_dir, dataset = digits_run
    net, meta, _ = load_torch_model(run_dir)
    masks = []
    with torch.no_grad():
        for module in _weight_modules(net):
            w = module.weight.numpy()
            mask = np.abs(w) > np.quantile(np.abs(w), 0.5)
            module.weight.mul_(torch.from_numpy(mask).float())
            masks.append(mask)
    masked = tmp_path_factory.mktemp("digits-int4")
    save_run(masked, net, meta, masks)
    float_model, _ = load_float_model(masked)
    weighted = [la.name for la in float_model.layers if la.weights is not None]
    layers = tuple(replace(la, weight_bits=4) if la.name in weighted[:-1] else la for la in float_model.layers)
    return quantize_image_model(replace(float_model, layers=layers), dataset.x_train, quantize_run(masked).meta)


@pytest.mark.qemu
@pytest.mark.parametrize("board, kernels, objective", [
    ("mps2-an386", "dsp", "fastest"),
    ("mps2-an386", "dsp", "smallest"),
    ("mps2-an385", "reference", "fastest"),
    ("mps2-an385", "reference", "smallest"),
])  # fmt: skip
def test_int4_model_bit_exact_on_device(digits_int4: QuantModel, tmp_path: Path, board: str, kernels: str,
                                        objective: str):
    from mcuprune.device.evaluate import evaluate_firmware
    from mcuprune.target.board import load_board
    from mcuprune.target.compile import compile_model

    model = digits_int4
    assert [la.weight_bits for la in model.layers if la.has_weights] == [4, 4, 4, 8]
    result = compile_model(model, load_board(board), tmp_path / "fw", kernels, objective=objective)
    formats = result.generated.formats
    if objective == "smallest":  # the big int4 layers go sparse (a tiny one may not pay for a kernel)
        assert formats["conv2d2"] != "dense" and formats["dense4"] != "dense", formats
    assert result.build.model_flash_bytes == result.generated.param_bytes == sum(
        layer_bytes(la, formats[la.name]) for la in model.layers if la.has_weights)
    int8 = replace(model, layers=tuple(replace(la, weight_bits=8) for la in model.layers))
    assert result.generated.param_bytes < sum(layer_bytes(la, formats[la.name]) for la in int8.layers
                                              if la.has_weights)  # fmt: skip
    evaluation = evaluate_firmware(tmp_path / "fw", progress=False, transport="semihosting", oracle="tflm")
    assert evaluation.samples == 359
    assert evaluation.mismatches == 0 and evaluation.tflm_mismatches == 0
    assert evaluation.device_accuracy == evaluation.reference_accuracy >= 0.8  # the float model: 0.88


@pytest.mark.qemu
def test_int4_blob_firmware_boots_and_takes_an_int4_update(digits_int4: QuantModel, digits_run, tmp_path: Path):
    """--params blob with int4 layers: the factory blob binds (its packed arrays checked by
    bind_check.c at 4 bits) and serves the reference's logits; an update blob of the same
    architecture, streamed over the UART, binds and serves its own."""
    from mcuprune.codegen.blob import parse_header
    from mcuprune.controller.drift_qsae import build_monitor_model
    from mcuprune.device.powercut import perturbed_model
    from mcuprune.device.qemu import QemuDevice
    from mcuprune.device.update import stream_update
    from mcuprune.target.board import load_board
    from mcuprune.target.compile import compile_model, load_firmware_dir

    _, dataset = digits_run
    model = digits_int4
    monitor = build_monitor_model(model, dataset.x_train)
    compile_model(model, load_board("mps2-an386"), tmp_path / "fw", "dsp", objective="smallest", params="blob",
                  monitor=monitor)
    fw = load_firmware_dir(tmp_path / "fw")
    x = np.random.default_rng(3).integers(-128, 128, (6, *model.input_shape), dtype=np.int8)
    update = perturbed_model(model, 0.5)
    assert all(np.abs(la.weights).max() <= 7 for la in update.layers if la.has_weights and la.weight_bits == 4)
    blob = fw.update_blob(update, fw.monitor)
    with QemuDevice(fw.board, fw.elf, memory_file=tmp_path / "slots.mem") as device:
        got = np.stack([r.logits for r in device.infer_many(list(x))])
        np.testing.assert_array_equal(got, run_s8(model, x))
        stream_update(device.device, blob)
        assert device.info().active_blob_id == parse_header(blob).blob_id
        got = np.stack([r.logits for r in device.infer_many(list(x))])
        np.testing.assert_array_equal(got, run_s8(update, x))
        assert (got != run_s8(model, x)).any()


def test_int4_kernels_are_declared_and_have_both_twins():
    """Every (op, format) with int4 weights: its function, _get_buffer_size and struct declared
    (mcup_nn.h for dense, mcup_sparse.h otherwise), a reference file and a DSP twin."""
    headers = {"dense": (INCLUDE_DIR / "mcup_nn.h").read_text(), "sparse": (INCLUDE_DIR / "mcup_sparse.h").read_text()}
    for op, fmt, bits in S4_KERNELS:
        spec = OPS[op]
        header = headers["dense" if fmt == "dense" else "sparse"]
        assert f" {spec.function(fmt, bits)}(" in header
        assert f" {spec.function(fmt, bits)}_get_buffer_size(" in header
        assert f"}} {spec.struct(fmt, bits)};" in header
        for variant in VARIANTS:
            (path,) = kernel_sources(variant, [(op, fmt, bits)])
            assert path.parent.name == variant and path.name == spec.source(fmt, bits)
