"""The integers TFLite Micro derives from a model's float32 scales, derived the same way.

TFLM's int8 kernels never touch a float while they run. In Prepare each kernel turns the float32
``scale`` fields of its tensors into int32 multipliers, shifts and clamp bounds, and only those
integers drive the arithmetic. Bit-exactness with TFLM therefore starts here: the float
expression, its evaluation order and its precision (float32 or double) all matter, because a
one-ulp change in a double multiplier can move the rounded Q31 multiplier by one, which flips an
output LSB a few times in ten thousand outputs.

**Every scale is rounded to float32 first**, whatever precision the caller holds it in, because a
.tflite file can only store float32 and TFLM starts from ``double(float32(s))``. Deriving the
multipliers from float64 calibration scales instead moves almost every multiplier by tens of LSBs
and makes a reference disagree with TFLM on ~1 in 10,000 images (measured on the MLPerf Tiny
models: 11-51 images in 10,000 with a different output byte).

What is derived, as TFLM's wheel does it (TFLM built without TFLITE_SINGLE_ROUNDING):

* conv, depthwise and fully connected: per output channel
  ``QuantizeMultiplier((double(in_s) * double(w_s[c])) / double(out_s))``, left to right in double.
  TFLM's source writes the per-tensor FC product as ``float(in_s * w_s)`` (rounded to float32
  before the division), but the machine code of the installed wheel widens both scales and
  multiplies in double; zero-weight probe models, whose biases sit where the two derivations round
  differently, match the double product on every probe. The wheel is the oracle.
* ADD: both inputs go onto a common scale ``2 * max(s1, s2)`` with 20 bits of headroom.
* SOFTMAX: the input difference rescaled into Q5.26 by ``beta * in_s * 2^26``.
* MEAN: ``in_s / out_s``, with the ``1 / count`` TFLM folds in at run time folded in here.
* fused activations: ``zp + roundf(bound / scale)`` computed in float32.
"""

from __future__ import annotations

import math

import numpy as np

from mcuprune.model.fixedpoint import quantize_multiplier, quantize_multipliers
from mcuprune.model.ir import RELU, RELU6, UNBOUNDED, QParams

INT8_MIN, INT8_MAX = -128, 127
ADD_LEFT_SHIFT = 20  # headroom bits ADD gives its int8 inputs before rescaling them
SOFTMAX_INPUT_INTEGER_BITS = 5  # the rescaled difference x - max(x) is Q5.26
SOFTMAX_OUTPUT_Q = QParams(scale=1.0 / 256.0, zero_point=-128)  # the only int8 output TFLM's SOFTMAX takes

# TFLite's fused activations as real clamp ranges (ActivationFunctionType name -> (lo, hi)).
FUSED_ACTIVATIONS: dict[str, tuple[float, float]] = {
    "NONE": UNBOUNDED,
    "RELU": RELU,
    "RELU6": RELU6,
    "RELU_N1_TO_1": (-1.0, 1.0),
}


def file_scale(scale: float | np.floating) -> float:
    """A scale as TFLM sees it: rounded to the float32 the file holds, widened to double."""
    return float(np.float32(scale))


def _file_scales(scales: np.ndarray | float) -> np.ndarray:
    return np.atleast_1d(np.asarray(scales, dtype=np.float32)).astype(np.float64)


def quantize_multiplier_smaller_than_one(real: float) -> tuple[int, int]:
    """QuantizeMultiplier for 0 < real < 1 (shift <= 0); TFLM aborts in Prepare for anything else,
    so this raises ValueError instead."""
    if not 0.0 < real < 1.0:
        raise ValueError(f"rescale factor {real} must be in (0, 1): TFLM aborts in Prepare otherwise")
    return quantize_multiplier(real)


def quantize_multiplier_greater_than_one(real: float) -> tuple[int, int]:
    """QuantizeMultiplier for real > 1 (shift >= 0); TFLM aborts in Prepare otherwise, this raises ValueError."""
    if not real > 1.0:
        raise ValueError(f"rescale factor {real} must be > 1: TFLM aborts in Prepare otherwise")
    return quantize_multiplier(real)


def _round_half_away(v: float) -> float:
    """C round(): halves go away from zero (Python's round() goes to even, which TFLM never does)."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def quantize_bound(value: float, q: QParams) -> int:
    """``zp + roundf(float32(value) / float32(scale))``: a real clamp bound as an integer, in float32
    like TFLM's activation range (a double division would round some bounds differently)."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        quotient = np.float32(value) / np.float32(q.scale)
    rounded = _round_half_away(float(quotient))  # exact: a float32 is exact in double, and so is its roundf
    if not -(2.0**31) <= rounded <= 2.0**31 - 1:
        raise ValueError(f"bound {value} at scale {q.scale} overflows int32 (TFLM's Prepare fails)")
    return int(q.zero_point) + int(rounded)


def activation_range(clamp: tuple[float, float], q: QParams) -> tuple[int, int]:
    """The int8 clamp [act_min, act_max] of a real clamp range on an output quantized with `q`.

    An infinite bound is the int8 limit; a finite one is quantized with quantize_bound and
    intersected with [-128, 127]. With the ranges of FUSED_ACTIVATIONS this is TFLM's
    CalculateActivationRangeQuantized for NONE, RELU, RELU6 and RELU_N1_TO_1, and any other range
    (a clamp the training learned) follows the same rule.
    """
    lo, hi = clamp
    act_min = INT8_MIN if lo == -math.inf else max(INT8_MIN, quantize_bound(lo, q))
    act_max = INT8_MAX if hi == math.inf else min(INT8_MAX, quantize_bound(hi, q))
    return act_min, act_max


