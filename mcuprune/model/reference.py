"""Numpy reference functions of every operator: int8 (the single source of truth for the device) and float.

Each takes a batch and the layer, ``(x, layer) -> y``; the operator table (ops.py) points at them
and the interpreters (interpreter.py) run them layer by layer. The int8 path does integer
arithmetic only. Dot products run through float64 matrix products,
which is exact here: |x + input_offset| <= 255 and |w| <= 127, so every partial sum stays far
below 2^53. Everything is batched: tensors are (N, H, W, C) or (N, features).
"""

from __future__ import annotations

import numpy as np

from mcuprune.model.fixedpoint import requantize_s8
from mcuprune.model.ir import FloatLayer, QuantLayer


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


def maxpool2d_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """int8 max pooling, as mcup_maxpool2d_s8(): max commutes with the affine map, so no requantization."""
    return maxpool2d(x, layer.pool)


def maxpool2d_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    return maxpool2d(x, layer.pool)


def _relu(y: np.ndarray, layer: FloatLayer) -> np.ndarray:
    return np.maximum(y, 0.0) if layer.relu else y


def _float_weights(layer: FloatLayer) -> np.ndarray:
    return layer.weights if layer.mask is None else layer.weights * layer.mask


def conv2d_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """float (N, H, W, C_in) -> (N, OH, OW, C_out), pruning mask applied."""
    w = _float_weights(layer)
    c_out, k_h, k_w, _ = w.shape
    patches = im2col(x, k_h, k_w, layer.stride, layer.pad, 0.0)
    return _relu(patches @ w.reshape(c_out, -1).T + layer.bias, layer)


def dense_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """float (N, in) -> (N, out), pruning mask applied."""
    return _relu(x.reshape(x.shape[0], -1) @ _float_weights(layer).T + layer.bias, layer)
