"""The .tflite frontend: MLPerf Tiny models imported bit-exact with TFLite Micro, export round trips,
and a one-line UserError for every kind of file mcuprune cannot take.

The MLPerf Tiny models live beside the repository (``shared/models/mlperf-tiny``); their tests skip,
saying so, only when that folder is absent. Every imported model runs through a small graph walker
here (each layer's reference function on its inputs, by name) -- not through the interpreter module.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from test_reference_tflm import (
    CASES,
    Builder,
    Case,
    build_add,
    build_conv,
    build_float_io,
    sample_inputs,
    tflm_tensors,
    tq,
)
from tflite_micro.python.tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from mcuprune.errors import UserError
from mcuprune.frontend.tflite import TfliteGraph, export_tflite, import_tflite, read_tflite, write_tflite
from mcuprune.model import reference
from mcuprune.model.ir import INPUT, Op, QuantModel

MLPERF_DIR = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"
MLPERF_MODELS = ["pretrainedResnet_quant", "kws_ref_model", "vww_96_int8", "ad01_int8"]
N_INPUTS = 64


def mlperf(name: str) -> bytes:
    if not MLPERF_DIR.is_dir():
        pytest.skip(f"{MLPERF_DIR} is absent: the MLPerf Tiny models are not checked out beside the repository")
    return (MLPERF_DIR / f"{name}.tflite").read_bytes()


def run_reference(model: QuantModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's int8 reference function on its inputs, by name; returns every tensor."""
    values = {INPUT: x}
    for layer in model.layers:
        args = [values[name] for name in layer.inputs]
        values[layer.name] = getattr(reference, f"{layer.op.value}_s8")(args[0], layer, *args[1:])
    return values


def mlperf_inputs(model: QuantModel, seed: int, n: int = N_INPUTS) -> np.ndarray:
    """Seeded int8 inputs across the whole range: both extremes, the zero point, uniform noise,
    noise around the zero point, large Gaussians, smooth waves, sparse spikes and random sub-ranges."""
    rng = np.random.default_rng(seed)
    shape, zp = model.input_shape, model.input_q.zero_point
    x = np.empty((n, *shape), np.int64)
    x[0], x[1], x[2] = -128, 127, zp
    x[3:6] = rng.integers(-128, 128, (3, *shape))
    x[6:9] = np.rint(rng.normal(zp, 4, (3, *shape)))
    x[9:12] = np.rint(rng.normal(0, 100, (3, *shape)))
    ramp = np.linspace(0, 1, int(np.prod(shape))).reshape(shape)
    for i in range(12, 15):
        x[i] = np.rint(127.5 * np.sin(2 * np.pi * (i - 10) * ramp + rng.uniform(0, 2 * np.pi)) - 0.5)
    for i in range(15, 18):
        x[i] = np.where(rng.random(shape) < 0.05, rng.choice([-128, 127], shape), zp)
    for i in range(18, n):
        lo = int(rng.integers(-128, 100))
        x[i] = rng.integers(lo, int(rng.integers(lo + 1, 128)) + 1, shape)
    return np.clip(x, -128, 127).astype(np.int8)


def tflm_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = runtime.Interpreter.from_bytes(data, arena_size=8 << 20)
    shape = tuple(interpreter.get_input_details(0)["shape"])
    out = []
    for sample in x:
        interpreter.set_input(np.ascontiguousarray(sample).reshape(shape), 0)
        interpreter.invoke()
        out.append(np.array(interpreter.get_output(0), copy=True).reshape(-1))
    return np.stack(out)


def assert_same_model(a: QuantModel, b: QuantModel) -> None:
    """Same structure and the same integers (scales compare as the float32 values they are)."""
    assert (a.name, a.input_shape, a.input_q, a.num_classes) == (b.name, b.input_shape, b.input_q, b.num_classes)
    assert {k: v for k, v in a.meta.items() if k != "tflite_tensors"} == \
        {k: v for k, v in b.meta.items() if k != "tflite_tensors"}
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers, strict=True):
        for f in fields(la):
            va, vb = getattr(la, f.name), getattr(lb, f.name)
            if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
                assert va.dtype == vb.dtype and np.array_equal(va, vb), (la.name, f.name)
            else:
                assert va == vb, (la.name, f.name, va, vb)


# --- the MLPerf Tiny models -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MLPERF_MODELS)
def test_mlperf_every_tensor_matches_tflm(name: str) -> None:
    data = mlperf(name)
    model = import_tflite(data, name)
    graph = read_tflite(data)
    assert model.meta["float_input"] is False and model.meta["float_output"] is False
    assert model.num_classes == int(np.prod(graph.tensors[graph.outputs[0]].shape))
    for layer in model.layers:  # per-tensor FC weights arrive as per-channel arrays of one scale
        if layer.op is Op.DENSE:
            assert np.all(layer.weight_scales == layer.weight_scales[0]) and layer.weight_scales.dtype == np.float32
    x = mlperf_inputs(model, zlib.crc32(name.encode()))
    expected = run_reference(model, x)
    tflm = tflm_tensors(data, graph, model, x)
    mismatches = []
    for layer in model.layers:
        got, want = tflm[layer.name].reshape(-1), expected[layer.name].reshape(-1)
        if not np.array_equal(got, want):
            mismatches.append(f"{layer.name}: {int(np.sum(got != want))} of {want.size} differ")
    assert not mismatches, mismatches
    assert np.array_equal(tflm["<graph output>"].reshape(-1), expected[model.layers[-1].name].reshape(-1))


