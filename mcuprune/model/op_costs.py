"""Instruction counts of the operators without a weight format: pooling, mean, add, pad, reshape,
softmax and the depthwise conv.

costs.py predicts the weighted kernels that have weight formats (conv2d, dense); this module
predicts every other layer the firmware runs, so that a planner can hold a model to an instruction
budget. The model is the same kind: per (op, kernel variant, core), instructions ~= sum(coef[name] *
feature[name]) over a few terms that follow the kernel's loops (op_cost_features), fitted by
bench/op_costs/fit.py to per-layer counts measured in QEMU (SysTick under ``-icount shift=0``,
bench/op_costs/measure.py) and stored in ``op_costs.json``. Every term needs only a layer's shapes
and geometry, so a FloatLayer is costed as well as a QuantLayer (see _clamped for the one
difference).

A measured layer count includes what mcup_run spends around the kernel call (the SysTick read, the
call itself): that sits in the ``call`` term, as it sits in a whole-model count.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

from mcuprune.model.costs import DEFAULT_CORE
from mcuprune.model.ir import UNBOUNDED, FloatLayer, Op, QuantLayer, shape_product
from mcuprune.model.ops import OPS, check_variant, has_optimized_kernel
from mcuprune.resources import OP_COSTS_PATH

Layer = FloatLayer | QuantLayer

# Ops this module costs; conv2d and dense are costs.py's (their cost depends on the weight format).
COSTED_OPS = (Op.MAXPOOL2D, Op.AVGPOOL2D, Op.MEAN, Op.ADD, Op.PAD, Op.RESHAPE, Op.SOFTMAX, Op.DEPTHWISE_CONV2D)

MEAN_BLOCK = 16  # channels summed per pass over the map (firmware/kernels/reference/mean_s8.c)


def _taps_inside(n_out: int, k: int, n_in: int, stride: int, pad_before: int, dilation: int = 1) -> np.ndarray:
    """Per output position along one axis: how many of the window's k taps fall inside the input."""
    starts = np.arange(n_out)[:, None] * stride - pad_before + np.arange(k)[None, :] * dilation
    return ((starts >= 0) & (starts < n_in)).sum(axis=1)


