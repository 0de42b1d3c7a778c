"""The cost model and the choice of weight format: bytes and measured instructions per layer.

Instructions are a linear model of a few features per (op, format, kernel variant, core), fitted to
QEMU ``-icount`` counts (``kernel_costs.json``, made by ``bench/sparse/fit_costs.py``). The planner
(compress/budget.py) and the code generator call the same ``choose_formats``, so a byte budget the
planner meets is what the code generator emits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np

from mcuprune.model.formats import MAX_DELTA, csr_layout, format_bytes, require_weights, weight_matrix
from mcuprune.model.ir import Op, QuantLayer
from mcuprune.model.ops import FORMATS, OPS, check_format, check_variant
from mcuprune.resources import KERNEL_COSTS_PATH

OBJECTIVES = ("fastest", "smallest")
COSTS_PATH = KERNEL_COSTS_PATH
DEFAULT_CORE = {"reference": "cortex-m3", "dsp": "cortex-m4"}  # the core each variant is tuned for

def cost_features(
    op: Op | str,
    fmt: str,
    rows: int,
    cols: int,
    entries: int,
    pixels: int = 1,
    taps: int = 1,
    valid_taps: int | None = None,
    tail_entries: int = 0,
) -> dict[str, float]:
    """The terms the fitted cost model is linear in: instructions = sum(coef[name] * value).

    FC: a * entries + b * rows + c * cols + d (+ e * mask bytes for bitmask, whose kernels scan
    every mask word), with entries = rows * cols for dense, nnz for bitmask, nnz + fillers for
    csr; ``rows`` holds the requantization. Conv2d: the same terms per output pixel, times the
    pixel count, plus per-pixel terms for im2col and loop overheads: ``taps`` (k_h * k_w),
    ``row_taps`` (rows * taps, the dense reference's per-tap loop), ``pixel``, and the taps that
    fall inside the image (``valid_taps``, summed over pixels; ``valid_macs`` = rows * in_c *
    valid_taps): the dense reference skips padding taps, im2col fills them with a cheaper store.
    csr: ``tail_entries`` = sum over rows of (row entries mod 4), the entries the DSP kernels
    take one by one after their blocks of 4 (and 8).

    >>> cost_features("dense", "csr8", rows=4, cols=100, entries=30, tail_entries=6)
    {'entries': 30.0, 'rows': 4.0, 'cols': 100.0, 'tail_entries': 6.0, 'call': 1.0}
    >>> cost_features("conv2d", "bitmask", rows=2, cols=9, entries=5, pixels=10, taps=9)["mask_bytes"]
    40.0
    """
    op = Op(op)
    scale = pixels if op is Op.CONV2D else 1
    features = {"entries": entries * scale, "rows": rows * scale, "cols": cols * scale}
    if op is Op.CONV2D:
        valid = pixels * taps if valid_taps is None else valid_taps
        features.update(taps=taps * pixels, row_taps=rows * taps * pixels, pixel=pixels, valid_taps=valid,
                        valid_macs=rows * (cols // taps) * valid)  # fmt: skip
    if fmt == "bitmask":
        features["mask_bytes"] = rows * ((cols + 7) // 8) * scale
    if fmt in MAX_DELTA:
        features["tail_entries"] = tail_entries * scale
    features["call"] = 1
    return {name: float(value) for name, value in features.items()}


def _valid_taps(layer: QuantLayer) -> int:
    """Kernel taps inside the input image, summed over all output pixels."""
    _, k_h, k_w, _ = layer.weights.shape
    (in_h, in_w, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape

    def inside(n_out: int, k: int, n_in: int, stride: int, pad_before: int, dilation: int) -> int:
        starts = np.arange(n_out) * stride - pad_before
        taps = np.arange(k) * dilation
        return int(sum(np.count_nonzero((s + taps >= 0) & (s + taps < n_in)) for s in starts))

    top, _, left, _ = layer.padding
    return (inside(out_h, k_h, in_h, layer.stride[0], top, layer.dilation[0])
            * inside(out_w, k_w, in_w, layer.stride[1], left, layer.dilation[1]))


def layer_cost_features(layer: QuantLayer, fmt: str) -> dict[str, float]:
    """cost_features of a layer packed in `fmt`."""
    w = weight_matrix(layer.weights)
    rows, cols = w.shape
    tail = 0
    if fmt == "dense":
        entries = rows * cols
    elif fmt == "bitmask":
        entries = int(np.count_nonzero(w))
    else:
        per_row = csr_layout(w, MAX_DELTA[fmt])[4]
        entries, tail = int(per_row.sum()), int((per_row % 4).sum())
    if layer.op is not Op.CONV2D:
        return cost_features(layer.op, fmt, rows, cols, entries, tail_entries=tail)
    pixels = int(layer.out_shape[0] * layer.out_shape[1])
    taps = int(layer.weights.shape[1] * layer.weights.shape[2])
    return cost_features(layer.op, fmt, rows, cols, entries, pixels, taps, _valid_taps(layer), tail)


def cost_key(op: Op | str, fmt: str, variant: str, core: str) -> str:
    return f"{Op(op).value}/{fmt}/{variant}/{core}"


@cache
def load_costs(path: Path = COSTS_PATH) -> dict:
    return json.loads(path.read_text())


def _cost_entry(table: str, op: Op | str, fmt: str, variant: str, core: str | None):
    """An entry of sparse_costs.json; a core we have not measured (e.g. M7, M33, M55) uses the
    figures of the core the variant is tuned for (M4 for dsp, M3 for reference)."""
    entries = load_costs()[table]
    key = cost_key(op, fmt, variant, core or DEFAULT_CORE[variant])
    if key not in entries:
        key = cost_key(op, fmt, variant, DEFAULT_CORE[variant])
    if key not in entries:
        raise ValueError(f"no {table} entry for {key} in {COSTS_PATH.name}")
    return entries[key]


def _model(op: Op, fmt: str, variant: str, core: str | None) -> dict:
    return _cost_entry("models", op, fmt, variant, core)


def predict_instructions(layer: QuantLayer, fmt: str, variant: str = "dsp", core: str | None = None) -> float:
    """Instructions the layer's kernel in `fmt` executes, from the fitted cost model."""
    check_format(fmt)
    check_variant(variant)
    require_weights(layer)
    coef = _model(layer.op, fmt, variant, core)["coefficients"]
    return float(sum(coef[name] * value for name, value in layer_cost_features(layer, fmt).items()))


def kernel_code_bytes(op: Op | str, fmt: str, variant: str = "dsp", core: str | None = None) -> int:
    """.text bytes of the (op, fmt) kernel object at -O2 (sparse_costs.json, measured)."""
    return int(_cost_entry("code_bytes", op, fmt, variant, core))


def _candidates(layer: QuantLayer, variant: str, objective: str, core: str | None) -> list[str]:
    """Formats allowed by the objective. "fastest": dense, and each sparse format that is not slower
    even when both predictions are off by their fit's largest relative error in the bad direction."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    check_variant(variant)
    require_weights(layer)
    kernel_formats = OPS[layer.op].formats
    if layer.mask is None or kernel_formats == ("dense",):
        return ["dense"]
    if objective == "smallest":
        return list(kernel_formats)
    dense = _model(layer.op, "dense", variant, core)
    dense_floor = predict_instructions(layer, "dense", variant, core) * (1 - dense["max_relative_error"])
    allowed = ["dense"]
    for fmt in (f for f in kernel_formats if f != "dense"):
        margin = _model(layer.op, fmt, variant, core)["max_relative_error"]
        if predict_instructions(layer, fmt, variant, core) * (1 + margin) <= dense_floor:
            allowed.append(fmt)
    return allowed


def choose_format(layer: QuantLayer, variant: str = "dsp", objective: str = "fastest", core: str | None = None) -> str:
    """The format to emit one layer's weights in, counting parameter bytes only.

    ``"fastest"`` (default): the fewest bytes among dense and the sparse formats predicted not to
    be slower than dense (with the cost model's error margin, see _candidates); dense wins ties.
    ``"smallest"``: the fewest bytes, whatever the speed. Layers without a mask stay dense.
    `core` defaults to the core the variant is tuned for (DEFAULT_CORE).
    """
    sizes = {fmt: format_bytes(layer.weights, fmt) for fmt in FORMATS}
    return min(_candidates(layer, variant, objective, core), key=lambda fmt: (sizes[fmt], FORMATS.index(fmt)))


def choose_formats(
    layers: Iterable[QuantLayer], variant: str = "dsp", objective: str = "fastest", core: str | None = None
) -> dict[str, str]:
    """Formats for every weighted layer of a model, minimising parameter bytes + kernel code bytes.

    A sparse kernel costs its code once per firmware, so a format only pays if the layers using it
    save more than its code; a kernel no layer uses is not linked. Every subset of kernels per op
    is tried (at most 2^4 per op), each layer taking its smallest allowed format in the subset.
    Returns {layer name: format}; layers without weights are left out.
    """
    weighted = [layer for layer in layers if layer.weights is not None]
    options = {layer.name: _candidates(layer, variant, objective, core) for layer in weighted}
    sizes = {layer.name: {fmt: format_bytes(layer.weights, fmt) for fmt in FORMATS} for layer in weighted}
    choice: dict[str, str] = {}
    for op in (spec.op for spec in OPS.values() if spec.weighted):
        group = [layer.name for layer in weighted if layer.op is op]
        if all(options[name] == ["dense"] for name in group):  # nothing to weigh (or no sparse kernels)
            choice.update(dict.fromkeys(group, "dense"))
            continue
        best: tuple[int, dict[str, str]] | None = None
        for bits in range(1, 2 ** len(FORMATS)):
            kernels = [fmt for i, fmt in enumerate(FORMATS) if bits >> i & 1]
            if any(not set(kernels) & set(options[name]) for name in group):
                continue
            picks = {
                name: min((f for f in kernels if f in options[name]), key=lambda f, n=name: (sizes[n][f], f != "dense"))
                for name in group
            }
            used = set(picks.values())
            total = sum(sizes[name][picks[name]] for name in group)
            total += sum(kernel_code_bytes(op, fmt, variant, core) for fmt in used)
            if best is None or total < best[0]:
                best = (total, picks)
        choice.update(best[1])
    return choice