def conv_multipliers(input_scale: float, weight_scales: np.ndarray | float, output_scale: float,
                     channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (multiplier, shift) int32 arrays of CONV_2D, DEPTHWISE_CONV_2D and
    FULLY_CONNECTED: ``(double(in_s) * double(w_s[c])) / double(out_s)``, left to right in double.

    One weight scale (per-tensor weights) is repeated over `channels`: TFLM's conv is always
    per-channel, and its per-tensor FC derives the same number (see the module docstring).
    """
    ws = _file_scales(weight_scales)
    if ws.size == 1 and channels is not None:
        ws = np.repeat(ws, channels)
    elif channels is not None and ws.size != channels:
        raise ValueError(f"{ws.size} weight scales for {channels} output channels")
    effective = (file_scale(input_scale) * ws) / file_scale(output_scale)
    return quantize_multipliers(effective)


def fc_bias_scale_ok(input_scale: float, weight_scale: float, bias_scale: float, output_scale: float) -> bool:
    """TFLM's per-tensor FULLY_CONNECTED refuses (Prepare fails) a bias whose scale is more than 2 %
    of the output scale away from ``in_s * w_s``; per-channel FC and conv do not check."""
    product = file_scale(input_scale) * file_scale(weight_scale)
    return abs(product - file_scale(bias_scale)) / file_scale(output_scale) <= 0.02


def add_multipliers(input1_scale: float, input2_scale: float, output_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """ADD's (multiplier, shift) int32 arrays for [input 1, input 2, output].

    Each input, zero point removed and shifted left by ADD_LEFT_SHIFT (so rounding keeps 20 bits
    of headroom), is scaled onto ``twice_max = 2 * max(s1, s2)``: multipliers ``s_i / twice_max``
    (<= 1/2). The sum goes to the output scale with ``twice_max / (2^20 * out_s)``. Every factor
    must be in (0, 1) -- TFLM CHECK-aborts otherwise (an output scale below ``twice_max / 2^20``),
    so this raises ValueError. The max is taken on the float32 scales, as TFLM does.
    """
    s1, s2, so = file_scale(input1_scale), file_scale(input2_scale), file_scale(output_scale)
    twice_max = 2.0 * max(s1, s2)
    pairs = [quantize_multiplier_smaller_than_one(s1 / twice_max),
             quantize_multiplier_smaller_than_one(s2 / twice_max),
             quantize_multiplier_smaller_than_one(twice_max / (float(1 << ADD_LEFT_SHIFT) * so))]
    return (np.array([m for m, _ in pairs], dtype=np.int32), np.array([s for _, s in pairs], dtype=np.int32))


def softmax_multiplier(input_scale: float, beta: float = 1.0) -> tuple[int, int]:
    """SOFTMAX's (input multiplier, input left shift): ``x - max(x)`` rescaled into Q5.26 by
    ``min(double(beta) * double(in_s) * 2^26, 2^31 - 1)``. beta is a float32 option in the file."""
    real = file_scale(beta) * file_scale(input_scale) * float(1 << (31 - SOFTMAX_INPUT_INTEGER_BITS))
    return quantize_multiplier_greater_than_one(min(real, float(2**31 - 1)))


def softmax_diff_min(input_left_shift: int) -> int:
    """The smallest ``x - max(x)`` that still counts: below it the rescaled difference would leave
    int32, so TFLM gives those entries probability 0. ``-floor(31 * 2^26 / 2^left_shift)``."""
    ib = SOFTMAX_INPUT_INTEGER_BITS
    return -math.floor(((1 << ib) - 1) * float(1 << (31 - ib)) / float(1 << int(input_left_shift)))


def fold_mean_count(multiplier: int, shift: int, count: int) -> tuple[int, int]:
    """Fold ``1 / count`` into a MEAN's (multiplier, shift) exactly as TFLM does at run time.

    ``s = min(floor(log2 count), 32, 31 + shift)``, ``m' = (m << s) // count`` (truncated, in
    64 bits), ``shift' = shift - s``. m' keeps >= 30 significant bits but is truncated, not rounded,
    so the effective scale sits a hair below ``in_s / (out_s * count)``; an exact tie is therefore
    not always ``round(mean)`` -- it is what TFLM computes.
    """
    if count < 1:
        raise ValueError(f"MEAN over {count} elements")
    s = min(count.bit_length() - 1, 32, 31 + int(shift))
    return (int(multiplier) << s) // count, int(shift) - s


def mean_multiplier(input_scale: float, output_scale: float, count: int) -> tuple[int, int]:
    """MEAN's final (multiplier, shift) for a mean over `count` elements (H * W): TFLM's
    ``QuantizeMultiplier(double(in_s) / double(out_s))`` in Prepare, then fold_mean_count.
    The kernel then only computes ``requantize(sum - in_zp * count, m', shift') + out_zp``."""
    m, s = quantize_multiplier(file_scale(input_scale) / file_scale(output_scale))
    return fold_mean_count(m, s, count)


def pool_quantization_ok(input_q: QParams, output_q: QParams) -> bool:
    """Pooling never rescales: TFLM's Prepare requires equal zero points and float32 scales within 1e-6."""
    close = abs(float(np.float32(input_q.scale) - np.float32(output_q.scale))) <= 1e-6
    return close and int(input_q.zero_point) == int(output_q.zero_point)
