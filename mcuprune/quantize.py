"""Post-training int8 quantization to the TFLite int8 spec (FloatModel -> QuantModel).

* weights: per-output-channel symmetric int8 in [-127, 127], zero point 0;
* activations: per-tensor asymmetric int8 from the min/max seen on a calibration subset
  (the range always contains 0.0 so that zero — ReLU's output and padding — is exact);
* biases: int32 with scale input_scale * weight_scale[c];
* requantization: multiplier/shift per output channel (fixedpoint.quantize_multipliers).
The input is uint8 pixels seen as pixel/255 by the float model: scale 1/255, zero point -128;
the controller's adaptation moves the input quantization (``input_q``) and may fix every layer's
output quantization (``output_qs``), through the same functions.
"""

from __future__ import annotations

import numpy as np

from mcuprune.model.fixedpoint import quantize_multipliers
from mcuprune.model.interpreter import trace_f32
from mcuprune.model.ir import FloatLayer, FloatModel, Op, QParams, QuantLayer, QuantModel, check_chain

INPUT_Q = QParams(scale=1.0 / 255.0, zero_point=-128)
CALIBRATION_SAMPLES = 2000


def activation_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering [lo, hi] extended to include 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        return QParams(scale=1.0, zero_point=0)  # constant-zero tensor: any scale is exact
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return QParams(scale=scale, zero_point=zero_point)


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8: returns (int8 weights, float32 scales [C_out])."""
    flat = w.reshape(w.shape[0], -1)
    max_abs = np.abs(flat).max(axis=1)
    scales = np.where(max_abs > 0, max_abs / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(flat / scales[:, None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scales


def input_floats(x_uint8: np.ndarray, input_q: QParams = INPUT_Q) -> np.ndarray:
    """What the first layer computes on: scale · (q − z) for the device's int8 input q = p − 128 (float32).
    With INPUT_Q that is p / 255, the float model's own input."""
    q = np.asarray(x_uint8, dtype=np.float32) - 128.0
    return (input_q.scale * (q - input_q.zero_point)).astype(np.float32)


def calibration_ranges(model: FloatModel, x_uint8: np.ndarray, input_q: QParams = INPUT_Q,
                       batch: int = 500) -> list[tuple[float, float]]:
    """(min, max) of every layer's float output over the calibration images, fed as `input_q` maps them."""
    ranges = [(np.inf, -np.inf)] * len(model.layers)
    for start in range(0, len(x_uint8), batch):
        outs = trace_f32(model, input_floats(x_uint8[start : start + batch], input_q))[1:]
        ranges = [(min(lo, float(o.min())), max(hi, float(o.max()))) for (lo, hi), o in zip(ranges, outs,
                                                                                                strict=True)]
    return ranges


def quantize_layer(layer: FloatLayer, input_q: QParams, output_q: QParams) -> QuantLayer:
    """One layer with the given input and output quantization (max pooling passes its input's through)."""
    common = dict(name=layer.name, op=layer.op, in_shape=tuple(layer.in_shape), out_shape=tuple(layer.out_shape),
                  input_q=input_q, relu=layer.relu, stride=layer.stride, pad=layer.pad, pool=layer.pool)
    if layer.op is Op.MAXPOOL2D:
        return QuantLayer(output_q=input_q, **common)  # max commutes with a monotonic affine map
    w = layer.weights if layer.mask is None else layer.weights * layer.mask
    q_w, w_scales = quantize_weights(w)
    bias_scales = input_q.scale * w_scales.astype(np.float64)
    bias = np.clip(np.round(layer.bias / bias_scales), -(2**31), 2**31 - 1).astype(np.int32)
    multiplier, shift = quantize_multipliers(bias_scales / output_q.scale)
    mask = None if layer.mask is None else layer.mask.astype(bool)
    return QuantLayer(output_q=output_q, weights=q_w, bias=bias, weight_scales=w_scales, multiplier=multiplier,
                      shift=shift, mask=mask, **common)


def quantize_model(model: FloatModel, calibration_uint8: np.ndarray | None = None, meta: dict | None = None, *,
                   input_q: QParams = INPUT_Q, output_qs: list[QParams] | None = None) -> QuantModel:
    """Quantize every layer, chaining each layer's output quantization into the next's input.

    Each layer's output quantization covers its float range on the calibration images, or is given
    (`output_qs`, one per layer; a max pooling layer's entry is ignored: it keeps its input's)."""
    check_chain(model.layers, model.input_shape)
    if output_qs is None:
        if calibration_uint8 is None:
            raise ValueError("quantize_model needs calibration images or the output quantizations")
        output_qs = [activation_qparams(lo, hi) for lo, hi in calibration_ranges(model, calibration_uint8, input_q)]
    layers = []
    q = input_q
    for layer, out_q in zip(model.layers, output_qs, strict=True):
        qlayer = quantize_layer(layer, q, out_q)
        layers.append(qlayer)
        q = qlayer.output_q
    return QuantModel(name=model.name, input_shape=model.input_shape, input_q=input_q,
                      num_classes=model.num_classes, layers=tuple(layers), meta=dict(meta or {}))


def calibration_indices(n: int, samples: int = CALIBRATION_SAMPLES, seed: int = 0) -> np.ndarray:
    """Sorted indices of calibration_subset's images among n training images (all of them if n <= samples)."""
    if n <= samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))


def calibration_subset(x_train: np.ndarray, samples: int = CALIBRATION_SAMPLES, seed: int = 0) -> np.ndarray:
    """A seeded random subset of the training images (bounded memory and time)."""
    if len(x_train) <= samples:
        return x_train
    return x_train[calibration_indices(len(x_train), samples, seed)]
