"""Numpy reference functions of every operator: int8 (the single source of truth for the device) and float.

Each takes a batch and the layer, ``f(x, layer) -> y`` (ADD: ``f(x, layer, x2)``), with x of shape
(N, *layer.in_shape) and y of shape (N, *layer.out_shape): feature maps (N, H, W, C), vectors
(N, features). The operator table (ops.py) points at them and the interpreters run them layer by
layer.

The int8 functions compute what TFLite Micro's reference kernels compute, element for element
(tests/test_reference_tflm.py runs both): integer arithmetic only, every integer taken from the
layer -- weights, bias, multiplier/shift, zero points, act_min/act_max, geometry -- never
re-derived from scales (int8_params.py derives them, once, when a model is imported or
quantized). Accumulators are int32 in the kernels and wrap; here they are exact and the
requantization wraps them, which is the same arithmetic mod 2^32.

Dot products run as float64 matrix products, which is exact: every term is an int8 weight times
an input with its zero point removed (|w| <= 128, |x - zp| <= 255), so a sum of K terms stays
below 2^53 for any K below 2.7e11, and float64 adds integers below 2^53 without rounding in any
order. BLAS makes that the fast path for conv (im2col + one matmul) and dense.

The float functions are the float32 model the int8 one approximates: float32 math, the pruning
mask applied to the weights, ``clamp`` after the bias, TFLite's conventions (average pooling counts
only in-bounds taps, padding adds zeros).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mcuprune.model.fixedpoint import (
    doubling_high_mult,
    exp_on_negative_values,
    get_reciprocal,
    requantize,
    requantize_s8,
    rounding_divide_by_pot,
    wrap_int32,
)
from mcuprune.model.int8_params import (
    ADD_LEFT_SHIFT,
    INT8_MAX,
    INT8_MIN,
    SOFTMAX_INPUT_INTEGER_BITS,
    SOFTMAX_OUTPUT_Q,
    softmax_diff_min,
)
from mcuprune.model.ir import FloatLayer, QParams, QuantLayer, conv_out_hw

Padding = tuple[int, int, int, int]  # top, bottom, left, right

# --- geometry shared by the int8 and float paths --------------------------------------------------


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


def _padding(v: int | tuple[int, ...]) -> Padding:
    if isinstance(v, int | np.integer):
        return (int(v),) * 4  # type: ignore[return-value]
    top, bottom, left, right = (int(p) for p in v)
    return top, bottom, left, right


def _pad_hw(x: np.ndarray, padding: Padding, value: float) -> np.ndarray:
    top, bottom, left, right = padding
    if not any(padding):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _taps(xp: np.ndarray, k_h: int, k_w: int, stride: tuple[int, int], dilation: tuple[int, int],
          out_hw: tuple[int, int]) -> Iterator[tuple[int, int, np.ndarray]]:
    """(i, j, view) for every tap of a window: view[n, oy, ox, c] = xp[n, oy*s_y + i*d_y, ox*s_x + j*d_x, c]."""
    (s_y, s_x), (d_y, d_x), (oh, ow) = stride, dilation, out_hw
    for i in range(k_h):
        for j in range(k_w):
            y0, x0 = i * d_y, j * d_x
            yield i, j, xp[:, y0 : y0 + s_y * (oh - 1) + 1 : s_y, x0 : x0 + s_x * (ow - 1) + 1 : s_x, :]


def im2col(x: np.ndarray, k_h: int, k_w: int, stride: int | tuple[int, int], padding: int | tuple[int, ...],
           pad_value: float, dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, k_h * k_w * C) patches in [kh][kw][c] order (the weights' order).

    `stride` is (y, x) or one int; `padding` is (top, bottom, left, right) or one int for all four
    sides; padded positions hold `pad_value`.
    """
    stride, dilation, pads = _pair(stride), _pair(dilation), _padding(padding)
    n, h, w, c = x.shape
    out_hw = conv_out_hw(h, w, k_h, k_w, stride, pads, dilation)
    cols = np.empty((n, *out_hw, k_h, k_w, c), dtype=x.dtype)
    for i, j, view in _taps(_pad_hw(x, pads, pad_value), k_h, k_w, stride, dilation, out_hw):
        cols[:, :, :, i, j, :] = view
    return cols.reshape(n, *out_hw, k_h * k_w * c)


