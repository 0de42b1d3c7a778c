"""The cost model and the choice of weight format: bytes and measured instructions per layer.

Instructions are a linear model of a few features per (op, format, kernel variant, core), fitted to
QEMU ``-icount`` counts (``kernel_costs.json``, made by ``bench/sparse/fit_costs.py``). The features
follow each kernel's structure (layer_cost_features): generic terms for FC and the sparse conv
kernels (cost_features), the loop counts of the dense reference conv, and for the dense DSP conv one
set of terms per path it takes (im2col, strip, pointwise; conv_path), zero on the other paths. The
planner (compress/budget.py) and the code generator call the same ``choose_formats``, so a byte
budget the planner meets is what the code generator emits.

Every function reads a layer's weight width (``QuantLayer.weight_bits``): a layer with int4 weights
is costed with the int4 kernels' fits (keys ``<op>/s4_<format>/<variant>/<core>``, cost_key), its
bytes counted at 4 bits (formats.format_bytes), and its format chosen among the int4 kernels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np

from mcuprune.model.formats import (
    MAX_DELTA,
    block_layout,
    csr_layout,
    format_sizes,
    quant_bytes,
    require_weights,
    weight_matrix,
)
from mcuprune.model.ir import Op, QuantLayer
from mcuprune.model.ops import (
    FORMATS,
    OPS,
    PW_PIXELS,
    S4_GROUP,
    STRIP_PIXELS,
    WEIGHT_BITS,
    check_bits,
    check_format,
    check_variant,
    conv_is_pointwise,
    conv_strip_bytes,
    has_optimized_kernel,
)
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
    k_h: int = 1,
) -> dict[str, float]:
    """The generic terms the fitted cost model is linear in: instructions = sum(coef[name] * value).

    Used for every kernel but the dense conv's (see layer_cost_features). FC: a * entries + b * rows
    + c * cols + d (+ e * mask bytes for bitmask, whose kernels scan every mask word), with entries =
    rows * cols for dense, nnz for bitmask, nnz + fillers for csr; ``rows`` holds the
    requantization. Conv2d: the same terms per output pixel, times the pixel count, plus per-pixel
    terms for im2col and loop overheads: ``taps`` (k_h * k_w), ``kernel_rows`` (k_h: the sparse
    kernels' im2col copies a patch one kernel row at a time), ``row_taps`` (rows * taps),
    ``pixel``, and the taps that fall inside the image (``valid_taps``, summed over pixels;
    ``valid_macs`` = rows * in_c * valid_taps): im2col fills padding taps with a cheaper store.
    csr: ``tail_entries`` = sum over rows of (row entries mod 4), the entries the DSP kernels take
    one by one after their blocks of 4 (and 8). block4: ``blocks`` (the stored blocks of 4, passed
    as `entries`) instead of ``entries``; ``cols`` is the input (or patch) converted once per call
    (per pixel).

    >>> cost_features("dense", "csr8", rows=4, cols=100, entries=30, tail_entries=6)
    {'entries': 30.0, 'rows': 4.0, 'cols': 100.0, 'tail_entries': 6.0, 'call': 1.0}
    >>> cost_features("conv2d", "bitmask", rows=2, cols=9, entries=5, pixels=10, taps=9)["mask_bytes"]
    40.0
    """
    op = Op(op)
    scale = pixels if op is Op.CONV2D else 1
    features = {"blocks" if fmt == "block4" else "entries": entries * scale, "rows": rows * scale, "cols": cols * scale}
    if op is Op.CONV2D:
        valid = pixels * taps if valid_taps is None else valid_taps
        features.update(taps=taps * pixels, kernel_rows=k_h * pixels, row_taps=rows * taps * pixels, pixel=pixels,
                        valid_taps=valid, valid_macs=rows * (cols // taps) * valid)  # fmt: skip
    if fmt == "bitmask":
        features["mask_bytes"] = rows * ((cols + 7) // 8) * scale
    if fmt in MAX_DELTA:
        features["tail_entries"] = tail_entries * scale
    features["call"] = 1
    return {name: float(value) for name, value in features.items()}


def _inside(n_out: int, k: int, n_in: int, stride: int, pad_before: int, dilation: int, first: int = 0) -> int:
    """Kernel taps along one axis that fall inside the input, summed over output positions
    first .. n_out - 1."""
    starts = np.arange(first, n_out) * stride - pad_before
    taps = np.arange(k) * dilation
    return int(sum(np.count_nonzero((s + taps >= 0) & (s + taps < n_in)) for s in starts))


def _conv_geometry(layer: QuantLayer) -> tuple[int, int, int, int, int, int]:
    """out_c, k_h, k_w, in_c, output pixels and the taps inside the image summed over them."""
    out_c, k_h, k_w, in_c = (int(d) for d in layer.weights.shape)
    (in_h, in_w, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape
    top, _, left, _ = layer.padding
    valid = (_inside(out_h, k_h, in_h, layer.stride[0], top, layer.dilation[0])
             * _inside(out_w, k_w, in_w, layer.stride[1], left, layer.dilation[1]))  # fmt: skip
    return out_c, k_h, k_w, in_c, int(out_h * out_w), valid


FC_DSP_ROWS = 3  # output rows per pass of the dense DSP FC (firmware/kernels/dsp/fc_s8_dense.c)
CONV_PATHS = ("im2col", "strip", "pointwise")  # the dense DSP conv's paths (firmware/kernels/dsp/conv2d_s8_dense.c)


def conv_path(layer: QuantLayer) -> str:
    """The path the dense DSP conv kernel takes for a layer, as the C chooses it from the shape:
    "pointwise" (ops.conv_is_pointwise), "strip" (ops.conv_strip_bytes is not None) or "im2col"."""
    if conv_is_pointwise(layer):
        return "pointwise"
    return "strip" if conv_strip_bytes(layer) is not None else "im2col"


def reference_dense_conv_features(layer: QuantLayer) -> dict[str, float]:
    """Terms of the dense reference conv (plain loops, no scratch; it skips padding taps):

    - ``rows``: outputs (out_c * pixels): the requantization and the per-output setup;
    - ``ky_steps``: iterations of the kernel-row loop, out_c * pixels * k_h (each tests its row);
    - ``kx_steps``: iterations of the kernel-column loop, which runs for rows inside the image only:
      out_c * k_w * (kernel rows inside the image, summed over pixels);
    - ``tap_steps``: in_c loops started, out_c * (taps inside the image, summed over pixels);
    - ``valid_macs``: multiply-accumulates done, in_c * tap_steps;
    - ``call``.
    """
    out_c, k_h, k_w, in_c, pixels, valid = _conv_geometry(layer)
    (in_h, _, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape
    rows_inside = _inside(out_h, k_h, in_h, layer.stride[0], layer.padding[0], layer.dilation[0]) * out_w
    features = {"rows": out_c * pixels, "ky_steps": out_c * pixels * k_h, "kx_steps": out_c * k_w * rows_inside,
                "tap_steps": out_c * valid, "valid_macs": out_c * in_c * valid, "call": 1}  # fmt: skip
    return {name: float(value) for name, value in features.items()}


# Window lengths (words) with an unrolled dot product in the strip path's strip_dot (conv2d_s8_dense.c),
# for 3-row kernels and for the others; other lengths take the loop (strip_dot_any).
STRIP_UNROLLED = {3: (4, 6, 8), None: (2, 4, 6, 8)}


def _strip_terms(layer: QuantLayer) -> dict[str, int]:
    """The strip path's terms (see dsp_dense_conv_features), from its geometry (the C's
    strip_geometry, as ops.conv_strip_bytes) and its choice of dot product (strip_dot)."""
    out_c, k_h, k_w, in_c, pixels, _ = _conv_geometry(layer)
    out_h, out_w = int(layer.out_shape[0]), int(layer.out_shape[1])
    slots = (k_h + 1) // 2  # words per strip position: vertical row pairs, + 1 for an odd last row
    run = k_w * in_c  # values per kernel row
    words = slots * run  # words of one window
    unrolled = words in STRIP_UNROLLED.get(k_h, STRIP_UNROLLED[None])
    # the unrolled dot products of 3-row kernels skip the odd last row's unused words
    used = (k_h // 2) * run + (run + 1) // 2 if k_h == 3 and unrolled else words
    # two windows per pass (3x3x1 at stride 1, and the loop): an odd last window of a strip goes alone
    paired = not unrolled or (k_h == 3 and words == 6 and layer.stride[1] * in_c * slots == 2)
    cols = min(out_w, STRIP_PIXELS)  # output pixels per segment row
    widths = [min(cols, out_w - ox) for ox in range(0, out_w, cols)]  # pixels of a strip, per segment column
    strips = out_h * len(widths)  # strips built: one per output row of each segment
    return {
        "strip_words": pixels * out_c * used if unrolled else 0,
        "strip_loop_words": 0 if unrolled else pixels * out_c * words,
        "strip_outputs": pixels * out_c,
        "strip_row_channels": strips * out_c,
        "strip_odd_windows": out_c * out_h * sum(n % 2 for n in widths) if paired else 0,
        "strip_built": sum(out_h * slots * ((n - 1) * layer.stride[1] + k_w) * in_c for n in widths),
        "strip_lines": strips * k_h,
        "strip_weights": out_c * words,
    }


DSP_DENSE_CONV_TERMS = (  # the terms of dsp_dense_conv_features, in order
    "im2col_macs", "im2col_outputs", "im2col_values", "im2col_pixels", "im2col_taps", "im2col_valid_taps",
    "im2col_stage_rows", "im2col_odd_macs",
    "pw_groups", "pw_tails", "pw_channels", "pw_convert", "pw_passes",
    "strip_words", "strip_loop_words", "strip_outputs", "strip_row_channels", "strip_odd_windows", "strip_built",
    "strip_lines", "strip_weights",
    "call",
)  # fmt: skip


def dsp_dense_conv_features(layer: QuantLayer) -> dict[str, float]:
    """Terms of the dense DSP conv, whose three paths (conv_path) each have their own; a layer's
    terms of the other two paths are 0, so one linear model holds three. P = output pixels, R =
    out_c, K = k_h * k_w * in_c.

    im2col path (two pixels at a time; patches copied as int16, then 2 channels x 2 pixels per
    pass): ``im2col_macs`` (R * K * P), ``im2col_outputs`` (R * P: requantization),
    ``im2col_values`` (K * P: patch values converted), ``im2col_pixels`` (P); when in_c is a
    multiple of 4 each tap is copied on its own: ``im2col_taps`` (k_h * k_w * P) and
    ``im2col_valid_taps`` (taps inside the image, summed over pixels; padding taps are stored
    zeros); otherwise each patch is staged as int8 first, a memset/memcpy/memset per kernel row:
    ``im2col_stage_rows`` (k_h * P); an odd last pixel runs alone on a slower dot product:
    ``im2col_odd_macs`` (R * K when P is odd).

    Pointwise path (PW_PIXELS = 4 pixels per pass, the last pass filled up with the last pixel;
    passes = ceil(P / 4)): ``pw_groups`` (passes * R * ceil(in_c / 4): the inner loop, 16 MACs per
    group), ``pw_tails`` (passes * R when in_c % 4 != 0), ``pw_channels`` (passes * R: a channel's
    constants and 4 requantizations), ``pw_convert`` (passes * 4 * ceil(in_c / 4): the pixels
    converted to int16), ``pw_passes``.

    Strip path (channel by channel over segments of up to STRIP_PIXELS pixels; a strip is one
    output row of a segment): ``strip_words`` (P * R * window words used, for the window lengths
    with an unrolled dot product, STRIP_UNROLLED: weights in registers), ``strip_loop_words``
    (P * R * window words, other lengths: a loop), ``strip_outputs`` (P * R: requantization),
    ``strip_row_channels`` (R * strips: a channel's pass over one strip), ``strip_odd_windows``
    (R * strips of an odd pixel count, for the dot products that take two windows per pass: the
    last one alone), ``strip_built`` (words of the strips built), ``strip_lines`` (k_h * strips:
    int8 input lines copied), ``strip_weights`` (R * window words: weights rearranged once per
    call).

    ``call`` is shared.
    """
    out_c, k_h, k_w, in_c, pixels, valid = _conv_geometry(layer)
    k = k_h * k_w * in_c
    path = conv_path(layer)
    features = dict.fromkeys(DSP_DENSE_CONV_TERMS, 0)
    if path == "im2col":
        staged = in_c % 4 != 0
        features.update(im2col_macs=out_c * k * pixels, im2col_outputs=out_c * pixels, im2col_values=k * pixels,
                        im2col_pixels=pixels, im2col_taps=0 if staged else k_h * k_w * pixels,
                        im2col_valid_taps=0 if staged else valid, im2col_stage_rows=k_h * pixels if staged else 0,
                        im2col_odd_macs=out_c * k * (pixels % 2))  # fmt: skip
    elif path == "pointwise":
        passes, groups = -(-pixels // PW_PIXELS), -(-in_c // 4)
        features.update(pw_groups=passes * out_c * groups, pw_tails=passes * out_c * (in_c % 4 != 0),
                        pw_channels=passes * out_c, pw_convert=passes * PW_PIXELS * groups,
                        pw_passes=passes)  # fmt: skip
    else:
        features.update(_strip_terms(layer))
    features["call"] = 1
    return {name: float(value) for name, value in features.items()}


S4_DSP_DENSE_CONV_TERMS = (  # the terms of dsp_s4_dense_conv_features, in order
    "s4_passes", "s4_odd_groups", "s4_chunks", "s4_tails", "s4_channel_pairs", "s4_outputs",
    "s4_single_groups", "s4_single_channels", "s4_single_tails",
    "s4_values", "s4_pixels", "s4_taps", "s4_valid_taps", "s4_stage_taps", "call",
)  # fmt: skip


def dsp_s4_dense_conv_features(layer: QuantLayer) -> dict[str, float]:
    """Terms of the dense DSP conv with int4 weights (firmware/kernels/dsp/conv2d_s4_dense.c, one
    path). Pixels go two at a time, an odd last pixel paired with itself: PP = ceil(P / 2) pairs,
    P2 = 2 * PP pixels computed. R = out_c; K = k_h * k_w * in_c values per patch, G = K // 8 whole
    groups of 8, a partial last group when K % 8 != 0. For each pixel pair, the R // 2 channel pairs:

    - ``s4_passes``: (R // 2) * (G // 2) * PP, passes of the inner loop (two groups, 64 MACs);
    - ``s4_odd_groups``: (R // 2) * (G % 2) * PP, a last whole group alone;
    - ``s4_chunks``: (R // 2) * PP when G > 0 (the loop's setup and the flush of its sums);
    - ``s4_tails``: (R // 2) * PP when K % 8 != 0 (the last group, its weights read byte by byte);
    - ``s4_channel_pairs``: (R // 2) * PP (biases, the pair's setup);
    - ``s4_outputs``: R * P2 (requantization);

    an odd R's last channel alone: ``s4_single_groups`` (G * PP), ``s4_single_channels`` (PP),
    ``s4_single_tails`` (PP when K % 8 != 0); the patches: ``s4_values`` (ceil(K / 8) * 8 * P2
    values converted to the s4-pair layout), ``s4_pixels`` (P2); when in_c is a multiple of 8 each
    tap converts on its own, ``s4_taps`` (k_h * k_w * P2) and ``s4_valid_taps`` (taps inside the
    image, summed over the computed pixels; padding taps store zeros), otherwise each tap is staged
    as int8 first, a memcpy or memset (``s4_stage_taps``, k_h * k_w * P2); ``call``.
    """
    out_c, k_h, k_w, in_c, pixels, valid = _conv_geometry(layer)
    k = k_h * k_w * in_c
    pairs_px = -(-pixels // 2)
    computed = 2 * pairs_px
    if pixels % 2:  # the odd last pixel is computed twice
        (in_h, in_w, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape
        top, _, left, _ = layer.padding
        valid += (_inside(out_h, k_h, in_h, layer.stride[0], top, layer.dilation[0], first=out_h - 1)
                  * _inside(out_w, k_w, in_w, layer.stride[1], left, layer.dilation[1], first=out_w - 1))  # fmt: skip
    groups, tail = k // S4_GROUP, k % S4_GROUP != 0
    ch_pairs, single = out_c // 2, out_c % 2
    direct = in_c % S4_GROUP == 0
    features = {
        "s4_passes": ch_pairs * (groups // 2) * pairs_px,
        "s4_odd_groups": ch_pairs * (groups % 2) * pairs_px,
        "s4_chunks": ch_pairs * (groups > 0) * pairs_px,
        "s4_tails": ch_pairs * tail * pairs_px,
        "s4_channel_pairs": ch_pairs * pairs_px,
        "s4_outputs": out_c * computed,
        "s4_single_groups": single * groups * pairs_px,
        "s4_single_channels": single * pairs_px,
        "s4_single_tails": single * tail * pairs_px,
        "s4_values": -(-k // S4_GROUP) * S4_GROUP * computed,
        "s4_pixels": computed,
        "s4_taps": k_h * k_w * computed if direct else 0,
        "s4_valid_taps": valid if direct else 0,
        "s4_stage_taps": 0 if direct else k_h * k_w * computed,
        "call": 1,
    }
    return {name: float(features[name]) for name in S4_DSP_DENSE_CONV_TERMS}


def _s4_csr_rows(per_row: np.ndarray) -> dict[str, int]:
    """How the int4 DSP csr walk takes each row's entries (mcup_csr_row_s4): a row starting at an
    odd entry (its value and csr4 delta in a high nibble) takes that entry alone first
    (``lead_entries``), then blocks of 8 (``block_rows``: rows with at least one, each flushing its
    sums), then one block of 4 if left (``quad_rows``), then its last 0..3 entries one by one
    (``tail_entries``)."""
    starts = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    lead = ((starts % 2) == 1) & (per_row > 0)
    rest = per_row - lead
    return {"tail_entries": int((rest % 4).sum()), "lead_entries": int(lead.sum()),
            "block_rows": int((rest >= S4_GROUP).sum()), "quad_rows": int((rest % S4_GROUP >= 4).sum())}


def layer_cost_features(layer: QuantLayer, fmt: str, variant: str = "dsp") -> dict[str, float]:
    """The cost model's terms for a layer packed in `fmt`, run by the `variant` kernels.

    The dense conv kernels have terms of their own: reference_dense_conv_features, and
    dsp_dense_conv_features for the DSP twin (three paths). Every other kernel takes
    cost_features, with two refinements for the DSP kernels: the sparse conv kernels compute
    output pixels two at a time, an odd last pixel paired with itself, so their per-pixel terms
    count ceil(P / 2) * 2 pixels; the dense FC kernel takes rows FC_DSP_ROWS at a time, the rest
    one by one on a slower dot product, and each row ends with its in % 4 last values:
    ``rest_entries`` (rows % FC_DSP_ROWS * cols) and ``tail_rows`` (rows when cols % 4 != 0).

    >>> import numpy as np
    >>> from mcuprune.model.ir import QParams
    >>> fc = QuantLayer(name="fc", op=Op.DENSE, in_shape=(30,), out_shape=(7,), input_q=QParams(1.0, 0),
    ...                 output_q=QParams(1.0, 0), weights=np.ones((7, 30), np.int8))
    >>> layer_cost_features(fc, "dense", "dsp")
    {'entries': 210.0, 'rows': 7.0, 'cols': 30.0, 'rest_entries': 30.0, 'tail_rows': 7.0, 'call': 1.0}
    >>> layer_cost_features(fc, "dense", "reference")
    {'entries': 210.0, 'rows': 7.0, 'cols': 30.0, 'call': 1.0}

    int4 weights (``weight_bits`` 4) take the same terms, except: the dense DSP conv
    (dsp_s4_dense_conv_features); the dense reference conv, whose taps read their weights two per
    byte (``valid_macs`` split into ``valid_pairs``, in_c // 2 per tap, and ``valid_singles``, in_c
    % 2 per tap; ``pair_taps``: the taps whose loop over pairs runs, in_c >= 2); the dense
    DSP FC, whose rows go two at a time and whose groups of 8 end in a partial one (``rest_entries``
    = rows % 2 * cols, ``tail_rows`` = rows when cols % 8 != 0); the csr DSP kernels, whose blocks
    are 8 entries, then 4 (``tail_entries``, ``lead_entries``, ``block_rows``, ``quad_rows``:
    _s4_csr_rows); the block4 DSP kernels, whose rows with blocks set up and flush an accumulator of
    the x16 products (``block_rows``).

    >>> layer_cost_features(QuantLayer(**{**fc.__dict__, "weight_bits": 4}), "dense", "dsp")
    {'entries': 210.0, 'rows': 7.0, 'cols': 30.0, 'rest_entries': 30.0, 'tail_rows': 7.0, 'call': 1.0}
    """
    check_variant(variant)
    bits = layer.weight_bits
    check_bits(bits)
    w = weight_matrix(layer.weights, bits)
    rows, cols = w.shape
    optimized = has_optimized_kernel(OPS[layer.op], fmt, variant, bits)
    tail = 0
    s4_rows: dict[str, int] = {}  # the int4 DSP csr walk's extra terms (per output pixel for conv)
    if fmt == "dense":
        if layer.op is Op.CONV2D:
            if optimized:
                return dsp_dense_conv_features(layer) if bits == 8 else dsp_s4_dense_conv_features(layer)
            features = reference_dense_conv_features(layer)
            if bits == 4:  # a tap's in_c values: in_c // 2 bytes of two, in_c % 2 alone (mcup_s4_dot)
                call = features.pop("call")
                valid_macs = features.pop("valid_macs")
                in_c = int(layer.weights.shape[3])
                valid_taps = features["tap_steps"]
                features.update(pair_taps=valid_taps * (in_c >= 2), valid_pairs=valid_macs // in_c * (in_c // 2),
                                valid_singles=valid_taps * (in_c % 2), call=call)  # fmt: skip
            return features
        entries = rows * cols
    elif fmt == "bitmask":
        entries = int(np.count_nonzero(w))
    elif fmt == "block4":
        per_row = block_layout(w).sum(axis=1)  # stored blocks per row
        entries = int(per_row.sum())
        if bits == 4 and optimized:  # each row with blocks sets up and flushes its x16 sums
            s4_rows = {"block_rows": int((per_row > 0).sum())}
    else:
        per_row = csr_layout(w, MAX_DELTA[fmt])[4]
        entries = int(per_row.sum())
        if bits == 4 and optimized:
            s4_rows = _s4_csr_rows(per_row)
            tail = s4_rows.pop("tail_entries")
        else:
            tail = int((per_row % 4).sum())
    if layer.op is not Op.CONV2D:
        features = cost_features(layer.op, fmt, rows, cols, entries, tail_entries=tail)
        if s4_rows:
            call = features.pop("call")
            features.update({name: float(v) for name, v in s4_rows.items()}, call=call)
        if fmt == "dense" and optimized:  # rows in blocks, then one by one; each row a tail of its last values
            call = features.pop("call")
            block, group = (FC_DSP_ROWS, 4) if bits == 8 else (2, S4_GROUP)
            features.update(rest_entries=float(rows % block * cols), tail_rows=float(rows * (cols % group != 0)),
                            call=call)  # fmt: skip
        return features
    _, k_h, k_w, _, pixels, valid = _conv_geometry(layer)
    if optimized and pixels % 2:  # the odd last pixel is computed twice
        (in_h, in_w, _), (out_h, out_w, _) = layer.in_shape, layer.out_shape
        top, _, left, _ = layer.padding
        pixels += 1
        valid += (_inside(out_h, k_h, in_h, layer.stride[0], top, layer.dilation[0], first=out_h - 1)
                  * _inside(out_w, k_w, in_w, layer.stride[1], left, layer.dilation[1], first=out_w - 1))  # fmt: skip
    features = cost_features(layer.op, fmt, rows, cols, entries, pixels, k_h * k_w, valid, tail, k_h)
    if s4_rows:
        call = features.pop("call")
        features.update({name: float(v * pixels) for name, v in s4_rows.items()}, call=call)
    return features


def cost_key(op: Op | str, fmt: str, variant: str, core: str, bits: int = 8) -> str:
    """The kernel_costs.json key of a kernel: ``<op>/<format>/<variant>/<core>``, the format written
    ``s4_<format>`` for int4 weights (as in the kernel's name, mcup_<kernel>_s4_<format>).

    >>> cost_key("dense", "csr4", "dsp", "cortex-m4"), cost_key("conv2d", "dense", "dsp", "cortex-m4", 4)
    ('dense/csr4/dsp/cortex-m4', 'conv2d/s4_dense/dsp/cortex-m4')
    """
    check_bits(bits)
    return f"{Op(op).value}/{fmt if bits == 8 else f's{bits}_{fmt}'}/{variant}/{core}"


@cache
def load_costs(path: Path = COSTS_PATH) -> dict:
    return json.loads(path.read_text())


def _cost_entry(table: str, op: Op | str, fmt: str, variant: str, core: str | None, bits: int = 8):
    """An entry of kernel_costs.json; a core we have not measured (e.g. M7, M33, M55) uses the
    figures of the core the variant is tuned for (M4 for dsp, M3 for reference)."""
    entries = load_costs()[table]
    key = cost_key(op, fmt, variant, core or DEFAULT_CORE[variant], bits)
    if key not in entries:
        key = cost_key(op, fmt, variant, DEFAULT_CORE[variant], bits)
    if key not in entries:
        raise ValueError(f"no {table} entry for {key} in {COSTS_PATH.name}")
    return entries[key]


def _model(op: Op, fmt: str, variant: str, core: str | None, bits: int = 8) -> dict:
    return _cost_entry("models", op, fmt, variant, core, bits)


def predict_instructions(layer: QuantLayer, fmt: str, variant: str = "dsp", core: str | None = None) -> float:
    """Instructions the layer's kernel in `fmt` (at the layer's ``weight_bits``) executes, from the
    fitted cost model."""
    check_format(fmt)
    check_variant(variant)
    require_weights(layer)
    bits = layer.weight_bits
    coef = _model(layer.op, fmt, variant, core, bits)["coefficients"]
    features = layer_cost_features(layer, fmt, variant)
    missing = sorted(set(features) - set(coef))
    if missing:
        raise ValueError(f"{COSTS_PATH.name} has no coefficient for {', '.join(missing)} "
                         f"({cost_key(layer.op, fmt, variant, core or DEFAULT_CORE[variant], bits)}); "
                         "regenerate it with bench/sparse/fit_costs.py")  # fmt: skip
    return float(sum(coef[name] * value for name, value in features.items()))


def kernel_code_bytes(op: Op | str, fmt: str, variant: str = "dsp", core: str | None = None, bits: int = 8) -> int:
    """.text bytes of the (op, fmt, bits) kernel object at -O2 (kernel_costs.json, measured)."""
    return int(_cost_entry("code_bytes", op, fmt, variant, core, bits))


def _candidates(layer: QuantLayer, variant: str, objective: str, core: str | None) -> list[str]:
    """Formats allowed by the objective. "fastest": dense, and each sparse format that is not slower
    even when both predictions are off by their fit's largest relative error in the bad direction."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    check_variant(variant)
    require_weights(layer)
    kernel_formats = OPS[layer.op].formats  # the same formats at either width
    if layer.mask is None or kernel_formats == ("dense",):
        return ["dense"]
    if objective == "smallest":
        return list(kernel_formats)
    bits = layer.weight_bits
    dense = _model(layer.op, "dense", variant, core, bits)
    dense_floor = predict_instructions(layer, "dense", variant, core) * (1 - dense["max_relative_error"])
    allowed = ["dense"]
    for fmt in (f for f in kernel_formats if f != "dense"):
        margin = _model(layer.op, fmt, variant, core, bits)["max_relative_error"]
        if predict_instructions(layer, fmt, variant, core) * (1 + margin) <= dense_floor:
            allowed.append(fmt)
    return allowed


def choose_format(layer: QuantLayer, variant: str = "dsp", objective: str = "fastest", core: str | None = None) -> str:
    """The format to emit one layer's weights in, counting parameter bytes only.

    ``"fastest"`` (default): the fewest bytes among dense and the sparse formats predicted not to
    be slower than dense (with the cost model's error margin, see _candidates); dense wins ties.
    ``"smallest"``: the fewest bytes, whatever the speed. Layers without a mask stay dense.
    `core` defaults to the core the variant is tuned for (DEFAULT_CORE). The formats are those of
    the layer's own width (``weight_bits``): bytes and speed of the int4 kernels for an int4 layer.
    """
    sizes = format_sizes(layer.weights, layer.weight_bits)
    return min(_candidates(layer, variant, objective, core), key=lambda fmt: (sizes[fmt], FORMATS.index(fmt)))


def choose_formats(
    layers: Iterable[QuantLayer], variant: str = "dsp", objective: str = "fastest", core: str | None = None,
    byte_budget: int | None = None,
) -> dict[str, str]:
    """Formats for every weighted layer of a model, minimising parameter bytes + kernel code bytes.

    byte_budget (objective "fastest" only): a cap on the layers' parameter bytes (formats.layer_bytes
    summed). When the fastest formats exceed it, layers move to smaller formats, the fewest extra
    instructions per byte saved first (fit_byte_budget), until the cap holds or every layer is in its
    smallest format.

    A sparse kernel costs its code once per firmware, so a format only pays if the layers using it
    save more than its code; a kernel no layer uses is not linked. A kernel is an (op, format,
    width): layers with int8 and with int4 weights (``weight_bits``) use different kernels, so each
    (op, width) group is weighed on its own, every layer choosing among the formats of its own
    width. Every subset of kernels per group is tried (at most 2^5), each layer taking its smallest
    allowed format in the subset. Returns {layer name: format}; layers without weights are left out.
    """
    weighted = [layer for layer in layers if layer.weights is not None]
    options = {layer.name: _candidates(layer, variant, objective, core) for layer in weighted}
    sizes = {layer.name: format_sizes(layer.weights, layer.weight_bits) for layer in weighted}
    choice: dict[str, str] = {}
    groups = [(spec.op, bits) for spec in OPS.values() if spec.weighted for bits in WEIGHT_BITS]
    for op, width in groups:
        group = [layer.name for layer in weighted if layer.op is op and layer.weight_bits == width]
        if not group:
            continue
        if all(options[name] == ["dense"] for name in group):  # nothing to weigh (or no sparse kernels)
            choice.update(dict.fromkeys(group, "dense"))
            continue
        best: tuple[int, dict[str, str]] | None = None
        for subset in range(1, 2 ** len(FORMATS)):
            kernels = [fmt for i, fmt in enumerate(FORMATS) if subset >> i & 1]
            if any(not set(kernels) & set(options[name]) for name in group):
                continue
            picks = {
                name: min((f for f in kernels if f in options[name]), key=lambda f, n=name: (sizes[n][f], f != "dense"))
                for name in group
            }
            used = set(picks.values())
            total = sum(sizes[name][picks[name]] for name in group)
            total += sum(kernel_code_bytes(op, fmt, variant, core, width) for fmt in used)
            if best is None or total < best[0]:
                best = (total, picks)
        choice.update(best[1])
    if byte_budget is not None and objective == "fastest":
        choice = fit_byte_budget(weighted, choice, byte_budget, variant, core)
    return choice


def fit_byte_budget(layers: list[QuantLayer], choice: dict[str, str], byte_budget: int, variant: str = "dsp",
                    core: str | None = None) -> dict[str, str]:
    """Move layers from `choice` to smaller formats until their parameter bytes fit `byte_budget`.

    Greedy by exchange rate: each step takes the move (one layer to one smaller format of its width)
    that adds the fewest predicted instructions per byte it saves, so a 20 kB FC goes csr8 -> csr4
    before a small conv goes dense -> bitmask at twice the instructions; then the slack left is spent
    on the faster formats that still fit. Each move strictly shrinks the model (and each later one
    strictly cuts instructions), so it ends; a budget below every layer's smallest format ends with all of them smallest
    (the caller decides what to do with a model that still does not fit).
    """
    choice = dict(choice)
    sizes = {layer.name: format_sizes(layer.weights, layer.weight_bits) for layer in layers}
    cost = {layer.name: {fmt: predict_instructions(layer, fmt, variant, core) for fmt in FORMATS} for layer in layers}
    total = sum(sizes[layer.name][choice[layer.name]] + quant_bytes(layer) for layer in layers)
    while total > byte_budget:
        moves = [((cost[n][fmt] - cost[n][choice[n]]) / (sizes[n][choice[n]] - sizes[n][fmt]), n, fmt)
                 for n in choice for fmt in FORMATS if sizes[n][fmt] < sizes[n][choice[n]]]  # fmt: skip
        if not moves:
            break
        _, name, fmt = min(moves)
        total -= sizes[name][choice[name]] - sizes[name][fmt]
        choice[name] = fmt
    while True:  # a step may have saved more than needed: spend the slack on the best faster format left
        gains = [(cost[n][fmt] - cost[n][choice[n]], n, fmt) for n in choice for fmt in FORMATS
                 if cost[n][fmt] < cost[n][choice[n]] and total - sizes[n][choice[n]] + sizes[n][fmt] <= byte_budget]
        if not gains:
            return choice
        _, name, fmt = min(gains)
        total += sizes[name][fmt] - sizes[name][choice[name]]
        choice[name] = fmt
