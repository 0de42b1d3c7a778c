"""Post-training int8 quantization to the TFLite int8 spec (FloatModel -> QuantModel).

* weights: per-output-channel symmetric int8 in [-127, 127], zero point 0;
* activations: per-tensor asymmetric int8 from the min/max seen on calibration inputs (the range
  always contains 0.0 so that zero — ReLU's output and padding — is exact);
* biases: int32 with scale input_scale * weight_scale[c];
* every scale is rounded to float32 before anything is derived from it, and every integer the
  kernels use (multipliers and shifts, ADD/MEAN/SOFTMAX constants, activation clamps) is derived
  by model/int8_params.py exactly as TFLM derives it from the float32 scales a .tflite stores.
  That is what makes the int8 reference agree with TFLM's interpreter element for element.

Ops without a requantization of their own keep their input's quantization (max and average
pooling, PAD, RESHAPE: TFLM requires it); SOFTMAX's output is TFLite's fixed 1/256, zero point -128.
Image models take uint8 pixels as the int8 ``p - 128`` with scale 1/255 (``INPUT_Q``), so their
input quantization is exact; other models get theirs from the calibration inputs' range. The
controller's adaptation moves the input quantization and may fix every layer's output
quantization (``output_qs``), through the same function.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mcuprune.model import fixedpoint, int8_params
from mcuprune.model.interpreter import BATCH, trace_f32
from mcuprune.model.ir import (
    INPUT,
    FloatLayer,
    FloatModel,
    Op,
    QParams,
    QuantLayer,
    QuantModel,
    verify,
)

INPUT_Q = QParams(scale=float(np.float32(1.0 / 255.0)), zero_point=-128)
CALIBRATION_SAMPLES = 2000
KEEPS_INPUT_Q = (Op.MAXPOOL2D, Op.AVGPOOL2D, Op.PAD, Op.RESHAPE)


def f32(x: float) -> float:
    """The float32 value a .tflite would store for `x`, as a Python float."""
    return float(np.float32(x))


def activation_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering [lo, hi] extended to include 0 (scale float32)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        return QParams(scale=1.0, zero_point=0)  # constant-zero tensor: any scale is exact
    scale = f32((hi - lo) / 255.0)
    zero_point = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return QParams(scale=scale, zero_point=zero_point)


def quantize_weights(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric: returns (int8 array of the integer weights, float32 scales [C_out]).

    `bits` 8 gives [-127, 127], 4 gives [-7, 7] (symmetric, so -8 is never used: the zero point is 0)."""
    if bits not in (4, 8):
        raise ValueError(f"weights are quantized to 4 or 8 bits, not {bits}")
    top = (1 << (bits - 1)) - 1
    flat = w.reshape(w.shape[0], -1)
    max_abs = np.abs(flat).max(axis=1)
    scales = np.where(max_abs > 0, max_abs / top, 1.0).astype(np.float32)
    q = np.clip(np.round(flat / scales[:, None]), -top, top).astype(np.int8)
    return q.reshape(w.shape), scales


def input_floats(x_uint8: np.ndarray, input_q: QParams = INPUT_Q) -> np.ndarray:
    """What the first layer computes on: scale · (q − z) for the device's int8 input q = p − 128 (float32).
    With INPUT_Q that is p / 255, the float model's own input."""
    q = np.asarray(x_uint8, dtype=np.float32) - 128.0
    return (input_q.scale * (q - input_q.zero_point)).astype(np.float32)


def calibration_ranges(model: FloatModel, x_float: np.ndarray) -> dict[str, tuple[float, float]]:
    """(min, max) of every tensor of the float model (ir.INPUT included) over the calibration inputs."""
    ranges: dict[str, tuple[float, float]] = {}
    for start in range(0, len(x_float), BATCH):
        for name, t in trace_f32(model, x_float[start : start + BATCH]).items():
            lo, hi = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(lo, float(t.min())), max(hi, float(t.max())))
    return ranges