@pytest.mark.parametrize("name", MLPERF_MODELS)
def test_mlperf_export_round_trip(name: str) -> None:
    model = import_tflite(mlperf(name), name)
    exported = export_tflite(model)
    assert_same_model(model, import_tflite(exported, name))
    x = mlperf_inputs(model, 1, n=24)
    want = run_reference(model, x)[model.layers[-1].name].reshape(len(x), -1)
    assert np.array_equal(tflm_outputs(exported, x), want)


# --- export round trips of every single-operator case ------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_round_trip(case: Case) -> None:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()) + 1)
    graph = case.build(rng)
    model = import_tflite(write_tflite(graph), case.id)
    exported = export_tflite(model)
    again = import_tflite(exported, case.id)
    assert_same_model(model, again)
    x = sample_inputs(rng, graph, 3)
    values = run_reference(model, reference.quantize_input(x, model.input_q) if model.meta["float_input"] else x)
    y = values[model.layers[-1].name]
    if model.meta["float_output"]:
        y = reference.dequantize_output(y, model.output_q)
    tflm = tflm_tensors(exported, read_tflite(exported), again, x)["<graph output>"]
    assert np.array_equal(tflm.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8))


def test_float_boundary_is_recorded() -> None:
    model = import_tflite(write_tflite(build_float_io(np.random.default_rng(0), (1 / 255, -128), (0.05, -3))), "f")
    assert model.meta["float_input"] and model.meta["float_output"]
    assert model.input_q.scale == float(np.float32(1 / 255)) and model.output_q.zero_point == -3
    assert [layer.op for layer in model.layers] == [Op.CONV2D] and model.layers[0].inputs == (INPUT,)


def test_export_writes_pruned_weights_as_zeros() -> None:
    model = import_tflite(write_tflite(build_conv(np.random.default_rng(2), (6, 6), 3, 4, (3, 3))), "p")
    conv = model.layers[0]
    mask = np.random.default_rng(3).random(conv.weights.shape) < 0.3
    pruned = replace(model, layers=(replace(conv, weights=np.where(mask, conv.weights, 0).astype(np.int8),
                                            mask=mask),))
    exported = export_tflite(pruned)
    assert np.array_equal(import_tflite(exported, "p").layers[0].weights, pruned.layers[0].weights)
    x = np.random.default_rng(4).integers(-128, 128, (4, 6, 6, 3), dtype=np.int8)
    assert np.array_equal(tflm_outputs(exported, x), reference.conv2d_s8(x, pruned.layers[0]).reshape(4, -1))


# --- files mcuprune refuses, each with one line that names the problem ------------------------------------


def conv_graph(**kw: object) -> Builder:
    """A 6x6x2 -> 3-channel conv as a Builder, to break in one place."""
    graph = build_conv(np.random.default_rng(0), (6, 6), 2, 3, (3, 3), **kw)
    return Builder(graph.tensors, graph.operators)


def good_bytes() -> bytes:
    return write_tflite(conv_graph().graph())


def two_subgraphs() -> bytes:
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(good_bytes(), 0))
    model.subgraphs.append(model.subgraphs[0])
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def retyped(dtype: str) -> bytes:
    g = conv_graph()
    for i in (0, len(g.tensors) - 1):  # the input and the output
        g.tensors[i].dtype = dtype
        if dtype == "float32":
            g.tensors[i].quant = None
    return write_tflite(g.graph())


def with_op(name: str, options: dict | None = None) -> bytes:
    g = conv_graph()
    y = g.ops[-1].outputs[0]
    g.op(name, [y], g.tensors[y].shape, tq(1 / 128, 0), **(options or {}))
    return write_tflite(g.graph())


def conv_with_activation(act: str) -> bytes:
    return write_tflite(conv_graph(act=act).graph())


def fc_weight_zero_point() -> bytes:
    g = Builder()
    x = g.tensor((1, 8), tq(0.05, 1))
    w = g.tensor((5, 8), tq(0.01, 7), data=np.ones((5, 8), np.int8))
    g.op("FULLY_CONNECTED", [x, w, -1], (1, 5), tq(0.1, -2))
    return write_tflite(g.graph())


def mean_axes(axes: tuple[int, ...]) -> bytes:
    g = Builder()
    x = g.tensor((1, 4, 4, 3), tq(0.05, 1))
    a = g.tensor((len(axes),), None, "int32", np.array(axes, np.int32))
    g.op("MEAN", [x, a], (1, 4, 4, 1), tq(0.05, 1), keep_dims=True)
    return write_tflite(g.graph())