def _window_geometry(layer: Layer, k_h: int, k_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps inside the image per output row (along y) and per output column (along x)."""
    (in_h, in_w, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape
    top, _, left, _ = layer.padding
    dil_h, dil_w = layer.dilation
    return (_taps_inside(int(out_h), k_h, int(in_h), layer.stride[0], top, dil_h),
            _taps_inside(int(out_w), k_w, int(in_w), layer.stride[1], left, dil_w))  # fmt: skip


def _clamped(layer: Layer) -> bool:
    """True when the kernel clamps to a range narrower than int8. A QuantLayer says so exactly; a
    FloatLayer only says whether it has a fused activation, which quantization may turn into the
    whole int8 range (a ReLU on an input that is never negative): counted as clamped, the dearer
    side."""
    if isinstance(layer, QuantLayer):
        return layer.act_min > -128 or layer.act_max < 127
    return tuple(layer.clamp) != UNBOUNDED


def _pool_reference_terms(layer: Layer) -> dict[str, int]:
    """The plain pooling loops (reference maxpool, avgpool): per output pixel, per output value
    (window clipped, clamp, store; avgpool's division), per window row inside the image, per tap
    inside the image."""
    ry, rx = _window_geometry(layer, *layer.window)
    (out_h, out_w, c) = (int(d) for d in layer.out_shape)
    return {"pixels": out_h * out_w, "outputs": out_h * out_w * c, "row_steps": c * out_w * int(ry.sum()),
            "tap_steps": c * int(ry.sum()) * int(rx.sum())}  # fmt: skip


def _maxpool_dsp_terms(layer: Layer) -> dict[str, int]:
    """The DSP maxpool (firmware/kernels/dsp/maxpool2d_s8.c): 4 channels per word, c % 4 one by one.

    Windows that tile the image unclamped skip the clipping; 2x2 tiles take their own loop
    (``tiled_words``, ``tiled_tail``). Other pixels clip their window (``clipped_pixels``); a clipped
    window of 2x2 takes the 2x2 body (``words_2x2``, ``tail_2x2``), any other the general loops
    (``words``, ``word_rows``, ``word_taps``, ``tail``, ``tail_taps``); a clamp is one more pass
    (``clamp_words``, ``clamp_tail``). ``tail_pixels``: pixels that run a c % 4 loop at all.
    """
    k_h, k_w = layer.window
    (in_h, in_w, _), (out_h, out_w, c) = ((int(d) for d in s) for s in (layer.in_shape, layer.out_shape))
    words, tail = c // 4, c % 4
    pixels = out_h * out_w
    terms = dict.fromkeys(("tiled_words", "tiled_tail", "clipped_pixels", "words_2x2", "tail_2x2", "words",
                           "word_rows", "word_taps", "tail", "tail_taps", "clamp_words", "clamp_tail"), 0)
    terms["tail_pixels"] = pixels if tail else 0  # the c % 4 loop entered once per pixel
    clamped = _clamped(layer)
    tiles = ((k_h, k_w) == tuple(layer.stride) and layer.padding[0] == 0 and layer.padding[2] == 0
             and out_h * k_h <= in_h and out_w * k_w <= in_w and not clamped)  # fmt: skip
    if tiles and (k_h, k_w) == (2, 2):
        terms.update(tiled_words=pixels * words, tiled_tail=pixels * tail)
        return {"pixels": pixels, **terms}
    ry, rx = _window_geometry(layer, k_h, k_w)
    rows = np.repeat(ry, out_w)  # per output pixel: window rows and columns inside the image
    cols = np.tile(rx, out_h)
    two = (rows == 2) & (cols == 2)
    n_two = int(two.sum())
    general = ~two
    terms.update(words_2x2=n_two * words, tail_2x2=n_two * tail, words=int(general.sum()) * words,
                 word_rows=words * int(rows[general].sum()), word_taps=words * int((rows * cols)[general].sum()),
                 tail=int(general.sum()) * tail, tail_taps=tail * int((rows * cols)[general].sum()))  # fmt: skip
    if not tiles:
        terms.update(clipped_pixels=pixels)
    if clamped:
        terms.update(clamp_words=pixels * words, clamp_tail=pixels * tail)
    return {"pixels": pixels, **terms}


def _depthwise_geometry(layer: Layer) -> tuple[int, int, int, np.ndarray, np.ndarray]:
    """out_c, k_h, k_w and the taps inside the image per output row and column."""
    out_c, k_h, k_w, _ = (int(d) for d in layer.weights.shape)  # [out_c, k_h, k_w, 1]
    ry, rx = _window_geometry(layer, k_h, k_w)
    return out_c, k_h, k_w, ry, rx


def _depthwise_reference_terms(layer: Layer) -> dict[str, int]:
    """The reference depthwise conv: per output value (setup, requantization), per kernel row (each
    tests its row), per kernel column of the rows inside the image (each tests its column), per tap
    inside the image (a multiply-accumulate)."""
    out_c, k_h, k_w, ry, rx = _depthwise_geometry(layer)
    out_h, out_w = len(ry), len(rx)
    outputs = out_h * out_w * out_c
    return {"pixels": out_h * out_w, "outputs": outputs, "ky_steps": outputs * k_h,
            "kx_steps": out_c * k_w * out_w * int(ry.sum()), "tap_steps": out_c * int(ry.sum()) * int(rx.sum())}


def _depthwise_dsp_terms(layer: Layer) -> dict[str, int]:
    """The DSP depthwise conv (firmware/include/mcup_depthwise_dsp.h). With depth multiplier 1 the
    whole groups of 4 channels go together: per call their weights are rearranged and their biases
    folded (``weight_taps``, ``channels``); a 3x3 window wholly inside the image takes the unrolled
    loop (``interior_groups``), any other window the clipped loops (``groups``, ``group_rows``,
    ``group_taps``). The out_c % 4 last channels, and every channel for a multiplier above 1, go
    one at a time (``tail_outputs``, ``tail_rows``, ``tail_taps``)."""
    out_c, k_h, k_w, ry, rx = _depthwise_geometry(layer)
    out_h, out_w = len(ry), len(rx)
    pixels = out_h * out_w
    grouped = layer.depth_multiplier == 1
    groups = out_c // 4 if grouped else 0
    tail = out_c - 4 * groups
    interior = int((ry == 3).sum() * (rx == 3).sum()) if (k_h, k_w) == (3, 3) and groups else 0
    rows_edge = int(ry.sum()) * out_w - (3 * interior if interior else 0)  # window rows over the clipped pixels
    taps_edge = int(ry.sum()) * int(rx.sum()) - 9 * interior
    return {
        "channels": out_c if grouped else 0, "weight_taps": 4 * groups * k_h * k_w, "pixels": pixels,
        "interior_pixels": interior, "group_pixels": pixels - interior if groups else 0,
        "tail_pixels": pixels if tail else 0, "interior_groups": interior * groups,
        "groups": (pixels - interior) * groups, "group_rows": groups * rows_edge, "group_taps": groups * taps_edge,
        "tail_outputs": pixels * tail, "tail_rows": tail * out_w * int(ry.sum()),
        "tail_taps": tail * int(ry.sum()) * int(rx.sum()),
    }  # fmt: skip


def _memset_parts(offset: int, n: int) -> tuple[int, int, int, int]:
    """The C library's (newlib-nano) memset of n bytes at a buffer offset (the buffer word-aligned):
    1 if it sets any byte (an empty call returns at once), bytes stored one at a time (up to the
    first word boundary, and the last n % 4), words stored alone and 16-byte blocks (4 words per
    pass)."""
    head = min(n, -offset % 4)
    rest = n - head
    if rest <= 3:
        return int(n > 0), head + rest, 0, 0
    blocks = rest // 16 if rest > 15 else 0
    return 1, head + rest % 4, (rest - 16 * blocks) // 4, blocks


def _memcpy_parts(dst: int, src: int, n: int) -> tuple[int, int, int, int]:
    """The C library's memcpy for Armv7-M (unaligned word access allowed): bytes copied in its byte
    loop (a copy under 8 bytes between misaligned buffers), edges (a head that aligns the destination
    when neither buffer is aligned, and the last n % 4 bytes: a halfword and a byte, whatever the
    count), words copied alone or 4 at a time, and words in 64-byte blocks."""
    if (dst | src) % 4 and n < 8:
        return n, 0, 0, 0
    head = -dst % 4 if dst % 4 and src % 4 else 0
    rest = n - head
    return 0, int(head > 0) + int(rest % 4 > 0), rest % 64 // 4, rest // 64 * 16


def _pad_terms(layer: Layer) -> dict[str, int]:
    """pad (firmware/kernels/reference/pad_s8.c): the top and bottom rows are one memset each; every
    input row a memset (left), a memcpy (the row) and a memset (right), whose costs follow the
    library's byte, word and block loops (_memset_parts, _memcpy_parts) at each call's alignment
    (the buffers start word-aligned, as the arena places them). ``rows``: input rows (3 calls)."""
    h, w, c = (int(d) for d in layer.in_shape)
    top, bottom, left, right = layer.padding
    row_in, left_b, right_b = w * c, left * c, right * c
    row_out = left_b + row_in + right_b
    fills = [_memset_parts(0, top * row_out), _memset_parts((top + h) * row_out, bottom * row_out)]
    copies = []
    for y in range(h):
        start = (top + y) * row_out
        fills += [_memset_parts(start, left_b), _memset_parts(start + left_b + row_in, right_b)]
        copies.append(_memcpy_parts(start + left_b, y * row_in, row_in))
    fill = np.sum(fills, axis=0)
    copy = np.sum(copies, axis=0) if copies else np.zeros(4, int)
    return {"rows": h, "copy_bytes": int(copy[0]), "copy_edges": int(copy[1]), "copy_words": int(copy[2]),
            "copy_block_words": int(copy[3]), "fill_calls": int(fill[0]), "fill_bytes": int(fill[1]),
            "fill_words": int(fill[2]), "fill_blocks": int(fill[3])}  # fmt: skip


def _mean_terms(layer: Layer) -> dict[str, int]:
    """mean over H and W: channels in blocks of MEAN_BLOCK, each block a pass over every pixel."""
    h, w, c = (int(d) for d in layer.in_shape)
    blocks = -(-c // MEAN_BLOCK)
    return {"blocks": blocks, "block_pixels": blocks * h * w, "elements": h * w * c, "outputs": c}


def _softmax_terms(layer: Layer) -> dict[str, int]:
    """softmax over the last axis: per row a maximum and a reciprocal, per element two exponentials."""
    depth = int(layer.in_shape[-1])
    return {"rows": shape_product(layer.in_shape) // depth, "elements": shape_product(layer.in_shape)}


def op_cost_features(layer: Layer, variant: str = "dsp") -> dict[str, float]:
    """The terms the instruction model of `layer`'s kernel in `variant` is linear in (shapes and
    geometry only). An op whose variant has its own twin with other loops (maxpool, depthwise in
    "dsp") takes that twin's terms; the others the reference kernel's. ``call`` is 1.

    >>> from mcuprune.model.ir import FloatLayer, Op
    >>> pool = FloatLayer("p", Op.MAXPOOL2D, (8, 8, 6), (4, 4, 6), window=(2, 2), stride=(2, 2))
    >>> op_cost_features(pool, "reference")
    {'pixels': 16.0, 'outputs': 96.0, 'row_steps': 192.0, 'tap_steps': 384.0, 'call': 1.0}
    >>> {k: v for k, v in op_cost_features(pool, "dsp").items() if v}
    {'pixels': 16.0, 'tiled_words': 16.0, 'tiled_tail': 32.0, 'tail_pixels': 16.0, 'call': 1.0}
    """
    check_variant(variant)
    op = Op(layer.op)
    if op not in COSTED_OPS:
        raise ValueError(f"layer {layer.name}: {op.value} is costed per weight format by mcuprune.model.costs, "
                         "not by op_costs")
    spec = OPS[op]
    twin = spec.kernel is not None and has_optimized_kernel(spec, "dense" if spec.weighted else None, variant)
    if op is Op.MAXPOOL2D:
        terms = _maxpool_dsp_terms(layer) if twin else _pool_reference_terms(layer)
    elif op is Op.AVGPOOL2D:
        terms = _pool_reference_terms(layer)
    elif op is Op.DEPTHWISE_CONV2D:
        terms = _depthwise_dsp_terms(layer) if twin else _depthwise_reference_terms(layer)
    elif op is Op.MEAN:
        terms = _mean_terms(layer)
    elif op is Op.ADD:
        terms = {"elements": shape_product(layer.out_shape)}  # one flat loop, three requantizations each
    elif op is Op.PAD:
        terms = _pad_terms(layer)
    elif op is Op.SOFTMAX:
        terms = _softmax_terms(layer)
    else:  # RESHAPE: no kernel, its output is its input's bytes
        terms = {}
    return {name: float(value) for name, value in {**terms, "call": 1}.items()}


def op_cost_key(op: Op | str, variant: str, core: str) -> str:
    """The op_costs.json key of a model: ``<op>/<variant>/<core>``."""
    return f"{Op(op).value}/{variant}/{core}"


@cache
def load_op_costs(path: Path = OP_COSTS_PATH) -> dict:
    return json.loads(Path(path).read_text())


def op_cost_model(op: Op | str, variant: str = "dsp", core: str | None = None) -> dict:
    """The fitted model of (op, variant, core): features, coefficients, max_relative_error, points.
    A core that was not measured takes the figures of the core the variant is tuned for (as costs.py)."""
    check_variant(variant)
    models = load_op_costs()["models"]
    key = op_cost_key(op, variant, core or DEFAULT_CORE[variant])
    if key not in models:
        key = op_cost_key(op, variant, DEFAULT_CORE[variant])
    if key not in models:
        raise ValueError(f"{OP_COSTS_PATH.name} has no model for {key}: measure it with bench/op_costs/measure.py "
                         "and fit it with bench/op_costs/fit.py")
    return models[key]


def predict_op_instructions(layer: Layer, variant: str = "dsp", core: str | None = None) -> float:
    """Instructions `layer` costs on `core` (default: the variant's own, costs.DEFAULT_CORE) with the
    `variant` kernels, from the fitted model. Raises ValueError for conv2d and dense (costs.py's
    job, per weight format), for int4 depthwise weights (not measured) and for an unfitted model."""
    op = Op(layer.op)
    if op not in COSTED_OPS:
        raise ValueError(f"layer {layer.name}: {op.value} has weight formats; predict it with "
                         "mcuprune.model.costs.predict_instructions")
    if OPS[op].weighted and layer.weight_bits != 8:
        raise ValueError(f"layer {layer.name}: no fitted model for {op.value} with {layer.weight_bits}-bit weights "
                         f"in {OP_COSTS_PATH.name}")
    model = op_cost_model(op, variant, core)
    features = op_cost_features(layer, variant)
    coef = model["coefficients"]
    if set(features) != set(model["features"]):
        raise ValueError(f"{OP_COSTS_PATH.name}: the model of {op.value}/{variant} has terms {model['features']}, "
                         f"the kernel has {sorted(features)}: refit it with bench/op_costs/fit.py")
    return float(sum(coef[name] * value for name, value in features.items()))