def quantize_layer(layer: FloatLayer, input_q: QParams, output_q: QParams,
                   other_q: QParams | None = None) -> QuantLayer:
    """One layer with the given quantization of its input(s) and output (ops that keep their input's
    quantization ignore `output_q`)."""
    if layer.op in KEEPS_INPUT_Q:
        output_q = input_q
    elif layer.op is Op.SOFTMAX:
        output_q = int8_params.SOFTMAX_OUTPUT_Q
    act_min, act_max = int8_params.activation_range(layer.clamp, output_q)
    common = dict(name=layer.name, op=layer.op, in_shape=tuple(layer.in_shape), out_shape=tuple(layer.out_shape),
                  inputs=tuple(layer.inputs), input_q=input_q, output_q=output_q, clamp=layer.clamp, act_min=act_min,
                  act_max=act_max,
                  stride=layer.stride, padding=layer.padding, dilation=layer.dilation, window=layer.window,
                  depth_multiplier=layer.depth_multiplier)
    if layer.weights is not None:
        w = layer.weights if layer.mask is None else layer.weights * layer.mask
        q_w, w_scales = quantize_weights(w, layer.weight_bits)
        bias_scales = np.float64(input_q.scale) * w_scales.astype(np.float64)
        # Within the bound that keeps the int32 accumulator from overflowing (a bias beyond it only
        # arises from a channel whose weights are all but zero; blob firmware refuses it otherwise).
        limit = fixedpoint.bias_limit(int(np.prod(q_w.shape[1:])), layer.weight_bits)
        limit = limit if limit >= 0 else 2**31 - 1
        bias = np.clip(np.round(layer.bias / bias_scales), -limit, limit).astype(np.int32)
        multiplier, shift = int8_params.conv_multipliers(input_q.scale, w_scales, output_q.scale)
        mask = None if layer.mask is None else layer.mask.astype(bool)
        return QuantLayer(weights=q_w, bias=bias, weight_scales=w_scales, multiplier=multiplier, shift=shift,
                          mask=mask, weight_bits=layer.weight_bits, **common)
    if layer.op is Op.ADD:
        multipliers, shifts = int8_params.add_multipliers(input_q.scale, other_q.scale, output_q.scale)
        return QuantLayer(other_q=other_q, multiplier=multipliers, shift=shifts, **common)
    if layer.op is Op.MEAN:
        h, w, _ = layer.in_shape
        multiplier, shift = int8_params.mean_multiplier(input_q.scale, output_q.scale, h * w)
        return QuantLayer(multiplier=np.array([multiplier], np.int32), shift=np.array([shift], np.int32), **common)
    if layer.op is Op.SOFTMAX:
        multiplier, left_shift = int8_params.softmax_multiplier(input_q.scale, layer.beta)
        return QuantLayer(multiplier=np.array([multiplier], np.int32), shift=np.array([left_shift], np.int32),
                          **common)
    return QuantLayer(**common)


def quantize_model(model: FloatModel, calibration: np.ndarray | None = None, meta: dict | None = None, *,
                   input_q: QParams | None = None, output_qs: list[QParams] | None = None) -> QuantModel:
    """Quantize every layer, each reading the quantization of the tensors it reads.

    `calibration`: float inputs (N, *input_shape) exactly as the float model takes them. The input
    quantization is `input_q`, or covers the calibration inputs' range. Each layer's output
    quantization covers its float range on them, or is given (`output_qs`, one per layer; the
    entries of layers that keep their input's quantization are ignored)."""
    verify(model)
    ranges = calibration_ranges(model, calibration) if calibration is not None else None
    if input_q is None:
        if ranges is None:
            raise ValueError("quantize_model needs calibration inputs or the input quantization")
        input_q = activation_qparams(*ranges[INPUT])
    if output_qs is None:
        if ranges is None:
            raise ValueError("quantize_model needs calibration inputs or the output quantizations")
        output_qs = [activation_qparams(*ranges[layer.name]) for layer in model.layers]
    qs = {INPUT: replace(input_q, scale=f32(input_q.scale))}
    layers = []
    for layer, out_q in zip(model.layers, output_qs, strict=True):
        other = qs[layer.inputs[1]] if len(layer.inputs) > 1 else None
        qlayer = quantize_layer(layer, qs[layer.inputs[0]], replace(out_q, scale=f32(out_q.scale)), other)
        qs[layer.name] = qlayer.output_q
        layers.append(qlayer)
    qmodel = QuantModel(name=model.name, input_shape=model.input_shape, input_q=qs[INPUT],
                        num_classes=model.num_classes, layers=tuple(layers), meta=dict(meta or {}))
    verify(qmodel)
    return qmodel


def quantize_image_model(model: FloatModel, x_train_uint8: np.ndarray, meta: dict | None = None) -> QuantModel:
    """A model trained on uint8 images (inputs p / 255) quantized as `mcuprune compile` does: input
    INPUT_Q, activation ranges from calibration_subset of the training images."""
    calibration = input_floats(calibration_subset(x_train_uint8), INPUT_Q)
    return quantize_model(model, calibration, meta, input_q=INPUT_Q)


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