def pad_channels() -> bytes:
    g = Builder()
    x = g.tensor((1, 4, 4, 3), tq(0.05, 1))
    p = g.tensor((4, 2), None, "int32", np.array([[0, 0], [1, 1], [1, 1], [0, 1]], np.int32))
    g.op("PAD", [x, p], (1, 6, 6, 4), tq(0.05, 1))
    return write_tflite(g.graph())


def internal_dequantize() -> bytes:
    g = conv_graph()
    y = g.ops[-1].outputs[0]
    f = g.op("DEQUANTIZE", [y], g.tensors[y].shape, None, "float32")
    g.op("QUANTIZE", [f], g.tensors[y].shape, tq(0.1, 0))
    return write_tflite(g.graph())


def batch_two() -> bytes:
    g = conv_graph()
    for t in (g.tensors[0], g.tensors[-1]):
        t.shape = (2, *t.shape[1:])
    return write_tflite(g.graph())


BAD_FILES = [
    ("empty", lambda: b"", "only 0 bytes"),
    ("truncated", lambda: good_bytes()[: len(good_bytes()) // 3], "truncated"),
    ("not_a_flatbuffer", lambda: b"this is a text file, not a model at all", "not a .tflite flatbuffer"),
    ("two_subgraphs", two_subgraphs, "2 subgraphs"),
    ("float_model", lambda: retyped("float32"), "float model"),
    ("int16_activations", lambda: retyped("int16"), "int16 activations"),
    ("unsupported_operator", lambda: with_op("TANH"), "(TANH, output tensor 't4'): this operator is not supported; "
                                                     "supported operators: CONV_2D"),
    ("fused_tanh", lambda: conv_with_activation("TANH"), "fused activation TANH is not supported"),
    ("fc_weight_zero_point", fc_weight_zero_point, "per-tensor weights with zero point 7"),
    ("mean_over_channels", lambda: mean_axes((3,)), "mean over axes [3]"),
    ("pad_channels", pad_channels, "pad the batch or channel axis"),
    ("internal_quantize", lambda: with_op("QUANTIZE"), "QUANTIZE inside the model"),
    ("internal_dequantize", internal_dequantize, "DEQUANTIZE inside the model"),
    ("batch_two", batch_two, "not a batch of 1"),
]


@pytest.mark.parametrize(("data", "fragment"), [(b, f) for _, b, f in BAD_FILES], ids=[i for i, _, _ in BAD_FILES])
def test_import_refuses_with_one_line(data: Callable[[], bytes], fragment: str) -> None:
    with pytest.raises(UserError) as err:
        import_tflite(data(), "bad")
    message = str(err.value)
    assert "\n" not in message and message.startswith("bad"), message
    assert fragment in message, message


def test_export_refuses_what_tflite_cannot_say() -> None:
    model = import_tflite(good_bytes(), "m")
    conv = model.layers[0]
    cases = [
        (replace(conv, act_min=-50), "none of TFLite's fused activations"),
        (replace(conv, multiplier=conv.multiplier + 1), "TFLM derives"),
    ]
    for layer, fragment in cases:
        with pytest.raises(UserError) as err:
            export_tflite(replace(model, layers=(layer,)))
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
    s32 = conv.input_q.scale  # a float64 scale the file cannot hold (it rounds to the same float32)
    f64 = replace(conv.input_q, scale=float(np.nextafter(s32, 1.0)))
    assert float(np.float32(f64.scale)) == s32 != f64.scale
    with pytest.raises(UserError, match="is not a float32 value"):
        export_tflite(replace(model, input_q=f64, layers=(replace(conv, input_q=f64),)))
    pool = import_tflite(write_tflite(_pool_graph()), "p")
    odd = replace(pool.layers[0], padding=(1, 0, 0, 0))
    with pytest.raises(UserError, match="neither TFLite SAME nor VALID"):
        export_tflite(replace(pool, layers=(odd,)))


def _pool_graph() -> TfliteGraph:
    g = Builder()
    x = g.tensor((1, 6, 6, 2), tq(0.05, 1))
    g.op("MAX_POOL_2D", [x], (1, 3, 3, 2), tq(0.05, 1), padding="VALID", stride_h=2, stride_w=2,
         filter_height=2, filter_width=2)
    return g.graph()


def test_corrupt_files_raise_only_user_errors() -> None:
    """Truncations and random byte changes either import or give a one-line UserError, nothing else."""
    good = write_tflite(build_add(np.random.default_rng(0), (5, 6), 4, (0.05, -3), (0.1, 7), (0.12, -1), "RELU"))
    rng = np.random.default_rng(8)
    for trial in range(300):
        data = bytearray(good)
        if trial % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for pos in rng.integers(0, len(data), int(rng.integers(1, 12))):
                data[int(pos)] = int(rng.integers(0, 256))
        try:
            import_tflite(bytes(data), "fuzz")
        except UserError as err:
            assert "\n" not in str(err)
