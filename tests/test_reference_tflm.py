"""The int8 reference functions against TFLite Micro's interpreter, one operator at a time.

Every case builds a small .tflite (one operator, or the operator and what feeds it) with the
frontend's writer, imports it with ``import_tflite`` -- so the layer carries the integers the
importer derives, exactly as a real model's would -- runs seeded int8 inputs through TFLM with
every tensor preserved, and checks each imported layer: ``reference.<op>_s8`` on the tensors TFLM
fed the operator must equal, element for element, the tensor TFLM produced. One table, one test body.

The float references have no bit-exact oracle; they are checked against direct loops at the end.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pytest
from tflite_micro.python.tflite_micro import runtime

from mcuprune.frontend.tflite import Operator, Tensor, TensorQuant, TfliteGraph, import_tflite, write_tflite
from mcuprune.model import reference
from mcuprune.model.ir import INPUT, FloatLayer, Op, QParams, QuantModel, conv_out_hw, same_padding

# --- building small graphs ------------------------------------------------------------------------------


def tq(scale: float | np.ndarray, zero_point: int = 0, dim: int = 0) -> TensorQuant:
    return TensorQuant(np.asarray(scale, np.float32), np.asarray(zero_point), dim)


@dataclass
class Builder:
    """Tensors and operators of a test graph; the first activation added is the model input."""

    tensors: list[Tensor] = field(default_factory=list)
    ops: list[Operator] = field(default_factory=list)

    def tensor(self, shape: tuple[int, ...], quant: TensorQuant | None, dtype: str = "int8",
               data: np.ndarray | None = None) -> int:
        self.tensors.append(Tensor(f"t{len(self.tensors)}", tuple(shape), dtype, quant, data))
        return len(self.tensors) - 1

    def op(self, name: str, ins: list[int], out_shape: tuple[int, ...], out_q: TensorQuant | None,
           dtype: str = "int8", **options: object) -> int:
        y = self.tensor(out_shape, out_q, dtype)
        self.ops.append(Operator(name, ins, [y], dict(options)))
        return y

    def graph(self) -> TfliteGraph:
        return TfliteGraph(self.tensors, self.ops, [0], [self.ops[-1].outputs[0]])


def effective_scales(rng: np.random.Generator, n: int, in_s: float, out_s: float, lo: float, hi: float) -> np.ndarray:
    """Weight scales whose multipliers in_s * w_s / out_s are log-uniform in [lo, hi] (both shift signs)."""
    return (np.exp(rng.uniform(math.log(lo), math.log(hi), n)) * out_s / in_s).astype(np.float32)


def out_hw(hw: tuple[int, int], k: tuple[int, int], stride: tuple[int, int], padding: str,
           dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    pads = same_padding(*hw, *k, stride, dilation) if padding == "SAME" else (0, 0, 0, 0)
    return conv_out_hw(*hw, *k, stride, pads, dilation)


def build_conv(rng: np.random.Generator, hw: tuple[int, int], cin: int, cout: int, k: tuple[int, int],
               stride: tuple[int, int] = (1, 1), padding: str = "SAME", dilation: tuple[int, int] = (1, 1),
               act: str = "NONE", in_q: tuple[float, int] = (0.05, -3), out_q: tuple[float, int] = (0.1, 5),
               eff: tuple[float, float] = (1e-3, 0.5), bias: bool = True, per_channel: bool = True,
               depthwise: bool = False, pre_pad: tuple[int, int, int, int] | None = None,
               int4: bool = False) -> TfliteGraph:
    """CONV_2D or DEPTHWISE_CONV_2D (cout = cin * multiplier), optionally after a PAD of (t, b, l, r);
    `int4`: INT4 weights in [-8, 7] (packed two per byte by the writer)."""
    g = Builder()
    x = g.tensor((1, *hw, cin), tq(*in_q))
    if pre_pad is not None:
        t, b, left, right = pre_pad
        pads = np.array([[0, 0], [t, b], [left, right], [0, 0]], np.int32)
        hw = (hw[0] + t + b, hw[1] + left + right)
        x = g.op("PAD", [x, g.tensor((4, 2), None, "int32", pads)], (1, *hw, cin), tq(*in_q))
    scales = effective_scales(rng, cout if per_channel else 1, in_q[0], out_q[0], *eff)
    shape = (1, *k, cout) if depthwise else (cout, *k, cin)
    w = g.tensor(shape, tq(scales, 0, 3 if depthwise else 0), "int4" if int4 else "int8",
                 rng.integers(-8, 8, shape, dtype=np.int8) if int4 else rng.integers(-127, 128, shape, dtype=np.int8))
    b = -1
    if bias:
        bias_scales = np.broadcast_to(scales, (cout,)) * np.float32(in_q[0])
        b = g.tensor((cout,), tq(bias_scales), "int32", rng.integers(-5000, 5000, cout).astype(np.int32))
    options = dict(padding=padding, stride_h=stride[0], stride_w=stride[1], dilation_h_factor=dilation[0],
                   dilation_w_factor=dilation[1], fused_activation_function=act)
    if depthwise:
        options["depth_multiplier"] = cout // cin
    g.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [x, w, b], (1, *out_hw(hw, k, stride, padding, dilation),
         cout), tq(*out_q), **options)
    return g.graph()


def build_dense(rng: np.random.Generator, in_shape: tuple[int, ...], out: int, per_channel: bool = True,
                bias: bool = True, act: str = "NONE", in_q: tuple[float, int] = (0.05, 3),
                out_q: tuple[float, int] = (0.1, -2), eff: tuple[float, float] = (1e-3, 0.2),
                int4: bool = False) -> TfliteGraph:
    """FULLY_CONNECTED; `int4`: INT4 weights in [-8, 7] (TFLM takes them per tensor only)."""
    g = Builder()
    x = g.tensor((1, *in_shape), tq(*in_q))
    k = int(np.prod(in_shape))
    scales = effective_scales(rng, out if per_channel else 1, in_q[0], out_q[0], *eff)
    values = rng.integers(-8, 8, (out, k), dtype=np.int8) if int4 else rng.integers(-127, 128, (out, k), dtype=np.int8)
    w = g.tensor((out, k), tq(scales), "int4" if int4 else "int8", values)
    b = -1
    if bias:
        bias_scales = (np.broadcast_to(scales, (out,)).astype(np.float64) * np.float32(in_q[0])).astype(np.float32)
        b = g.tensor((out,), tq(bias_scales if per_channel else bias_scales[:1]), "int32",
                     rng.integers(-20000, 20000, out).astype(np.int32))
    g.op("FULLY_CONNECTED", [x, w, b], (1, out), tq(*out_q), fused_activation_function=act)
    return g.graph()


def build_pool(rng: np.random.Generator, op: str, hw: tuple[int, int], c: int, k: tuple[int, int],
               stride: tuple[int, int], padding: str, act: str = "NONE", q: tuple[float, int] = (0.04, -10),
               pre_pad: tuple[int, int, int, int] | None = None) -> TfliteGraph:
    g = Builder()
    x = g.tensor((1, *hw, c), tq(*q))
    if pre_pad is not None:
        t, b, left, right = pre_pad
        hw = (hw[0] + t + b, hw[1] + left + right)
        pads = np.array([[0, 0], [t, b], [left, right], [0, 0]], np.int32)
        x = g.op("PAD", [x, g.tensor((4, 2), None, "int32", pads)], (1, *hw, c), tq(*q))
    g.op(op, [x], (1, *out_hw(hw, k, stride, padding), c), tq(*q), padding=padding, stride_h=stride[0],
         stride_w=stride[1], filter_height=k[0], filter_width=k[1], fused_activation_function=act)
    return g.graph()


def build_add(rng: np.random.Generator, hw: tuple[int, int], c: int, q1: tuple[float, int], q2: tuple[float, int],
              out_q: tuple[float, int], act: str = "NONE") -> TfliteGraph:
    """x + depthwise1x1(x): two operands with their own scales and zero points."""
    g = Builder()
    x = g.tensor((1, *hw, c), tq(*q1))
    scales = effective_scales(rng, c, q1[0], q2[0], 0.3, 1.5)
    w = g.tensor((1, 1, 1, c), tq(scales, 0, 3), data=rng.integers(-127, 128, (1, 1, 1, c), dtype=np.int8))
    b = g.tensor((c,), tq(scales * np.float32(q1[0])), "int32", rng.integers(-300, 300, c).astype(np.int32))
    a = g.op("DEPTHWISE_CONV_2D", [x, w, b], (1, *hw, c), tq(*q2), padding="VALID", stride_h=1, stride_w=1,
             depth_multiplier=1)
    g.op("ADD", [x, a], (1, *hw, c), tq(*out_q), fused_activation_function=act)
    return g.graph()


def build_softmax(rng: np.random.Generator, shape: tuple[int, ...], q: tuple[float, int],
                  beta: float = 1.0) -> TfliteGraph:
    g = Builder()
    x = g.tensor((1, *shape), tq(*q))
    g.op("SOFTMAX", [x], (1, *shape), tq(1 / 256, -128), beta=beta)
    return g.graph()


def build_mean(rng: np.random.Generator, hwc: tuple[int, int, int], keep_dims: bool, in_q: tuple[float, int],
               out_q: tuple[float, int], axes: tuple[int, ...] = (1, 2)) -> TfliteGraph:
    g = Builder()
    x = g.tensor((1, *hwc), tq(*in_q))
    axes_t = g.tensor((len(axes),), None, "int32", np.array(axes, np.int32))
    g.op("MEAN", [x, axes_t], (1, 1, 1, hwc[2]) if keep_dims else (1, hwc[2]), tq(*out_q), keep_dims=keep_dims)
    return g.graph()


def build_pad(rng: np.random.Generator, hwc: tuple[int, int, int], pads: tuple[int, int, int, int],
              q: tuple[float, int] = (0.05, -7), v2: bool = False) -> TfliteGraph:
    g = Builder()
    x = g.tensor((1, *hwc), tq(*q))
    t, b, left, right = pads
    p = g.tensor((4, 2), None, "int32", np.array([[0, 0], [t, b], [left, right], [0, 0]], np.int32))
    ins = [x, p] + ([g.tensor((1,), tq(*q), "int8", np.array([q[1]], np.int8))] if v2 else [])
    g.op("PADV2" if v2 else "PAD", ins, (1, hwc[0] + t + b, hwc[1] + left + right, hwc[2]), tq(*q))
    return g.graph()


def build_reshape(rng: np.random.Generator, shape: tuple[int, ...], new: tuple[int, ...], squeeze: bool = False,
                  q: tuple[float, int] = (0.1, 4)) -> TfliteGraph:
    g = Builder()
    x = g.tensor((1, *shape), tq(*q))
    if squeeze:
        g.op("SQUEEZE", [x], (1, *new), tq(*q), squeeze_dims=[1, 2])
    else:
        s = g.tensor((len(new) + 1,), None, "int32", np.array([1, *new], np.int32))
        g.op("RESHAPE", [x, s], (1, *new), tq(*q), new_shape=[1, *new])
    return g.graph()


def build_float_io(rng: np.random.Generator, in_q: tuple[float, int], out_q: tuple[float, int]) -> TfliteGraph:
    """float32 -> QUANTIZE -> CONV_2D -> DEQUANTIZE -> float32: the model boundary."""
    inner = build_conv(rng, (6, 5), 2, 3, (3, 3), in_q=in_q, out_q=out_q, act="RELU")
    g = Builder()
    x = g.tensor((1, 6, 5, 2), None, "float32")
    xq = g.op("QUANTIZE", [x], (1, 6, 5, 2), tq(*in_q))
    w = g.tensor(inner.tensors[1].shape, inner.tensors[1].quant, data=inner.tensors[1].data)
    b = g.tensor(inner.tensors[2].shape, inner.tensors[2].quant, "int32", inner.tensors[2].data)
    y = g.op("CONV_2D", [xq, w, b], (1, 6, 5, 3), tq(*out_q), **inner.operators[0].options)
    g.op("DEQUANTIZE", [y], (1, 6, 5, 3), None, "float32")
    return g.graph()


# --- the case table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[np.random.Generator], TfliteGraph]
    ops: tuple[Op, ...]  # the imported layers
    images: int = 3


C, DW, FC = (Op.CONV2D,), (Op.DEPTHWISE_CONV2D,), (Op.DENSE,)
conv, dense, pool = build_conv, build_dense, build_pool

CASES = [
    # CONV_2D: strides (1,1) (2,2) (1,2) (2,1); SAME on odd/even sizes (asymmetric totals); VALID; dilation 2
    Case("conv1x1_valid", partial(conv, hw=(6, 6), cin=3, cout=5, k=(1, 1), padding="VALID"), C),
    Case("conv3x3_same_odd_relu", partial(conv, hw=(7, 9), cin=3, cout=5, k=(3, 3), act="RELU",
                                          in_q=(0.02, 10), out_q=(0.05, -128)), C),
    Case("conv3x3_s2_same_even_relu6_bites", partial(conv, hw=(8, 8), cin=5, cout=7, k=(3, 3), stride=(2, 2),
                                                     act="RELU6", in_q=(0.02, -128), out_q=(0.03, -128)), C),
    Case("conv3x3_s2_same_odd", partial(conv, hw=(9, 7), cin=7, cout=3, k=(3, 3), stride=(2, 2),
                                        in_q=(0.1, 0), out_q=(0.2, 0), eff=(1e-4, 0.2)), C),
    Case("conv5x5_s12_same", partial(conv, hw=(10, 11), cin=3, cout=5, k=(5, 5), stride=(1, 2), act="RELU"), C),
    Case("conv5x5_s2_valid_nobias", partial(conv, hw=(12, 8), cin=5, cout=4, k=(5, 5), stride=(2, 2),
                                            padding="VALID", bias=False), C),
    Case("conv3x1_valid_relu_n1_to_1", partial(conv, hw=(9, 6), cin=3, cout=6, k=(3, 1), padding="VALID",
                                               act="RELU_N1_TO_1", in_q=(0.01, 0), out_q=(0.01, 0)), C),
    Case("conv10x4_s2_same_kws", partial(conv, hw=(49, 10), cin=1, cout=8, k=(10, 4), stride=(2, 2), act="RELU",
                                         in_q=(0.58, 83), out_q=(0.3, -128), eff=(1e-3, 0.2)), C),
    Case("conv3x3_dilation2_same", partial(conv, hw=(11, 9), cin=3, cout=5, k=(3, 3), dilation=(2, 2)), C),
    Case("conv3x3_s21_dilation21", partial(conv, hw=(10, 10), cin=4, cout=5, k=(3, 3), stride=(2, 1),
                                           dilation=(2, 1), act="RELU", in_q=(0.05, -20), out_q=(0.05, -20)), C),
    Case("conv_shifts_both_signs", partial(conv, hw=(6, 7), cin=3, cout=16, k=(3, 3), in_q=(0.05, 4),
                                           out_q=(0.5, -4), eff=(1e-5, 6.0)), C),
    Case("conv1x1_multiplier_above_one", partial(conv, hw=(6, 7), cin=2, cout=9, k=(1, 1), padding="VALID",
                                                 in_q=(0.5, 4), out_q=(0.05, -4), eff=(0.5, 40.0)), C),
    Case("conv_per_tensor_weights", partial(conv, hw=(8, 8), cin=3, cout=6, k=(3, 3), act="RELU6",
                                            in_q=(0.1, -128), out_q=(0.05, -128), per_channel=False), C),
    Case("conv_relu_bites_at_zp30", partial(conv, hw=(5, 5), cin=4, cout=4, k=(3, 3), act="RELU",
                                            in_q=(0.05, 0), out_q=(0.05, 30)), C),
    Case("pad_folds_into_conv", partial(conv, hw=(7, 6), cin=3, cout=4, k=(3, 3), stride=(2, 2), padding="VALID",
                                        pre_pad=(0, 1, 2, 1)), C),
    Case("pad_folds_into_same_conv", partial(conv, hw=(6, 6), cin=2, cout=3, k=(3, 3), pre_pad=(1, 0, 0, 2)), C),
    # DEPTHWISE_CONV_2D: multiplier 1 and 2
    Case("dw3x3_m1_same_relu", partial(conv, hw=(7, 9), cin=3, cout=3, k=(3, 3), act="RELU", depthwise=True,
                                       in_q=(0.05, -128), out_q=(0.05, -128)), DW),
    Case("dw3x3_m1_s2_same_relu6", partial(conv, hw=(8, 8), cin=5, cout=5, k=(3, 3), stride=(2, 2), act="RELU6",
                                           depthwise=True, in_q=(0.02, 3), out_q=(0.03, -128)), DW),
    Case("dw3x3_m2_s21_same", partial(conv, hw=(9, 8), cin=3, cout=6, k=(3, 3), stride=(2, 1), depthwise=True), DW),
    Case("dw5x5_m2_valid_relu", partial(conv, hw=(10, 10), cin=7, cout=14, k=(5, 5), padding="VALID", act="RELU",
                                        depthwise=True, in_q=(0.05, 10), out_q=(0.08, -5)), DW),
    Case("dw3x3_dilation2", partial(conv, hw=(11, 9), cin=4, cout=4, k=(3, 3), dilation=(2, 2), depthwise=True,
                                    eff=(1e-3, 2.0)), DW),
    # (every depthwise case has a bias: the TFLM wheel segfaults on a DEPTHWISE_CONV_2D without one)
    Case("dw3x1_s12", partial(conv, hw=(6, 6), cin=3, cout=3, k=(3, 1), stride=(1, 2), depthwise=True,
                              eff=(1e-5, 8.0)), DW),
    Case("dw_per_tensor_weights", partial(conv, hw=(6, 5), cin=4, cout=8, k=(3, 3), depthwise=True,
                                          per_channel=False), DW),
    # FULLY_CONNECTED: per-tensor (as the MLPerf models) and per-channel, with and without bias, a 4-D input
    Case("fc_per_tensor_bias", partial(dense, in_shape=(64,), out=10, per_channel=False,
                                       in_q=(0.127, -128), out_q=(0.17, 24)), FC),
    Case("fc_per_tensor_nobias_relu", partial(dense, in_shape=(33,), out=7, per_channel=False, bias=False,
                                              act="RELU", out_q=(0.1, -128)), FC),
    Case("fc_per_tensor_640", partial(dense, in_shape=(640,), out=128, per_channel=False, act="RELU",
                                      in_q=(0.3, -10), out_q=(0.2, -128), eff=(1e-4, 0.01)), FC),
    Case("fc_per_channel_bias", partial(dense, in_shape=(17,), out=9), FC),
    # INT4 weights (values in [-8, 7], two per byte; odd element counts end in a padding nibble):
    # CONV_2D and DEPTHWISE_CONV_2D per channel, FULLY_CONNECTED per tensor (all TFLM runs)
    Case("conv3x3_int4_same_relu", partial(conv, hw=(7, 6), cin=3, cout=5, k=(3, 3), act="RELU", int4=True,
                                           in_q=(0.02, -128), out_q=(0.05, -128), eff=(1e-2, 2.0)), C),
    Case("conv1x1_int4_s2_odd_count", partial(conv, hw=(7, 7), cin=3, cout=3, k=(1, 1), stride=(2, 2),
                                              padding="VALID", int4=True, eff=(1e-2, 4.0)), C),
    Case("dw3x3_int4_m2_s2_same", partial(conv, hw=(8, 9), cin=3, cout=6, k=(3, 3), stride=(2, 2), depthwise=True,
                                          int4=True, act="RELU6", in_q=(0.05, 3), out_q=(0.05, -128),
                                          eff=(1e-2, 2.0)), DW),
    Case("fc_int4_per_tensor", partial(dense, in_shape=(37,), out=7, per_channel=False, int4=True,
                                       eff=(1e-2, 1.0)), FC),
    Case("fc_per_channel_nobias_relu6", partial(dense, in_shape=(40,), out=12, bias=False, act="RELU6",
                                                in_q=(0.02, -128), out_q=(0.03, -128)), FC),
    Case("fc_per_channel_multiplier_above_one", partial(dense, in_shape=(8,), out=16, in_q=(0.2, 5),
                                                        out_q=(0.02, 1), eff=(1e-4, 5.0)), FC),
    Case("fc_reads_feature_map_flattened", partial(dense, in_shape=(2, 3, 4), out=5), FC),
    # pools: 2x2 / 3x3, SAME / VALID, clamps
    Case("maxpool2x2_valid", partial(pool, op="MAX_POOL_2D", hw=(8, 8), c=3, k=(2, 2), stride=(2, 2),
                                     padding="VALID"), (Op.MAXPOOL2D,)),
    Case("maxpool3x3_s2_same_relu", partial(pool, op="MAX_POOL_2D", hw=(7, 9), c=5, k=(3, 3), stride=(2, 2),
                                            padding="SAME", act="RELU"), (Op.MAXPOOL2D,)),
    Case("maxpool3x3_same_relu6", partial(pool, op="MAX_POOL_2D", hw=(7, 7), c=3, k=(3, 3), stride=(1, 1),
                                          padding="SAME", act="RELU6", q=(0.03, -100)), (Op.MAXPOOL2D,)),
    Case("maxpool2x2_s1_same_even", partial(pool, op="MAX_POOL_2D", hw=(9, 6), c=4, k=(2, 2), stride=(1, 1),
                                            padding="SAME"), (Op.MAXPOOL2D,)),
    Case("avgpool2x2_valid", partial(pool, op="AVERAGE_POOL_2D", hw=(8, 8), c=3, k=(2, 2), stride=(2, 2),
                                     padding="VALID"), (Op.AVGPOOL2D,)),
    Case("avgpool3x3_s2_same", partial(pool, op="AVERAGE_POOL_2D", hw=(7, 9), c=5, k=(3, 3), stride=(2, 2),
                                       padding="SAME"), (Op.AVGPOOL2D,)),
    Case("avgpool3x3_same_relu6", partial(pool, op="AVERAGE_POOL_2D", hw=(7, 7), c=3, k=(3, 3), stride=(1, 1),
                                          padding="SAME", act="RELU6", q=(0.03, -100)), (Op.AVGPOOL2D,)),
    Case("avgpool2x2_s1_same_relu", partial(pool, op="AVERAGE_POOL_2D", hw=(9, 6), c=7, k=(2, 2), stride=(1, 1),
                                            padding="SAME", act="RELU"), (Op.AVGPOOL2D,)),
    Case("avgpool_global_25x5", partial(pool, op="AVERAGE_POOL_2D", hw=(25, 5), c=4, k=(25, 5), stride=(25, 5),
                                        padding="VALID"), (Op.AVGPOOL2D,)),
    Case("avgpool3x2_s23_same", partial(pool, op="AVERAGE_POOL_2D", hw=(5, 8), c=3, k=(3, 2), stride=(2, 3),
                                        padding="SAME"), (Op.AVGPOOL2D,)),
    Case("pad_then_maxpool_stays_apart", partial(pool, op="MAX_POOL_2D", hw=(6, 6), c=2, k=(2, 2), stride=(2, 2),
                                                 padding="VALID", pre_pad=(1, 1, 1, 1)), (Op.PAD, Op.MAXPOOL2D)),
    # ADD: different scales and zero points, clamps
    Case("add_different_scales", partial(build_add, hw=(5, 6), c=4, q1=(0.05, -3), q2=(0.1, 7),
                                         out_q=(0.12, -1)), (Op.DEPTHWISE_CONV2D, Op.ADD)),
    Case("add_relu_resnet_scales", partial(build_add, hw=(8, 8), c=16, q1=(0.2172, -2), q2=(0.0839, 38),
                                           out_q=(0.1271, -128), act="RELU"), (Op.DEPTHWISE_CONV2D, Op.ADD)),
    Case("add_relu6_bites", partial(build_add, hw=(4, 7), c=3, q1=(0.05, 0), q2=(0.05, 0), out_q=(0.1, -128),
                                    act="RELU6"), (Op.DEPTHWISE_CONV2D, Op.ADD)),
    # SOFTMAX
    Case("softmax_10_mlperf", partial(build_softmax, shape=(10,), q=(0.1719, 24)), (Op.SOFTMAX,)),
    Case("softmax_2", partial(build_softmax, shape=(2,), q=(0.5, -10)), (Op.SOFTMAX,)),
    Case("softmax_4d", partial(build_softmax, shape=(1, 1, 10), q=(1.0, 0)), (Op.SOFTMAX,)),
    Case("softmax_37_fine_scale", partial(build_softmax, shape=(37,), q=(0.01, -128)), (Op.SOFTMAX,)),
    Case("softmax_beta_half", partial(build_softmax, shape=(37,), q=(0.3, 3), beta=0.5), (Op.SOFTMAX,)),
    Case("softmax_beta_2", partial(build_softmax, shape=(20,), q=(0.25, 0), beta=2.0), (Op.SOFTMAX,)),
    Case("softmax_300", partial(build_softmax, shape=(300,), q=(0.0625, 0)), (Op.SOFTMAX,)),
    Case("softmax_diff_min_masks", partial(build_softmax, shape=(10,), q=(3.0, 0)), (Op.SOFTMAX,)),
    # MEAN over H, W, both keep_dims
    Case("mean_keep_same_q", partial(build_mean, hwc=(7, 7, 5), keep_dims=True, in_q=(0.05, -3),
                                     out_q=(0.05, -3)), (Op.MEAN,)),
    Case("mean_drop_requantize", partial(build_mean, hwc=(7, 7, 5), keep_dims=False, in_q=(0.05, -3),
                                         out_q=(0.02, 4)), (Op.MEAN,)),
    Case("mean_keep_25x5", partial(build_mean, hwc=(25, 5, 6), keep_dims=True, in_q=(0.3, -128),
                                   out_q=(0.25, -100)), (Op.MEAN,)),
    Case("mean_drop_negative_axes", partial(build_mean, hwc=(8, 8, 3), keep_dims=False, in_q=(0.1, 10),
                                            out_q=(0.4, -10), axes=(-3, -2)), (Op.MEAN,)),
    Case("mean_1x1", partial(build_mean, hwc=(1, 1, 9), keep_dims=True, in_q=(0.1, 0), out_q=(0.1, 0)), (Op.MEAN,)),
    Case("mean_large_multiplier", partial(build_mean, hwc=(6, 6, 4), keep_dims=True, in_q=(2.0, 5),
                                          out_q=(0.01, 0)), (Op.MEAN,)),
    Case("mean_tiny_multiplier", partial(build_mean, hwc=(8, 8, 3), keep_dims=False, in_q=(1e-9, 3),
                                         out_q=(1.0, -1)), (Op.MEAN,)),
    # PAD / PADV2 on H and W, RESHAPE / SQUEEZE
    Case("pad_symmetric", partial(build_pad, hwc=(4, 5, 3), pads=(1, 1, 1, 1)), (Op.PAD,)),
    Case("pad_asymmetric", partial(build_pad, hwc=(4, 5, 3), pads=(0, 1, 2, 0)), (Op.PAD,)),
    Case("padv2_zero_point", partial(build_pad, hwc=(4, 5, 3), pads=(2, 1, 0, 3), v2=True), (Op.PAD,)),
    Case("reshape_flatten", partial(build_reshape, shape=(1, 1, 64), new=(64,)), (Op.RESHAPE,)),
    Case("squeeze", partial(build_reshape, shape=(1, 1, 10), new=(10,), squeeze=True), (Op.RESHAPE,)),
    # QUANTIZE / DEQUANTIZE at the model boundary
    Case("float_io_image", partial(build_float_io, in_q=(1 / 255, -128), out_q=(0.05, -128)), C, images=4),
    Case("float_io_odd_scale", partial(build_float_io, in_q=(0.0117, 3), out_q=(0.1270691454410553, 9)), C, images=4),
]


# --- running TFLM ---------------------------------------------------------------------------------------


def tflm_tensors(data: bytes, graph: TfliteGraph, model: QuantModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every image of `x` through TFLM (prepared once); IR tensor name -> (N, ...) values TFLM
    computed, plus "<graph output>" for the file's output (float for a DEQUANTIZE)."""
    interpreter = runtime.Interpreter.from_bytes(data, arena_size=1 << 20,
                                                 intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
    index = {name: graph.tensor_index(t) for name, t in model.meta["tflite_tensors"].items()}
    out: dict[str, list[np.ndarray]] = {name: [] for name in [*index, "<graph output>"]}
    for sample in x:
        interpreter.set_input(sample[None], 0)
        interpreter.invoke()
        for name, i in index.items():
            out[name].append(np.array(interpreter.GetTensor(i, 0)["tensor_data"], copy=True))
        out["<graph output>"].append(np.array(interpreter.get_output(0), copy=True))
    return {name: np.concatenate(values) for name, values in out.items()}


def sample_inputs(rng: np.random.Generator, graph: TfliteGraph, n: int) -> np.ndarray:
    """Seeded int8 inputs over the whole range (one constant image); floats for a float model,
    including values that quantize to exact ties and beyond the int8 range."""
    t = graph.tensors[graph.inputs[0]]
    shape = (n, *t.shape[1:])
    if t.dtype == "float32":
        s = graph.tensors[graph.operators[0].outputs[0]].quant.scale[0]
        x = (rng.normal(0, 60, shape) * s).astype(np.float32)
        flat = x.reshape(-1)
        flat[: flat.size // 4] = ((rng.integers(-140, 140, flat.size // 4) + np.float32(0.5)) * s).astype(np.float32)
        return x
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    x[0] = 5  # all-equal rows and windows
    for i in range(2, n):  # narrower ranges move means and row maxima around
        lo = int(rng.integers(-128, 100))
        x[i] = rng.integers(lo, int(rng.integers(lo + 1, 128)) + 1, shape[1:])
    return x


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reference_matches_tflm(case: Case) -> None:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    graph = case.build(rng)
    data = write_tflite(graph)
    model = import_tflite(data, case.id)
    assert tuple(layer.op for layer in model.layers) == case.ops
    x = sample_inputs(rng, graph, case.images)
    tflm = tflm_tensors(data, graph, model, x)
    if model.meta["float_input"]:
        assert np.array_equal(reference.quantize_input(x, model.input_q), tflm[INPUT])
    for layer in model.layers:
        args = [tflm[name] for name in layer.inputs]
        got = getattr(reference, f"{layer.op.value}_s8")(args[0], layer, *args[1:])
        want = tflm[layer.name].reshape(got.shape)
        assert got.dtype == want.dtype == np.int8
        bad = np.argwhere(got != want)
        assert not bad.size, (f"{layer.name}: {len(bad)} of {got.size} differ, first at {bad[0].tolist()}: "
                              f"reference {got[tuple(bad[0])]}, TFLM {want[tuple(bad[0])]}")
    if model.meta["float_output"]:
        y = reference.dequantize_output(tflm[model.layers[-1].name], model.output_q)
        assert np.array_equal(y.view(np.uint32), tflm["<graph output>"].reshape(y.shape).view(np.uint32))


def test_quantize_input_matches_tflm_on_ties_and_out_of_range() -> None:
    """QUANTIZE rounds float32 quotients half away from zero; quotients beyond int32 give the x86 wheel's value."""
    rng = np.random.default_rng(1)
    for scale, zp in ((0.05, -3), (1 / 255, -128), (0.5, 10)):
        s = np.float32(scale)
        k = np.arange(-140, 140, dtype=np.float32)
        x = np.concatenate([((k + np.float32(0.5)) * s).astype(np.float32), k * s, rng.normal(0, 64 * scale, 500),
                            [0.0, -0.0, 1e-30, 1e6, -1e6, 1e12, -1e12, np.inf, -np.inf, np.nan]]).astype(np.float32)
        g = Builder()
        xi = g.tensor((1, x.size), None, "float32")
        g.op("QUANTIZE", [xi], (1, x.size), tq(scale, zp))
        interpreter = runtime.Interpreter.from_bytes(write_tflite(g.graph()), arena_size=1 << 20)
        interpreter.set_input(x[None], 0)
        interpreter.invoke()
        got = np.array(interpreter.get_output(0)).reshape(-1)
        assert np.array_equal(reference.quantize_input(x, QParams(float(s), zp)), got)


# --- float references against direct loops ------------------------------------------------------------


def direct_window(x: np.ndarray, k: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int],
                  dilation: tuple[int, int], reduce: Callable[[list], np.ndarray]) -> np.ndarray:
    """``reduce([(i, j, tap (N, C)), ...])`` over the in-bounds taps of each output position, one at a time."""
    n, h, w, _ = x.shape
    oh, ow = conv_out_hw(h, w, *k, stride, padding, dilation)
    rows = []
    for oy in range(oh):
        row = []
        for ox in range(ow):
            taps = []
            for i in range(k[0]):
                for j in range(k[1]):
                    yy = oy * stride[0] - padding[0] + i * dilation[0]
                    xx = ox * stride[1] - padding[2] + j * dilation[1]
                    if 0 <= yy < h and 0 <= xx < w:
                        taps.append((i, j, x[:, yy, xx, :].astype(np.float64)))
            row.append(reduce(taps))
        rows.append(np.stack(row, axis=1))
    return np.stack(rows, axis=1)


def test_float_references_match_direct_loops() -> None:
    """Geometry (asymmetric padding, stride (2, 1), dilation), the pruning mask, clamps, in-bounds
    average counts and depth multiplier 2, each against a per-position loop in float64."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 7, 8, 3)).astype(np.float32)
    close = partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)

    w = rng.normal(size=(4, 3, 2, 3)).astype(np.float32)
    mask = rng.random(w.shape) < 0.6
    b = rng.normal(size=4).astype(np.float32)
    geometry = dict(stride=(2, 1), padding=(1, 0, 2, 1), dilation=(2, 1))
    out_shape = (*conv_out_hw(7, 8, 3, 2, **geometry), 4)
    conv = FloatLayer("c", Op.CONV2D, (7, 8, 3), out_shape, weights=w, bias=b, mask=mask, clamp=(0.0, 1.5),
                      **geometry)
    want = direct_window(x, (3, 2), conv.stride, conv.padding, conv.dilation,
                         lambda taps: sum((t @ (w * mask)[:, i, j, :].T for i, j, t in taps), np.zeros((2, 4))))
    close(reference.conv2d_f32(x, conv), np.clip(want + b, 0.0, 1.5))

    dw = rng.normal(size=(6, 3, 3, 1)).astype(np.float32)
    depthwise = FloatLayer("d", Op.DEPTHWISE_CONV2D, (7, 8, 3), (4, 8, 6), weights=dw, bias=np.ones(6, np.float32),
                           depth_multiplier=2, stride=(2, 1), padding=(1, 1, 1, 1))
    want = direct_window(np.repeat(x, 2, axis=-1), (3, 3), (2, 1), (1, 1, 1, 1), (1, 1),
                         lambda taps: sum((t * dw[:, i, j, 0] for i, j, t in taps), np.zeros((2, 6))))
    close(reference.depthwise_conv2d_f32(x, depthwise), want + 1)

    pool_geometry = dict(window=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1))
    avg = FloatLayer("a", Op.AVGPOOL2D, (7, 8, 3), (4, 4, 3), **pool_geometry)
    mx = FloatLayer("m", Op.MAXPOOL2D, (7, 8, 3), (4, 4, 3), clamp=(-0.5, 0.5), **pool_geometry)
    taps_of = partial(direct_window, x, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    close(reference.avgpool2d_f32(x, avg), taps_of(lambda taps: np.mean([t for _, _, t in taps], axis=0)))
    close(reference.maxpool2d_f32(x, mx), np.clip(taps_of(lambda taps: np.max([t for _, _, t in taps], axis=0)),
                                                  -0.5, 0.5))

    close(reference.mean_f32(x, FloatLayer("mean", Op.MEAN, (7, 8, 3), (1, 1, 3))), x.mean(axis=(1, 2), keepdims=True))
    v = rng.normal(size=(5, 3)).astype(np.float32)
    e = np.exp(0.5 * (v - v.max(axis=1, keepdims=True)))
    close(reference.softmax_f32(v, FloatLayer("s", Op.SOFTMAX, (3,), (3,), beta=0.5)), e / e.sum(axis=1, keepdims=True))
    dense = FloatLayer("fc", Op.DENSE, (7, 8, 3), (4,), weights=rng.normal(size=(4, 168)).astype(np.float32),
                       bias=np.ones(4, np.float32), mask=rng.random((4, 168)) < 0.5)
    close(reference.dense_f32(x, dense), x.reshape(2, -1) @ (dense.weights * dense.mask).T + 1, rtol=1e-4)
    padded = reference.pad_f32(x, FloatLayer("p", Op.PAD, (7, 8, 3), (8, 11, 3), padding=(0, 1, 2, 1)))
    assert padded.shape == (2, 8, 11, 3) and not padded[:, 7].any() and not padded[:, :, :2].any()
    added = reference.add_f32(x, FloatLayer("add", Op.ADD, (7, 8, 3), (7, 8, 3), clamp=(0.0, 6.0)), x)
    np.testing.assert_array_equal(added, np.clip(x + x, 0, 6))
