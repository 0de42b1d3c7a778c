"""Layer cases for the kernel tests (test_kernels.py: dense conv/FC, test_sparse.py: pruned weights,
test_graph_kernels.py: depthwise, pooling, mean, add, pad, softmax) and the ctypes side of calling
the kernels.

One shared case table: ``GEOMETRIES`` (window geometries: strides (1,1) (2,2) (1,2) (2,1), SAME-like
asymmetric padding, dilation 2, kernels 1x1 to 10x4, odd channel counts) becomes conv, depthwise
and pooling cases; the ops without weights have their own tables (``ADD_CASES`` ...). ``make_layer``
turns a weighted ``Case`` into a seeded random QuantLayer and an input, its requantization derived
through int8_params (``conv_multipliers`` from float32 scales chosen so the outputs spread over about
+-100 levels); the other ``make_*_layer`` functions build theirs through the same quantization
functions (``add_multipliers``, ``softmax_multiplier``, ``mean_multiplier``). ``random_cases`` draws
cases of any shape the kernels accept.

The ctypes mirror of every parameter struct is generated from the operator table (``ops.OpSpec.fields``
in C order, then the weight pointers of the format and ``mcup_quant_params``), so a field the
table emits and the C header lacks fails the layout check (``layout_source``).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from mcuprune.model.formats import pack
from mcuprune.model.int8_params import (
    SOFTMAX_OUTPUT_Q,
    activation_range,
    add_multipliers,
    conv_multipliers,
    mean_multiplier,
    softmax_multiplier,
)
from mcuprune.model.ir import Op, QParams, QuantLayer, conv_out_hw, same_padding
from mcuprune.model.ops import spec_of
from mcuprune.model.reference import im2col

Pair = tuple[int, int]
Padding = tuple[int, int, int, int]


def _pair(v: int | Pair) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _padding(v: int | Padding) -> Padding:
    return (v,) * 4 if isinstance(v, int) else tuple(int(p) for p in v)  # type: ignore[return-value]


@dataclass(frozen=True)
class Case:
    """One weighted layer (DENSE, CONV2D or DEPTHWISE_CONV2D). `rescale` > 1 widens the output
    spread (20 saturates most outputs). Small x_max/w_max give small accumulators, hence rescale
    factors > 1 (left shifts).

    `stride` is (y, x) or one int, `pad` (top, bottom, left, right) or one int for all sides. The
    clamp is [max(-128, out_zp), act_max] with `relu`, else [act_min, act_max].

    sparsity None: a dense layer, weights drawn from [-w_max, w_max), bias scaled to the
    accumulators, one channel with multiplier 0. Otherwise a pruned one: that fraction of the
    weights is 0 (random mask, or `pattern`), the others are never 0; bias in [-2000, 2000).

    bits 4: int4 weights (the layer's weight_bits), drawn from [-8, 7] whatever w_max (the full
    int4 range, -8 included, though mcuprune's own quantization stops at -7)."""

    name: str
    op: Op
    in_shape: tuple[int, ...]  # (H, W, C) or (features,)
    out_c: int  # out_features for dense; ignored for depthwise (in_c * depth_multiplier)
    k: int = 3
    k_w: int | None = None  # None: square kernel k x k
    stride: int | Pair = 1
    pad: int | Padding = 0
    dilation: Pair = (1, 1)
    depth_multiplier: int = 1
    in_zp: int = 0
    out_zp: int = 0
    relu: bool = False
    act_min: int = -128
    act_max: int = 127
    null_bias: bool = False
    rescale: float = 1.0
    x_max: int = 128  # inputs drawn from [-x_max, x_max)
    w_max: int = 128  # dense weights drawn from [-w_max, w_max)
    seed: int = 0
    misalign: bool = False  # weights, input and output start 1 byte past a word boundary
    sparsity: float | None = None  # fraction of weights pruned; None: not pruned
    pattern: str = "random"  # pruned: random | zero_rows | gaps (non-zeros 15/16/255/256/300 apart) | blocks (1 x 4)
    bits: int = 8  # weight width: 8, or 4 (int4 weights in [-8, 7])

    @property
    def strides(self) -> Pair:
        return _pair(self.stride)

    @property
    def padding(self) -> Padding:
        return _padding(self.pad)

    @property
    def kernel(self) -> Pair:
        return self.k, self.k if self.k_w is None else self.k_w

    @property
    def clamp(self) -> Pair:
        return (max(-128, self.out_zp) if self.relu else self.act_min), self.act_max


def _pruned_weights(case: Case, rng: np.random.Generator, w_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(weights, mask): non-zero magnitudes where the mask is set, 0 elsewhere."""
    top = 128 if case.bits == 8 else 8
    magnitudes = np.clip(rng.integers(1, top, size=w_shape) * rng.choice([-1, 1], size=w_shape), -top, top - 1)
    if case.bits == 4:
        magnitudes = np.where(rng.random(w_shape) < 0.1, -8, magnitudes)  # -8: the int4 value int8 lacks
    mask = rng.random(w_shape) >= case.sparsity
    rows = w_shape[0]
    flat = mask.reshape(rows, -1)
    if case.pattern == "blocks":  # whole blocks of 4 consecutive columns (block4's speed path), that fraction pruned
        blocks = rng.random((rows, -(-flat.shape[1] // 4))) >= case.sparsity
        flat[:] = np.repeat(blocks, 4, axis=1)[:, : flat.shape[1]]
    if case.pattern == "zero_rows":
        flat[::2] = False
    elif case.pattern == "gaps":
        flat[:] = False
        cols = flat.shape[1]
        for r in range(rows):
            c = r % 3
            for gap in (15, 16, 255, 256, 300, 1)[r % 2 :]:
                if c < cols:
                    flat[r, c] = True
                c += gap
    return np.where(mask, magnitudes, 0).astype(np.int8), mask


def accumulators(case: Case, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The layer's int64 accumulators without bias, (pixels, out_channels), zero point removed."""
    if case.op is Op.DENSE:
        return (x.astype(np.int64)[None] - case.in_zp) @ weights.astype(np.int64).T
    out_c, k_h, k_w, _ = weights.shape
    patches = im2col(x.astype(np.int64)[None], k_h, k_w, case.strides, case.padding, case.in_zp, case.dilation)
    patches = patches - case.in_zp
    if case.op is Op.CONV2D:
        return patches.reshape(-1, weights[0].size) @ weights.reshape(out_c, -1).astype(np.int64).T
    taps = patches.reshape(-1, k_h * k_w, x.shape[2])  # [pixel][tap][in channel]
    channel = np.arange(out_c) // case.depth_multiplier
    return np.einsum("ptc,ct->pc", taps[:, :, channel], weights.reshape(out_c, -1).astype(np.int64))


def make_layer(case: Case) -> tuple[QuantLayer, np.ndarray]:
    """A QuantLayer with seeded random int8 weights (pruned if case.sparsity is set) and an input.

    The requantization goes through int8_params.conv_multipliers: input scale 0.02, output scale
    0.05, and per-channel float32 weight scales chosen so each channel's outputs spread over about
    rescale * 100 levels."""
    rng = np.random.default_rng(case.seed)
    k_h, k_w = case.kernel
    if case.op is Op.DENSE:
        in_shape: tuple[int, ...] = case.in_shape
        out_c = case.out_c
        out_shape: tuple[int, ...] = (out_c,)
        w_shape: tuple[int, ...] = (out_c, in_shape[0])
    else:
        h, w, c = case.in_shape
        out_c = c * case.depth_multiplier if case.op is Op.DEPTHWISE_CONV2D else case.out_c
        in_shape = (h, w, c)
        out_shape = (*conv_out_hw(h, w, k_h, k_w, case.strides, case.padding, case.dilation), out_c)
        w_shape = (out_c, k_h, k_w, 1 if case.op is Op.DEPTHWISE_CONV2D else c)
    if case.sparsity is None:
        w_max = case.w_max if case.bits == 8 else 8
        weights, mask = rng.integers(-w_max, w_max, size=w_shape).astype(np.int8), None
    else:
        weights, mask = _pruned_weights(case, rng, w_shape)
    x = rng.integers(-case.x_max, case.x_max, size=in_shape).astype(np.int8)
    fan_in = int(np.prod(w_shape[1:]))
    # dense: about the accumulator spread; pruned: fixed
    w_max = case.w_max if case.bits == 8 else 8
    bias_max = int(case.x_max * w_max * np.sqrt(fan_in) / 4) + 1 if case.sparsity is None else 2000
    bias = rng.integers(-bias_max, bias_max, size=out_c).astype(np.int32)
    acc = accumulators(case, x, weights) + (0 if case.null_bias else bias)
    spread = np.maximum(np.abs(acc).max(axis=0), 1)  # per output channel
    reals = case.rescale * 100.0 / spread * rng.uniform(0.3, 1.2, size=out_c)
    if case.sparsity is None and out_c > 2:
        reals[1] = 0.0  # a channel with multiplier 0 (dead channel)
    input_q, output_q = QParams(0.02, case.in_zp), QParams(0.05, case.out_zp)
    weight_scales = (reals * output_q.scale / input_q.scale).astype(np.float32)
    multiplier, shift = conv_multipliers(input_q.scale, weight_scales, output_q.scale, out_c)
    act_min, act_max = case.clamp
    layer = QuantLayer(
        name=case.name, op=case.op, in_shape=in_shape, out_shape=out_shape, input_q=input_q, output_q=output_q,
        weights=weights, bias=np.zeros_like(bias) if case.null_bias else bias, weight_scales=weight_scales,
        multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max, stride=case.strides,
        padding=case.padding, dilation=case.dilation, depth_multiplier=case.depth_multiplier, mask=mask,
        weight_bits=case.bits,
    )  # fmt: skip
    return layer, x


@st.composite
def random_cases(
    draw, op: Op, max_features: int, max_hw: int, max_in_c: int, sparsities: list[float] | None = None,
    bits: int = 8,
) -> Case:
    """Small layers of any shape the kernels accept: dense ones (with a rescale), or pruned at one
    of `sparsities`. Up to max_features inputs (FC), max_hw for H, W and each kernel side, max_in_c
    input channels (conv); any strides up to 3, padding (each side up to the kernel), dilation up
    to 2, depth multipliers up to 3, clamps that bite."""
    sparsity = None if sparsities is None else draw(st.sampled_from(sparsities))
    out_zp = draw(st.integers(-128, 127))
    act_min, act_max = sorted(draw(st.sampled_from([(-128, 127), (-128, 127), (-100, 50), (out_zp, 127)])))
    common = dict(
        sparsity=sparsity,
        in_zp=draw(st.integers(-128, 127)),
        out_zp=out_zp,
        act_min=max(act_min, -128),
        act_max=act_max,
        null_bias=draw(st.booleans()),
        rescale=draw(st.sampled_from([0.5, 1.0, 3.0])) if sparsity is None else 1.0,
        seed=draw(st.integers(0, 2**16)),
        bits=bits,
    )
    if op is Op.DENSE:
        return Case("random", op, (draw(st.integers(1, max_features)),), draw(st.integers(1, 9)), **common)
    h, w, k_h, k_w = (draw(st.integers(1, max_hw)) for _ in range(4))
    dilation = (draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2])))
    pads = tuple(draw(st.integers(0, k)) for k in (k_h, k_h, k_w, k_w))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    eff_h, eff_w = (k_h - 1) * dilation[0] + 1, (k_w - 1) * dilation[1] + 1
    assume(h + pads[0] + pads[1] >= eff_h and w + pads[2] + pads[3] >= eff_w)
    in_c = draw(st.integers(1, max_in_c))
    multiplier = draw(st.integers(1, 3)) if op is Op.DEPTHWISE_CONV2D else 1
    return Case("random", op, (h, w, in_c), draw(st.integers(1, 6)), k=k_h, k_w=k_w, stride=stride, pad=pads,
                dilation=dilation, depth_multiplier=multiplier, **common)  # fmt: skip


