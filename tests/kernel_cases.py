"""Layer cases for the kernel tests (test_kernels.py: dense kernels, test_sparse.py: pruned weights).

A ``Case`` describes one FC or conv layer; ``make_layer`` turns it into a seeded random QuantLayer
and an input for it, with requantization chosen so the outputs spread over about +-100 levels
around the output zero point; ``random_cases`` draws cases of any shape the kernels accept. Also
the ctypes mirror of ``mcup_quant_params`` that both tests pass to the kernels.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from mcuprune.model.fixedpoint import quantize_multipliers
from mcuprune.model.ir import Op, QParams, QuantLayer, conv_out_hw
from mcuprune.model.reference import im2col


@dataclass(frozen=True)
class Case:
    """One layer configuration. `rescale` > 1 widens the output spread (20 saturates most outputs).
    Small x_max/w_max give small accumulators, hence rescale factors > 1 (left shifts).

    sparsity None: a dense layer, weights drawn from [-w_max, w_max), bias scaled to the
    accumulators, one channel with multiplier 0. Otherwise a pruned one: that fraction of the
    weights is 0 (random mask, or `pattern`), the others are never 0; bias in [-2000, 2000)."""

    name: str
    op: Op
    in_shape: tuple[int, ...]  # (H, W, C) or (features,)
    out_c: int  # out_features for dense
    k: int = 3
    k_w: int | None = None  # None: square kernel k x k
    stride: int = 1
    pad: int = 0
    in_zp: int = 0
    out_zp: int = 0
    relu: bool = False
    null_bias: bool = False
    rescale: float = 1.0
    x_max: int = 128  # inputs drawn from [-x_max, x_max)
    w_max: int = 128  # dense weights drawn from [-w_max, w_max)
    seed: int = 0
    misalign: bool = False  # weights, input and output start 1 byte past a word boundary
    act_max: int = 127  # clamp top passed to the kernel (QuantLayer always has 127)
    sparsity: float | None = None  # fraction of weights pruned; None: not pruned
    pattern: str = "random"  # pruned: random | zero_rows | gaps (non-zeros 15/16/255/256/300 apart)


def _pruned_weights(case: Case, rng: np.random.Generator, w_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(weights, mask): non-zero magnitudes where the mask is set, 0 elsewhere."""
    magnitudes = rng.integers(1, 128, size=w_shape) * rng.choice([-1, 1], size=w_shape)
    mask = rng.random(w_shape) >= case.sparsity
    flat = mask.reshape(case.out_c, -1)
    if case.pattern == "zero_rows":
        flat[::2] = False
    elif case.pattern == "gaps":
        flat[:] = False
        cols = flat.shape[1]
        for r in range(case.out_c):
            c = r % 3
            for gap in (15, 16, 255, 256, 300, 1)[r % 2 :]:
                if c < cols:
                    flat[r, c] = True
                c += gap
    return np.where(mask, magnitudes, 0).astype(np.int8), mask


def make_layer(case: Case) -> tuple[QuantLayer, np.ndarray]:
    """A QuantLayer with seeded random int8 weights (pruned if case.sparsity is set) and an input."""
    rng = np.random.default_rng(case.seed)
    if case.op is Op.DENSE:
        in_shape: tuple[int, ...] = case.in_shape
        out_shape: tuple[int, ...] = (case.out_c,)
        w_shape: tuple[int, ...] = (case.out_c, in_shape[0])
    else:
        h, w, c = case.in_shape
        k_w = case.k if case.k_w is None else case.k_w
        in_shape, out_shape = (h, w, c), (*conv_out_hw(h, w, case.k, k_w, case.stride, case.pad), case.out_c)
        w_shape = (case.out_c, case.k, k_w, c)
    if case.sparsity is None:
        weights, mask = rng.integers(-case.w_max, case.w_max, size=w_shape).astype(np.int8), None
    else:
        weights, mask = _pruned_weights(case, rng, w_shape)
    x = rng.integers(-case.x_max, case.x_max, size=in_shape).astype(np.int8)
    fan_in = int(np.prod(w_shape[1:]))
    # dense: about the accumulator spread; pruned: fixed
    bias_max = int(case.x_max * case.w_max * np.sqrt(fan_in) / 4) + 1 if case.sparsity is None else 2000
    bias = rng.integers(-bias_max, bias_max, size=case.out_c).astype(np.int32)
    if case.op is Op.DENSE:
        patches = x.astype(np.int64)[None] - case.in_zp
    else:
        _, k_h, k_w, _ = weights.shape
        patches = im2col(x.astype(np.int64)[None], k_h, k_w, case.stride, case.pad, case.in_zp) - case.in_zp
    acc = patches.reshape(-1, fan_in) @ weights.reshape(case.out_c, -1).astype(np.int64).T
    acc = acc + (0 if case.null_bias else bias)
    spread = np.maximum(np.abs(acc).max(axis=0), 1)  # per output channel
    reals = case.rescale * 100.0 / spread * rng.uniform(0.3, 1.2, size=case.out_c)
    if case.sparsity is None and case.out_c > 2:
        reals[1] = 0.0  # a channel with multiplier 0 (dead channel)
    multiplier, shift = quantize_multipliers(reals)
    layer = QuantLayer(
        name=case.name, op=case.op, in_shape=in_shape, out_shape=out_shape,
        input_q=QParams(0.02, case.in_zp), output_q=QParams(0.05, case.out_zp),
        weights=weights, bias=np.zeros_like(bias) if case.null_bias else bias,
        multiplier=multiplier, shift=shift, relu=case.relu, stride=case.stride, pad=case.pad, mask=mask,
    )  # fmt: skip
    return layer, x