def _out_hw(x: np.ndarray, k_h: int, k_w: int, layer: QuantLayer | FloatLayer) -> tuple[int, int]:
    return conv_out_hw(x.shape[1], x.shape[2], k_h, k_w, layer.stride, layer.padding, layer.dilation)


def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer a @ b.T as int64, computed with float64 BLAS (exact, see the module docstring)."""
    return np.rint(a.astype(np.float64) @ b.astype(np.float64).T).astype(np.int64)


def _requantize_out(acc: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """Common tail of conv, depthwise and dense: + bias, requantize per output channel, + zp, clamp."""
    if layer.bias is not None:
        acc = acc + layer.bias.astype(np.int64)
    return requantize_s8(acc, layer.multiplier, layer.shift, layer.output_q.zero_point, layer.act_min,
                         layer.act_max)


def _clip_s8(y: np.ndarray, layer: QuantLayer) -> np.ndarray:
    return np.clip(y, layer.act_min, layer.act_max).astype(np.int8)


# --- int8 -------------------------------------------------------------------------------------------


def conv2d_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """CONV_2D: int8 (N, H, W, C_in) -> (N, OH, OW, C_out), weights [C_out, k_h, k_w, C_in].

    TFLM skips taps outside the image, which is the same as padding with the input zero point:
    each tap contributes w * (x - zp). The weights' zero point is 0 (symmetric, as TFLM assumes).
    """
    c_out, k_h, k_w, _ = layer.weights.shape
    zp = layer.input_q.zero_point
    patches = im2col(x.astype(np.int16), k_h, k_w, layer.stride, layer.padding, zp, layer.dilation)
    patches -= np.int16(zp)  # |x - zp| <= 255 fits int16 and halves the im2col buffer
    n, oh, ow, cols = patches.shape
    acc = _exact_matmul(patches.reshape(-1, cols), layer.weights.reshape(c_out, cols))
    return _requantize_out(acc, layer).reshape(n, oh, ow, c_out)


def depthwise_conv2d_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """DEPTHWISE_CONV_2D: int8 (N, H, W, C) -> (N, OH, OW, C * M), weights [C * M, k_h, k_w, 1].

    Output channel o reads input channel o // M (M = depth_multiplier). Padding and epilogue as conv.
    The int32 accumulator wraps like the kernel's (numpy int32 arithmetic wraps mod 2^32).
    """
    c_out, k_h, k_w, _ = layer.weights.shape
    zp = layer.input_q.zero_point
    xs = x.astype(np.int16) - np.int16(zp)  # out-of-image taps then read 0, i.e. contribute nothing
    if layer.depth_multiplier > 1:
        xs = np.repeat(xs, layer.depth_multiplier, axis=-1)
    out_hw = _out_hw(x, k_h, k_w, layer)
    w = layer.weights[..., 0].astype(np.int32)  # [C*M, k_h, k_w]
    acc = np.zeros((x.shape[0], *out_hw, c_out), dtype=np.int32)
    for i, j, view in _taps(_pad_hw(xs, layer.padding, 0), k_h, k_w, layer.stride, layer.dilation, out_hw):
        acc += view * w[:, i, j]
    return _requantize_out(acc.astype(np.int64), layer)


def dense_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """FULLY_CONNECTED: int8 (N, *in_shape) -> (N, out), weights [out, in]; a feature-map input is
    read flattened in HWC order, as TFLite does."""
    xs = x.reshape(x.shape[0], -1).astype(np.int16) - np.int16(layer.input_q.zero_point)
    return _requantize_out(_exact_matmul(xs, layer.weights), layer)


def maxpool2d_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """MAX_POOL_2D: max over the in-bounds taps of each window, then the clamp. No requantization:
    max commutes with the affine map, and TFLM requires equal input and output quantization.
    Padding with -128 is the same as skipping out-of-image taps (the max starts at -128)."""
    k_h, k_w = layer.window
    out_hw = _out_hw(x, k_h, k_w, layer)
    out = np.full((x.shape[0], *out_hw, x.shape[3]), INT8_MIN, dtype=np.int8)
    for _, _, view in _taps(_pad_hw(x, layer.padding, INT8_MIN), k_h, k_w, layer.stride, layer.dilation, out_hw):
        np.maximum(out, view, out=out)
    return _clip_s8(out, layer)


def _in_bounds_count(h: int, w: int, layer: QuantLayer | FloatLayer, out_hw: tuple[int, int]) -> np.ndarray:
    """(OH, OW, 1) number of window taps inside the image: the divisor of TFLite's average pooling."""
    k_h, k_w = layer.window
    ones = _pad_hw(np.ones((1, h, w, 1), dtype=np.int32), layer.padding, 0)
    count = np.zeros((1, *out_hw, 1), dtype=np.int32)
    for _, _, view in _taps(ones, k_h, k_w, layer.stride, layer.dilation, out_hw):
        count += view
    if not count.all():
        raise ValueError(f"layer {layer.name}: a pooling window lies entirely in the padding (TFLM fails on it)")
    return count[0]