# --- the shared geometry table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Where windows sit over an HWC map: conv, depthwise and pooling cases are made from these."""

    name: str
    in_shape: tuple[int, int, int]
    kernel: Pair  # (k_h, k_w); the pooling window
    stride: Pair = (1, 1)
    padding: Padding = (0, 0, 0, 0)
    dilation: Pair = (1, 1)

    @property
    def pool_ok(self) -> bool:
        """Every window has an in-image tap and no dilation (TFLM's pooling needs both)."""
        h, w, _ = self.in_shape
        (k_h, k_w), (s_y, s_x), (top, _, left, _) = self.kernel, self.stride, self.padding
        oh, ow = conv_out_hw(h, w, k_h, k_w, self.stride, self.padding, self.dilation)
        last_y, last_x = (oh - 1) * s_y - top, (ow - 1) * s_x - left
        return self.dilation == (1, 1) and top < k_h and left < k_w and last_y < h and last_x < w


def _same(h: int, w: int, k_h: int, k_w: int, stride: Pair, dilation: Pair = (1, 1)) -> Padding:
    return same_padding(h, w, k_h, k_w, stride, dilation)


GEOMETRIES = [
    Geometry("k3_s11_same", (7, 6, 5), (3, 3), (1, 1), (1, 1, 1, 1)),
    Geometry("k3_s22_same_asym", (8, 9, 3), (3, 3), (2, 2), _same(8, 9, 3, 3, (2, 2))),  # bottom/right extra
    Geometry("k3_s12", (6, 9, 4), (3, 3), (1, 2), (1, 1, 1, 1)),
    Geometry("k3_s21_asym", (9, 6, 7), (3, 3), (2, 1), (1, 0, 0, 1)),
    Geometry("k3_s11_valid", (6, 5, 8), (3, 3)),
    Geometry("k3_dil2_same", (9, 8, 6), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    Geometry("k3_dil2_s2_asym", (11, 10, 3), (3, 3), (2, 2), _same(11, 10, 3, 3, (2, 2), (2, 2)), (2, 2)),
    Geometry("k3_dil12", (7, 9, 4), (3, 3), (1, 1), (1, 1, 2, 2), (1, 2)),
    Geometry("k1_pointwise", (5, 4, 9), (1, 1)),
    Geometry("k1_s22", (7, 5, 6), (1, 1), (2, 2)),
    Geometry("k5_pad2", (7, 8, 3), (5, 5), (1, 1), (2, 2, 2, 2)),
    Geometry("k5_s2_same", (9, 9, 5), (5, 5), (2, 2), _same(9, 9, 5, 5, (2, 2))),
    Geometry("k10x4_s22_same", (13, 10, 1), (10, 4), (2, 2), _same(13, 10, 10, 4, (2, 2))),  # DS-CNN's first
    Geometry("k2_s22", (8, 6, 12), (2, 2), (2, 2)),  # max-pool's usual window
    Geometry("k3_s22_pad_bottom_right", (7, 7, 4), (3, 3), (2, 2), (0, 1, 0, 1)),
    Geometry("k3_wide_pad_top_left", (5, 6, 2), (3, 3), (1, 1), (2, 0, 2, 0)),
]


def geometry_case(g: Geometry, op: Op, *, out_c: int = 5, seed: int = 0, **kw) -> Case:
    """A weighted Case on geometry g (conv: out_c output channels; depthwise: depth_multiplier=...)."""
    return Case(f"{op.value}_{g.name}", op, g.in_shape, out_c, k=g.kernel[0], k_w=g.kernel[1], stride=g.stride,
                pad=g.padding, dilation=g.dilation, seed=seed, **kw)  # fmt: skip


def geometry_cases(op: Op, **kw) -> list[Case]:
    """One case per geometry, zero points and clamps varied over the table (every third clamp bites)."""
    cases = []
    for i, g in enumerate(GEOMETRIES):
        zp = [(-128, -128), (5, -7), (-3, 20), (127, 0)][i % 4]
        clamp = [{}, {"relu": True}, {"act_min": -60, "act_max": 45}][i % 3]
        cases.append(geometry_case(g, op, in_zp=zp[0], out_zp=zp[1], seed=100 + i, **clamp, **kw))
    return cases


# --- ops without weights -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolCase:
    name: str
    op: Op  # MAXPOOL2D or AVGPOOL2D
    geometry: Geometry
    zp: int = 0
    act_min: int = -128
    act_max: int = 127
    misalign: bool = False
    seed: int = 0


def make_pool_layer(case: PoolCase) -> tuple[QuantLayer, np.ndarray]:
    g = case.geometry
    h, w, c = g.in_shape
    out_hw = conv_out_hw(h, w, *g.kernel, g.stride, g.padding)
    q = QParams(0.05, case.zp)
    layer = QuantLayer(name=case.name, op=case.op, in_shape=g.in_shape, out_shape=(*out_hw, c), input_q=q,
                       output_q=q, act_min=case.act_min, act_max=case.act_max, stride=g.stride, padding=g.padding,
                       window=g.kernel)  # fmt: skip
    x = np.random.default_rng(case.seed).integers(-128, 128, size=g.in_shape).astype(np.int8)
    return layer, x


def _pool_cases() -> list[PoolCase]:
    cases = []
    for op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
        for i, g in enumerate(x for x in GEOMETRIES if x.pool_ok):
            clamp = [(-128, 127), (-128, 127), (-20, 127), (-128, 30), (-50, 60)][i % 5]
            cases.append(PoolCase(f"{op.value}_{g.name}", op, g, zp=(-128, 3, 100)[i % 3], act_min=clamp[0],
                                  act_max=clamp[1], misalign=i % 4 == 3, seed=i))  # fmt: skip
        # the demo CNN's pools, a global window, odd widths, c % 4 = 0..3, window 3 stride 2 SAME
        more = [Geometry("p2_28x28x16", (28, 28, 16), (2, 2), (2, 2)),
                Geometry("p2_odd_dropped", (5, 7, 2), (2, 2), (2, 2)),
                Geometry("p3_s3", (7, 9, 8), (3, 3), (3, 3)),
                Geometry("p1", (3, 3, 5), (1, 1), (1, 1)),
                Geometry("global_7x7", (7, 7, 11), (7, 7), (1, 1)),
                Geometry("p3_s2_same", (9, 9, 6), (3, 3), (2, 2), _same(9, 9, 3, 3, (2, 2))),
                Geometry("p2_s1_pad_right", (4, 5, 3), (2, 2), (1, 1), (0, 1, 0, 1))]  # fmt: skip
        cases += [PoolCase(f"{op.value}_{g.name}", op, g, zp=-5, misalign=j == 1, seed=50 + j) for j, g in
                  enumerate(more)]  # fmt: skip
    return cases


POOL_CASES = _pool_cases()


@dataclass(frozen=True)
class MeanCase:
    name: str
    in_shape: tuple[int, int, int]
    in_scale: float = 0.05
    out_scale: float = 0.04
    in_zp: int = 0
    out_zp: int = 0
    flat: bool = False  # out_shape (C,) instead of (1, 1, C)
    x_range: Pair = (-128, 128)
    seed: int = 0


def make_mean_layer(case: MeanCase) -> tuple[QuantLayer, np.ndarray]:
    h, w, c = case.in_shape
    m, s = mean_multiplier(case.in_scale, case.out_scale, h * w)
    layer = QuantLayer(name=case.name, op=Op.MEAN, in_shape=case.in_shape, out_shape=(c,) if case.flat else (1, 1, c),
                       input_q=QParams(case.in_scale, case.in_zp), output_q=QParams(case.out_scale, case.out_zp),
                       multiplier=np.array([m], dtype=np.int32), shift=np.array([s], dtype=np.int32))  # fmt: skip
    x = np.random.default_rng(case.seed).integers(*case.x_range, size=case.in_shape).astype(np.int8)
    return layer, x


MEAN_CASES = [
    MeanCase(
        f"mean_{n}x{n}", (n, n, c), in_scale=s_in, out_scale=s_out, in_zp=zp_in, out_zp=zp_out, flat=n % 2 == 0, seed=n
    )  # fmt: skip
    for n, c, s_in, s_out, zp_in, zp_out in [
        (1, 5, 0.05, 0.05, 3, 3),
        (2, 17, 0.1, 0.03, -128, -20),
        (3, 64, 0.02, 0.02, -10, 12),
        (4, 8, 0.5, 0.01, 0, -128),
        (5, 33, 0.013, 0.25, 127, 0),
        (6, 3, 0.07, 0.06, -1, 1),
        (7, 16, 0.03, 0.021, -128, -128),
    ]
] + [
    MeanCase("mean_8x8x64", (8, 8, 64), 0.04, 0.03, -128, -128, seed=8),
    MeanCase("mean_25x5x64_skewed", (25, 5, 64), 0.1, 0.1, -128, -128, x_range=(80, 128), seed=9),
    MeanCase("mean_3x5_ties", (3, 5, 4), 0.01, 0.02, 0, 0, x_range=(-2, 3), seed=10),  # sums near ties
]


@dataclass(frozen=True)
class AddCase:
    name: str
    shape: tuple[int, ...]
    scales: tuple[float, float, float]  # input 1, input 2, output
    zps: tuple[int, int, int]
    clamp: tuple[float, float] = (-np.inf, np.inf)  # real clamp, quantized like a fused activation
    seed: int = 0


def make_add_layer(case: AddCase) -> tuple[QuantLayer, np.ndarray, np.ndarray]:
    s1, s2, so = case.scales
    multiplier, shift = add_multipliers(s1, s2, so)
    out_q = QParams(so, case.zps[2])
    act_min, act_max = activation_range(case.clamp, out_q)
    layer = QuantLayer(name=case.name, op=Op.ADD, in_shape=case.shape, out_shape=case.shape,
                       input_q=QParams(s1, case.zps[0]), output_q=out_q, other_q=QParams(s2, case.zps[1]),
                       multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
                       inputs=("a", "b"))  # fmt: skip
    rng = np.random.default_rng(case.seed)
    x1, x2 = (rng.integers(-128, 128, size=case.shape).astype(np.int8) for _ in range(2))
    return layer, x1, x2


ADD_CASES = [
    AddCase("add_equal_q", (4, 4, 8), (0.05, 0.05, 0.1), (0, 0, 0)),
    AddCase("add_offsets", (3, 5, 7), (0.031, 0.017, 0.05), (-128, 37, -5), seed=1),
    AddCase("add_second_larger", (33,), (0.01, 0.09, 0.07), (12, -128, 100), seed=2),
    AddCase("add_relu", (2, 3, 16), (0.04, 0.06, 0.08), (-10, 5, -128), (0.0, np.inf), seed=3),
    AddCase("add_relu6", (5, 5, 3), (0.03, 0.03, 0.03), (-128, -128, -128), (0.0, 6.0), seed=4),  # clamps bite
    AddCase("add_saturating", (64,), (0.2, 0.25, 0.01), (0, 1, 2), seed=5),
    AddCase("add_extreme_zps", (1, 1, 1), (0.5, 0.5, 0.6), (127, -128, 127), seed=6),
    AddCase("add_32x32x16", (32, 32, 16), (0.047, 0.052, 0.061), (-7, -128, 3), seed=7),
]


@dataclass(frozen=True)
class PadCase:
    name: str
    in_shape: tuple[int, int, int]
    padding: Padding
    zp: int = 0
    seed: int = 0


def make_pad_layer(case: PadCase) -> tuple[QuantLayer, np.ndarray]:
    h, w, c = case.in_shape
    top, bottom, left, right = case.padding
    q = QParams(0.05, case.zp)
    layer = QuantLayer(name=case.name, op=Op.PAD, in_shape=case.in_shape,
                       out_shape=(h + top + bottom, w + left + right, c), input_q=q, output_q=q,
                       padding=case.padding)  # fmt: skip
    return layer, np.random.default_rng(case.seed).integers(-128, 128, size=case.in_shape).astype(np.int8)


PAD_CASES = [
    PadCase("pad_all_sides", (4, 5, 3), (1, 2, 3, 1), zp=-128),
    PadCase("pad_none", (3, 3, 4), (0, 0, 0, 0), zp=5),
    PadCase("pad_bottom_right", (6, 7, 1), (0, 1, 0, 1), zp=17),
    PadCase("pad_top_only", (2, 2, 9), (3, 0, 0, 0), zp=-1),
    PadCase("pad_wide", (1, 1, 2), (2, 2, 5, 5), zp=127),
]


@dataclass(frozen=True)
class SoftmaxCase:
    name: str
    shape: tuple[int, ...]  # softmax over the last axis
    in_scale: float
    beta: float = 1.0
    x_range: Pair = (-128, 128)
    seed: int = 0


def make_softmax_layer(case: SoftmaxCase) -> tuple[QuantLayer, np.ndarray]:
    multiplier, shift = softmax_multiplier(case.in_scale, case.beta)
    layer = QuantLayer(name=case.name, op=Op.SOFTMAX, in_shape=case.shape, out_shape=case.shape,
                       input_q=QParams(case.in_scale, 0), output_q=SOFTMAX_OUTPUT_Q,
                       multiplier=np.array([multiplier], dtype=np.int32),
                       shift=np.array([shift], dtype=np.int32))  # fmt: skip
    x = np.random.default_rng(case.seed).integers(*case.x_range, size=case.shape).astype(np.int8)
    return layer, x


SOFTMAX_CASES = [
    SoftmaxCase("softmax_10_scale_1_16", (10,), 1 / 16),
    SoftmaxCase("softmax_12_scale_0.1", (12,), 0.1, seed=1),
    SoftmaxCase("softmax_10_scale_0.5_diff_min", (10,), 0.5, seed=2),  # diff_min -31: most entries 0
    SoftmaxCase("softmax_4x12_scale_0.25", (4, 12), 0.25, seed=3),  # diff_min -62
    SoftmaxCase("softmax_3x10_beta_2", (3, 10), 0.05, beta=2.0, seed=4),
    SoftmaxCase("softmax_depth_1", (5, 1), 0.2, seed=5),  # probability 1 everywhere
    SoftmaxCase("softmax_100_small_scale", (100,), 0.003, seed=6),
    SoftmaxCase("softmax_2x2x37_scale_0.02", (2, 2, 37), 0.02, seed=7),
    SoftmaxCase("softmax_10_ties", (10,), 0.125, x_range=(40, 42), seed=8),  # equal maxima
    SoftmaxCase("softmax_255_near_max", (255,), 0.001, x_range=(120, 128), seed=9),  # sum of exps ~ 255
]


# --- ctypes mirrors of the parameter structs (generated from the operator table) ------------------

_I32P = ctypes.POINTER(ctypes.c_int32)
_I8P = ctypes.POINTER(ctypes.c_int8)
_U8P = ctypes.POINTER(ctypes.c_uint8)
_CSR_FIELDS = [("deltas", _U8P), ("row_ptr", ctypes.c_void_p), ("row_ptr_bytes", ctypes.c_int32)]
_BLOCK4_FIELDS = [("block_cols", ctypes.c_void_p), ("row_ptr", ctypes.c_void_p), ("row_ptr_bytes", ctypes.c_int32)]


class QuantParamsC(ctypes.Structure):
    _fields_ = [("bias", _I32P), ("multiplier", _I32P), ("shift", _I32P)] + [
        (name, ctypes.c_int32) for name in ("input_offset", "output_offset", "act_min", "act_max")
    ]


WEIGHT_FIELDS = {  # (format, weight bits) -> the struct's weight pointers, after the compiled-in fields
    ("dense", 8): [("weights", _I8P)],
    ("bitmask", 8): [("mask", _U8P), ("values", _I8P)],
    ("csr8", 8): [("values", _I8P), *_CSR_FIELDS],
    ("csr4", 8): [("values", _I8P), *_CSR_FIELDS],
    ("block4", 8): [("values", _I8P), *_BLOCK4_FIELDS],
    # int4: the packed nibbles as bytes
    ("dense", 4): [("weights", _U8P)],
    ("bitmask", 4): [("mask", _U8P), ("values", _U8P)],
    ("csr8", 4): [("values", _U8P), *_CSR_FIELDS],
    ("csr4", 4): [("values", _U8P), *_CSR_FIELDS],
    ("block4", 4): [("values", _U8P), *_BLOCK4_FIELDS],
}


@cache
def struct_class(struct: str, int_fields: tuple[str, ...], fmt: str | None, bits: int = 8) -> type[ctypes.Structure]:
    """The ctypes mirror of C struct `struct`: int32 fields in order, then the weight fields of
    `fmt` at `bits` and mcup_quant_params (a weighted op), or nothing more (fmt None)."""
    fields = [(name, ctypes.c_int32) for name in int_fields]
    if fmt is not None:
        fields += WEIGHT_FIELDS[fmt, bits] + [("q", QuantParamsC)]
    return type(struct, (ctypes.Structure,), {"_fields_": fields})


def struct_of(layer: QuantLayer, fmt: str | None = None) -> type[ctypes.Structure]:
    spec = spec_of(layer.op)
    fmt = fmt if spec.weighted else None
    bits = layer.weight_bits if spec.weighted else 8
    return struct_class(spec.struct(fmt, bits), tuple(spec.fields(layer)), fmt, bits)


def layout_source(structs: list[type[ctypes.Structure]], symbol: str) -> str:
    """C exporting sizeof and every field's offsetof of each struct (in order) as int32 `symbol`[];
    `layout_expected` gives the ctypes side."""
    items = []
    for s in structs:
        items.append(f"(int32_t)sizeof({s.__name__})")
        items += [f"(int32_t)offsetof({s.__name__}, {name})" for name, _ in s._fields_]
    body = ",\n    ".join(items)
    return (f'#include <stddef.h>\n#include <stdint.h>\n#include "mcup_nn.h"\n#include "mcup_sparse.h"\n\n'
            f"const int32_t {symbol}[] = {{\n    {body},\n}};\n")  # fmt: skip


def layout_expected(structs: list[type[ctypes.Structure]]) -> list[int]:
    out = []
    for s in structs:
        out.append(ctypes.sizeof(s))
        out += [getattr(s, name).offset for name, _ in s._fields_]
    return out


def c_ptr(array: np.ndarray | None, ctype):
    """A ctypes pointer to a C-contiguous array's data; NULL for None or an empty array."""
    if array is None or array.size == 0:
        return ctypes.POINTER(ctype)()
    assert array.flags.c_contiguous
    return array.ctypes.data_as(ctypes.POINTER(ctype))


def quant_params(layer: QuantLayer, null_bias: bool) -> tuple[QuantParamsC, list]:
    """(mcup_quant_params of the layer, the arrays it points into: keep them alive for the call).
    null_bias passes bias = NULL."""
    keep = [
        None if null_bias else np.ascontiguousarray(layer.bias, dtype=np.int32),
        np.ascontiguousarray(layer.multiplier, dtype=np.int32),
        np.ascontiguousarray(layer.shift, dtype=np.int32),
    ]
    q = QuantParamsC(
        bias=c_ptr(keep[0], ctypes.c_int32), multiplier=c_ptr(keep[1], ctypes.c_int32),
        shift=c_ptr(keep[2], ctypes.c_int32), input_offset=-layer.input_q.zero_point,
        output_offset=layer.output_q.zero_point, act_min=layer.act_min, act_max=layer.act_max,
    )  # fmt: skip
    return q, keep


def params_struct(
    layer: QuantLayer,
    fmt: str | None = None,
    weight_arrays: dict[str, np.ndarray] | None = None,
    null_bias: bool = False,
) -> tuple[ctypes.Structure, list]:
    """(the kernel's parameter struct for `layer`, the arrays it points into). A weighted op takes
    its packed arrays (formats.PackedWeights.arrays(), or {"weights": ...} for dense)."""
    cls = struct_of(layer, fmt)
    kwargs: dict = dict(spec_of(layer.op).fields(layer))
    keep: list = []
    if fmt is not None and spec_of(layer.op).weighted:
        for name, ctype in WEIGHT_FIELDS[fmt, layer.weight_bits]:
            if name == "row_ptr_bytes":
                kwargs[name] = weight_arrays["row_ptr"].dtype.itemsize
                continue
            array = weight_arrays[name]
            keep.append(array)
            if ctype is ctypes.c_void_p:
                kwargs[name] = ctypes.c_void_p(array.ctypes.data)
            else:
                kwargs[name] = c_ptr(array, ctype._type_)
        kwargs["q"], quant = quant_params(layer, null_bias)
        keep += quant
    return cls(**kwargs), keep


# --- calling a compiled kernel -------------------------------------------------------------------

CANARY = 0x5A  # fills the bytes around every output and past every scratch buffer


def at_lead(values: np.ndarray, lead: int, fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A copy of int8 `values` (flattened) starting `lead` bytes past a word boundary, and its buffer
    (which has `fill` bytes around it): lead = 1 makes every 32-bit load of the kernels unaligned."""
    flat = np.ascontiguousarray(values, dtype=np.int8).ravel()
    buf = np.full(flat.size + 16, fill, dtype=np.int8)
    start = (-buf.ctypes.data) % 8 + lead  # numpy's alignment is not guaranteed past 8 bytes
    view = buf[start : start + flat.size]
    view[:] = flat
    assert view.ctypes.data % 4 == lead % 4
    return view, buf


def dense_weights(layer: QuantLayer) -> dict[str, np.ndarray]:
    """{"weights": the dense weight array as the kernel reads it}: int8 values, or int4 packed bytes."""
    if layer.weight_bits == 8:
        return {"weights": np.ascontiguousarray(layer.weights)}
    return {"weights": pack(layer.weights, "dense", layer.weight_bits).weights}


class KernelLib:
    """A shared library of compiled kernels (one variant), called like the numpy reference ops."""

    def __init__(self, variant: str, lib: ctypes.CDLL):
        self.variant = variant
        self.lib = lib

    def _function(self, layer: QuantLayer, fmt: str | None):
        spec = spec_of(layer.op)
        if not spec.weighted:
            return getattr(self.lib, spec.function())
        return getattr(self.lib, spec.function(fmt, layer.weight_bits))

    def buffer_size(self, layer: QuantLayer, fmt: str | None = "dense", weight_arrays=None) -> int:
        """The kernel's _get_buffer_size for the layer (0 for a kernel without scratch)."""
        if not spec_of(layer.op).weighted:
            return 0
        params, _keep = params_struct(layer, fmt, weight_arrays or dense_weights(layer))
        fn = getattr(self.lib, spec_of(layer.op).function(fmt, layer.weight_bits) + "_get_buffer_size")
        fn.restype = ctypes.c_int32
        return fn(ctypes.byref(params))

    def run(
        self,
        layer: QuantLayer,
        inputs: list[np.ndarray],
        fmt: str | None = "dense",
        lead: int = 0,
        null_bias: bool = False,
        weight_arrays: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """fn(params, inputs..., output[, scratch]) with canaries around the output and past the
        scratch (sized by _get_buffer_size). lead = 1 places the dense weights, inputs and output one
        byte past a word boundary. Returns the output in layer.out_shape."""
        weighted = spec_of(layer.op).weighted
        keep: list = []
        if weighted and weight_arrays is None:
            w, w_buf = at_lead(dense_weights(layer)["weights"].view(np.int8), lead)
            weight_arrays, keep = {"weights": w}, [w_buf]
        params, more = params_struct(layer, fmt if weighted else None, weight_arrays, null_bias)
        keep += more
        xs = [at_lead(x, lead) for x in inputs]
        out_size = int(np.prod(layer.out_shape))
        out, out_buf = at_lead(np.full(out_size, CANARY, dtype=np.int8), lead, fill=CANARY)
        args = [ctypes.byref(params), *(c_ptr(x, ctypes.c_int8) for x, _ in xs), c_ptr(out, ctypes.c_int8)]
        scratch = self.buffer_size(layer, fmt, weight_arrays) if weighted else 0
        words = np.full(scratch // 4 + 4, CANARY * 0x01010101, dtype=np.uint32)  # 4-aligned
        if weighted:
            args.append(ctypes.c_void_p(words.ctypes.data) if scratch else None)
        self._function(layer, fmt).restype = None
        self._function(layer, fmt)(*args)
        start = out.ctypes.data - out_buf.ctypes.data
        outside = np.concatenate([out_buf[:start], out_buf[start + out_size :]])
        assert (outside == CANARY).all(), "kernel wrote outside its output"
        assert (words[scratch // 4 :] == CANARY * 0x01010101).all(), "kernel wrote past its scratch"
        assert scratch % 4 == 0
        return out.copy().reshape(layer.out_shape)
