"""Numpy interpreters: the int8 reference (single source of truth for the device) and float.

The int8 path does integer arithmetic only. Dot products run through float64 matrix products,
which is exact here: |x + input_offset| <= 255 and |w| <= 127, so every partial sum stays far
below 2^53. Everything is batched: tensors are (N, H, W, C) or (N, features).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mcuprune.model.fixedpoint import requantize_s8
from mcuprune.model.ir import FloatLayer, FloatModel, Op, QuantLayer, QuantModel

BATCH = 512  # images per chunk: bounds the im2col buffer to a few hundred MB


def im2col(x: np.ndarray, k_h: int, k_w: int, stride: int, pad: int, pad_value: float) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, k_h * k_w * C) patches in [kh][kw][c] order."""
    n, h, w, c = x.shape
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=pad_value)
    oh = (h + 2 * pad - k_h) // stride + 1
    ow = (w + 2 * pad - k_w) // stride + 1
    cols = np.empty((n, oh, ow, k_h, k_w, c), dtype=x.dtype)
    for i in range(k_h):
        for j in range(k_w):
            cols[:, :, :, i, j, :] = x[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :]
    return cols.reshape(n, oh, ow, k_h * k_w * c)


def maxpool2d(x: np.ndarray, pool: int) -> np.ndarray:
    """Max pooling with window == stride, no padding (trailing rows/cols dropped)."""
    n, h, w, c = x.shape
    oh, ow = h // pool, w // pool
    x = x[:, : oh * pool, : ow * pool, :].reshape(n, oh, pool, ow, pool, c)
    return x.max(axis=(2, 4))


def _accumulate(patches: np.ndarray, weights2d: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """int accumulator = patches @ weights2d.T + bias, exactly, as int64."""
    acc = patches.astype(np.float64) @ weights2d.astype(np.float64).T
    return np.rint(acc).astype(np.int64) + bias.astype(np.int64)


def conv2d_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """int8 (N, H, W, C_in) -> int8 (N, OH, OW, C_out), as mcup_conv2d_s8_dense()."""
    c_out, k_h, k_w, _ = layer.weights.shape
    zp_in = layer.input_q.zero_point
    # Padding holds the input zero point: it is a real 0.0 after the offset is added.
    patches = im2col(x.astype(np.int16), k_h, k_w, layer.stride, layer.pad, zp_in) - zp_in
    acc = _accumulate(patches, layer.weights.reshape(c_out, -1), layer.bias)
    return requantize_s8(
        acc, layer.multiplier, layer.shift, layer.output_q.zero_point, layer.act_min, layer.act_max
    )


def dense_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """int8 (N, in) -> int8 (N, out), as mcup_fc_s8_dense()."""
    x = x.reshape(x.shape[0], -1).astype(np.int16) - layer.input_q.zero_point
    acc = _accumulate(x, layer.weights, layer.bias)
    return requantize_s8(
        acc, layer.multiplier, layer.shift, layer.output_q.zero_point, layer.act_min, layer.act_max
    )


def run_layer_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    if layer.op is Op.CONV2D:
        return conv2d_s8(x, layer)
    if layer.op is Op.DENSE:
        return dense_s8(x, layer)
    if layer.op is Op.MAXPOOL2D:
        return maxpool2d(x, layer.pool)
    raise ValueError(f"layer {layer.name}: unsupported op {layer.op}")


def _chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(x), BATCH):
        yield x[start : start + BATCH]


def run_s8(model: QuantModel, x: np.ndarray) -> np.ndarray:
    """int8 inputs (N, H, W, C) -> int8 logits (N, classes): the expected device output."""
    return np.concatenate([trace_s8(model, chunk)[-1] for chunk in _chunks(x)])


def trace_s8(model: QuantModel, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's int8 output for one batch (first element is the input)."""
    outs = [np.asarray(x, dtype=np.int8)]
    for layer in model.layers:
        outs.append(run_layer_s8(outs[-1], layer))
    return outs


def run_layer_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    if layer.op is Op.MAXPOOL2D:
        return maxpool2d(x, layer.pool)
    w = layer.weights if layer.mask is None else layer.weights * layer.mask
    if layer.op is Op.CONV2D:
        c_out, k_h, k_w, _ = w.shape
        patches = im2col(x, k_h, k_w, layer.stride, layer.pad, 0.0)
        y = patches @ w.reshape(c_out, -1).T + layer.bias
    elif layer.op is Op.DENSE:
        y = x.reshape(x.shape[0], -1) @ w.T + layer.bias
    else:
        raise ValueError(f"layer {layer.name}: unsupported op {layer.op}")
    return np.maximum(y, 0.0) if layer.relu else y


def trace_f32(model: FloatModel, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's float output for one batch of float inputs (N, H, W, C)."""
    outs = [np.asarray(x, dtype=np.float32)]
    for layer in model.layers:
        outs.append(run_layer_f32(outs[-1], layer).astype(np.float32))
    return outs


def run_f32(model: FloatModel, x: np.ndarray) -> np.ndarray:
    """Float inputs (N, H, W, C) -> float logits (N, classes)."""
    return np.concatenate([trace_f32(model, chunk)[-1] for chunk in _chunks(x)])