@st.composite
def random_cases(draw, op: Op, max_features: int, max_hw: int, max_in_c: int,
                 sparsities: list[float] | None = None) -> Case:
    """Small layers of any shape the kernels accept: dense ones (with a rescale), or pruned at one
    of `sparsities`. Up to max_features inputs (FC), max_hw for H, W and each kernel side, max_in_c
    input channels (conv)."""
    sparsity = None if sparsities is None else draw(st.sampled_from(sparsities))
    common = dict(
        sparsity=sparsity,
        in_zp=draw(st.integers(-128, 127)),
        out_zp=draw(st.integers(-128, 127)),
        relu=draw(st.booleans()),
        null_bias=draw(st.booleans()),
        rescale=draw(st.sampled_from([0.5, 1.0, 3.0])) if sparsity is None else 1.0,
        seed=draw(st.integers(0, 2**16)),
    )
    if op is Op.DENSE:
        return Case("random", op, (draw(st.integers(1, max_features)),), draw(st.integers(1, 9)), **common)
    h, w, k_h, k_w = (draw(st.integers(1, max_hw)) for _ in range(4))
    pad = draw(st.integers(0, max(min(k_h, k_w) - 1, 0)))
    assume(h + 2 * pad >= k_h and w + 2 * pad >= k_w)
    in_c, out_c, stride = draw(st.integers(1, max_in_c)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    return Case("random", op, (h, w, in_c), out_c, k=k_h, k_w=k_w, stride=stride, pad=pad, **common)


# --- ctypes mirror of mcup_quant_params (firmware/include/mcup_nn.h) ---------------------------

_I32P = ctypes.POINTER(ctypes.c_int32)


class QuantParamsC(ctypes.Structure):
    _fields_ = [("bias", _I32P), ("multiplier", _I32P), ("shift", _I32P)] + [
        (name, ctypes.c_int32) for name in ("input_offset", "output_offset", "act_min", "act_max")
    ]


def c_ptr(array: np.ndarray | None, ctype):
    """A ctypes pointer to a C-contiguous array's data; NULL for None or an empty array."""
    if array is None or array.size == 0:
        return ctypes.POINTER(ctype)()
    assert array.flags.c_contiguous
    return array.ctypes.data_as(ctypes.POINTER(ctype))


def quant_params(layer: QuantLayer, null_bias: bool, act_max: int | None = None) -> tuple[QuantParamsC, list]:
    """(mcup_quant_params of the layer, the arrays it points into: keep them alive for the call).
    null_bias passes bias = NULL; act_max overrides the clamp's top (QuantLayer always has 127)."""
    keep = [
        None if null_bias else np.ascontiguousarray(layer.bias, dtype=np.int32),
        np.ascontiguousarray(layer.multiplier, dtype=np.int32),
        np.ascontiguousarray(layer.shift, dtype=np.int32),
    ]
    q = QuantParamsC(
        bias=c_ptr(keep[0], ctypes.c_int32), multiplier=c_ptr(keep[1], ctypes.c_int32),
        shift=c_ptr(keep[2], ctypes.c_int32), input_offset=-layer.input_q.zero_point,
        output_offset=layer.output_q.zero_point, act_min=layer.act_min,
        act_max=layer.act_max if act_max is None else act_max,
    )  # fmt: skip
    return q, keep