def avgpool2d_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """AVERAGE_POOL_2D: the raw int8 values (zero point not removed) of the in-bounds taps, summed
    in int32 and divided by the in-bounds count -- padding is not counted -- rounding to nearest
    with ties away from zero; then the clamp."""
    k_h, k_w = layer.window
    out_hw = _out_hw(x, k_h, k_w, layer)
    total = np.zeros((x.shape[0], *out_hw, x.shape[3]), dtype=np.int32)
    for _, _, view in _taps(_pad_hw(x, layer.padding, 0), k_h, k_w, layer.stride, layer.dilation, out_hw):
        total += view
    count = _in_bounds_count(x.shape[1], x.shape[2], layer, out_hw)
    half = count // 2
    mean = np.where(total > 0, (total + half) // count, -((half - total) // count))
    return _clip_s8(mean, layer)


def mean_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """MEAN over H and W: (N, H, W, C) -> (N, 1, 1, C) or (N, C), as layer.out_shape says.

    The raw int8 sum (int32) minus in_zp * count is requantized with the layer's multiplier/shift,
    which already hold TFLM's run-time 1/count fold (int8_params.mean_multiplier). MEAN has no
    fused activation in TFLite; act_min/act_max are applied all the same (the full range for an
    imported model).
    """
    count = x.shape[1] * x.shape[2]
    total = x.astype(np.int64).sum(axis=(1, 2)) - layer.input_q.zero_point * count
    y = requantize(total, layer.multiplier[0], layer.shift[0]) + layer.output_q.zero_point
    return _clip_s8(y, layer).reshape(x.shape[0], *layer.out_shape)


def add_s8(x: np.ndarray, layer: QuantLayer, x2: np.ndarray) -> np.ndarray:
    """ADD: x (quantized input_q) + x2 (other_q) -> output_q, element-wise on equal shapes.

    Each input, zero point removed, is shifted left by ADD_LEFT_SHIFT and scaled onto a common
    scale with its multiplier (multiplier/shift [0] and [1], shifts <= 0, so ``requantize`` is
    TFLM's SmallerThanOneExp form); the int32 sum is scaled to the output by [2], + zp, clamped.
    """
    m, s = layer.multiplier, layer.shift
    a = requantize((x.astype(np.int64) - layer.input_q.zero_point) << ADD_LEFT_SHIFT, m[0], s[0])
    b = requantize((x2.astype(np.int64) - layer.other_q.zero_point) << ADD_LEFT_SHIFT, m[1], s[1])
    return _clip_s8(requantize(wrap_int32(a + b), m[2], s[2]) + layer.output_q.zero_point, layer)


def pad_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """PAD on H and W: new rows/columns hold the output zero point (a real 0.0), as TFLite's PAD."""
    return _pad_hw(x, layer.padding, layer.output_q.zero_point).astype(np.int8, copy=False)


def reshape_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """RESHAPE: the same bytes in a new shape."""
    return x.reshape(x.shape[0], *layer.out_shape)


def softmax_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """SOFTMAX over the last axis, TFLM's int8 fixed-point path; the output is scale 1/256, zp -128.

    Per row: d = x - max(x); entries with d below diff_min get probability 0 (-128). The rest are
    rescaled into Q5.26 by the layer's multiplier / left shift (beta * input scale), exponentiated
    (Q0.31), summed in Q12.19, inverted, and each probability is exp * (1 / sum) in Q0.8, - 128.
    A row whose sum of exps reaches 512 raises ValueError: TFLM CHECK-aborts on it.
    """
    if layer.output_q != SOFTMAX_OUTPUT_Q:
        raise ValueError(f"layer {layer.name}: an int8 softmax outputs scale 1/256, zero point -128, "
                         f"not {layer.output_q}")
    multiplier, left_shift = int(layer.multiplier[0]), int(layer.shift[0])
    xs = x.astype(np.int64)
    diff = xs - xs.max(axis=-1, keepdims=True)
    keep = diff >= softmax_diff_min(left_shift)
    exps = exp_on_negative_values(requantize(diff, multiplier, left_shift), SOFTMAX_INPUT_INTEGER_BITS)
    sum_of_exps = wrap_int32(np.where(keep, rounding_divide_by_pot(exps, 12), 0).sum(axis=-1, keepdims=True))
    reciprocal, bits_over_unit = get_reciprocal(sum_of_exps, 12)  # the sum is Q12.19
    exponent = bits_over_unit + 31 - 8  # Q0.31 * Q0.31 -> probability * 256
    if np.any((exponent < 0) | (exponent > 31)):
        raise ValueError(f"layer {layer.name}: a row's sum of exponentials reaches 512 (TFLM aborts)")
    probability = rounding_divide_by_pot(doubling_high_mult(reciprocal, exps), exponent) + INT8_MIN
    y = np.where(keep, np.clip(probability, INT8_MIN, INT8_MAX), INT8_MIN)
    return _clip_s8(y, layer)


# --- the model boundary ---------------------------------------------------------------------------


def quantize_input(x_float: np.ndarray, q: QParams) -> np.ndarray:
    """float -> int8 exactly as TFLite's QUANTIZE: ``clamp(int32(roundf(x / scale)) + zp)``.

    The division is float32 and halves round away from zero. A quotient beyond int32 (or inf,
    NaN) is an undefined conversion in C; this returns what the x86-64 TFLM wheel gives
    (INT32_MIN, then + zp wraps: 127 when zp < 0, -128 otherwise). An Arm build saturates instead;
    clip the input to the representable range when that matters.
    """
    xf = np.asarray(x_float, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quotient = xf / np.float32(q.scale)
        whole = np.trunc(quotient)
        rounded = whole + np.where(np.abs(quotient - whole) >= np.float32(0.5), np.sign(quotient), np.float32(0))
        fits = np.isfinite(rounded) & (rounded >= -(2.0**31)) & (rounded < 2.0**31)
        as_int32 = np.where(fits, np.where(fits, rounded, 0).astype(np.int64), -(2**31))
    return np.clip(wrap_int32(as_int32 + int(q.zero_point)), INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize_output(x_int8: np.ndarray, q: QParams) -> np.ndarray:
    """int8 -> float32 exactly as TFLite's DEQUANTIZE: ``float32(double(scale) * (x - zp))``, the
    product in double and rounded once."""
    centred = (np.asarray(x_int8, dtype=np.int64) - int(q.zero_point)).astype(np.float64)
    return (float(np.float32(q.scale)) * centred).astype(np.float32)


# --- float ------------------------------------------------------------------------------------------


def _float_weights(layer: FloatLayer) -> np.ndarray:
    return layer.weights if layer.mask is None else layer.weights * layer.mask


def _clamp(y: np.ndarray, layer: FloatLayer) -> np.ndarray:
    lo, hi = layer.clamp
    return y if (lo, hi) == (-np.inf, np.inf) else np.clip(y, np.float32(lo), np.float32(hi))


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _bias(layer: FloatLayer) -> np.ndarray | float:
    return np.float32(0.0) if layer.bias is None else _f32(layer.bias)


def conv2d_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """float (N, H, W, C_in) -> (N, OH, OW, C_out), pruning mask applied, zero padding."""
    w = _f32(_float_weights(layer))
    c_out, k_h, k_w, _ = w.shape
    patches = im2col(_f32(x), k_h, k_w, layer.stride, layer.padding, 0.0, layer.dilation)
    return _clamp(patches @ w.reshape(c_out, -1).T + _bias(layer), layer)


def depthwise_conv2d_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """float (N, H, W, C) -> (N, OH, OW, C * M), weights [C * M, k_h, k_w, 1], mask applied."""
    w = _f32(_float_weights(layer))[..., 0]
    c_out, k_h, k_w = w.shape
    xs = _f32(x)
    if layer.depth_multiplier > 1:
        xs = np.repeat(xs, layer.depth_multiplier, axis=-1)
    out_hw = _out_hw(x, k_h, k_w, layer)
    acc = np.zeros((x.shape[0], *out_hw, c_out), dtype=np.float32)
    for i, j, view in _taps(_pad_hw(xs, layer.padding, 0.0), k_h, k_w, layer.stride, layer.dilation, out_hw):
        acc += view * w[:, i, j]
    return _clamp(acc + _bias(layer), layer)


def dense_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """float (N, *in_shape) -> (N, out), input flattened HWC-major, mask applied."""
    return _clamp(_f32(x).reshape(x.shape[0], -1) @ _f32(_float_weights(layer)).T + _bias(layer), layer)


def maxpool2d_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """Max over the in-bounds taps of each window (padding never wins)."""
    k_h, k_w = layer.window
    out_hw = _out_hw(x, k_h, k_w, layer)
    out = np.full((x.shape[0], *out_hw, x.shape[3]), -np.inf, dtype=np.float32)
    for _, _, view in _taps(_pad_hw(_f32(x), layer.padding, -np.inf), k_h, k_w, layer.stride, layer.dilation,
                            out_hw):
        np.maximum(out, view, out=out)
    return _clamp(out, layer)


def avgpool2d_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """Average over the in-bounds taps of each window (padding not counted, as TFLite)."""
    k_h, k_w = layer.window
    out_hw = _out_hw(x, k_h, k_w, layer)
    total = np.zeros((x.shape[0], *out_hw, x.shape[3]), dtype=np.float32)
    for _, _, view in _taps(_pad_hw(_f32(x), layer.padding, 0.0), k_h, k_w, layer.stride, layer.dilation, out_hw):
        total += view
    return _clamp(total / _in_bounds_count(x.shape[1], x.shape[2], layer, out_hw).astype(np.float32), layer)


def mean_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """Mean over H and W: (N, H, W, C) -> (N, *out_shape)."""
    return _clamp(_f32(x).mean(axis=(1, 2), dtype=np.float32), layer).reshape(x.shape[0], *layer.out_shape)


def add_f32(x: np.ndarray, layer: FloatLayer, x2: np.ndarray) -> np.ndarray:
    return _clamp(_f32(x) + _f32(x2), layer)


def pad_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """Zero padding on H and W."""
    return _pad_hw(_f32(x), layer.padding, 0.0)


def reshape_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    return x.reshape(x.shape[0], *layer.out_shape)


def softmax_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """exp(beta * (x - max)) / sum over the last axis, float32."""
    z = np.float32(layer.beta) * (_f32(x) - _f32(x).max(axis=-1, keepdims=True))
    e = np.exp(z)
    return _clamp(e / e.sum(axis=-1, keepdims=True), layer)


# --- helpers kept for callers outside the operator table ---------------------------------------------


def maxpool2d(x: np.ndarray, pool: int) -> np.ndarray:
    """Max pooling with window == stride == `pool`, no padding (trailing rows/columns dropped)."""
    n, h, w, c = x.shape
    oh, ow = h // pool, w // pool
    return x[:, : oh * pool, : ow * pool, :].reshape(n, oh, pool, ow, pool, c).max(axis=(2, 4))

