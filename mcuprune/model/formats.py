"""Packed sparse weight formats for pruned layers: packing, byte accounting, format choice.

A layer's weights are viewed as a matrix W with rows = output channels and cols = in_features
(dense) or k_h * k_w * in_c (conv2d, the [k_h][k_w][in_c] layout flattened). Pruned weights are
exactly 0; any other 0 (a kept weight that quantized to 0) is dropped as well, since it adds
nothing to a dot product. Formats (the C side is documented in firmware/include/mcup_sparse.h):

* ``dense``   — ``weights`` int8 [rows * cols] (the existing kernels).
* ``bitmask`` — ``mask`` uint8 [rows * ceil(cols / 8)]: one bit per weight, MSB first (bit 7 of
  byte b of a row is column 8b, numpy's ``packbits`` order), every row padded to a whole byte;
  ``values`` int8 [nnz]: the non-zeros in row-major order.
* ``csr8``    — ``values`` int8 [entries], ``deltas`` uint8 [entries], ``row_ptr`` [rows + 1]:
  entry k of a row is at column col(k) = col(k - 1) + deltas[k], col(-1) = 0 (so the first delta
  of a row is its absolute column, later deltas are >= 1). A gap wider than 255 is bridged by
  filler entries (delta 255, value 0), so entries = nnz + fillers.
* ``csr4``    — the same with 4-bit deltas (fillers for gaps > 15), two per byte: entry k of the
  whole array (not of the row) is the low nibble of ``deltas[k // 2]`` when k is even, the high
  nibble when odd; ``deltas`` has ceil(entries / 2) bytes, a row may start in a high nibble.

``row_ptr[r]`` is the index in ``values`` of row r's first entry (``row_ptr[rows]`` = entries).
Its type is the narrowest unsigned one that holds ``entries``: uint8, uint16 or uint32.

Every emitted byte is counted: ``format_bytes`` is the weight storage (the packed arrays'
sizes), ``layer_bytes`` adds the int32 bias, multiplier and shift per output channel. Alignment
padding between arrays is not counted (as in build.py, which sums symbol sizes).

The kernels (``SPARSE_KERNEL_FUNCTIONS``) give the same int8 results as the dense kernels on the
unpacked weights. ``choose_format`` picks a layer's format from the byte counts and a cost model
fitted to instruction counts measured in QEMU (``sparse_costs.json``, made by
``bench/sparse/fit_costs.py``); ``choose_formats`` does it for a whole model, counting each
kernel's code once.

What the code generator does per weighted layer (bench/sparse/run.py does exactly this):

1. ``fmt = choose_formats(model.layers, variant, objective)[layer.name]``;
   ``packed = pack(layer.weights, fmt)``.
2. Emit ``c_definitions(layer.name, packed)``: one const array per field of ``packed.arrays()``,
   named ``mcup_param_<layer>_<field>`` (so build.py counts them as model flash), with its own C
   type (``int8_t``, ``uint8_t``, ``uint16_t``, ``uint32_t``: ``CArray.nbytes`` must use the
   element size, not assume 1 or 4); an empty array (no non-zeros) is not emitted and its pointer
   is NULL. Bias, multiplier and shift stay as today.
3. The params struct is ``PARAMS_STRUCTS[(op, fmt)]`` (mcup_sparse.h, ``#include "mcup_sparse.h"``
   in model.c), initialized by ``c_params_initializer(layer, packed, quant_initializer)``; the
   kernel is ``SPARSE_KERNEL_FUNCTIONS[(op, fmt)]`` with its ``_get_buffer_size`` companion.
4. Scratch: ``sparse_scratch_bytes(layer, fmt, variant)`` (the reference conv kernels need
   scratch too); sources: ``sparse_kernel_sources(variant, {(op, fmt), ...})``, which includes the
   dense kernel files for (op, "dense") pairs.
5. The architecture hash should include each layer's format (it changes the compiled code).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from mcuprune.codegen.kernels import KERNEL_DIR, KERNEL_FUNCTIONS, VARIANTS, kernel_sources, scratch_bytes
from mcuprune.model.ir import Op, QuantLayer
from mcuprune.resources import KERNEL_COSTS_PATH

FORMATS = ("dense", "bitmask", "csr8", "csr4")
SPARSE_FORMATS = FORMATS[1:]
OBJECTIVES = ("fastest", "smallest")
MAX_DELTA = {"csr8": 255, "csr4": 15}
COSTS_PATH = KERNEL_COSTS_PATH
DEFAULT_CORE = {"reference": "cortex-m3", "dsp": "cortex-m4"}  # the core each variant is tuned for

_OP_PREFIX = {Op.DENSE: "fc", Op.CONV2D: "conv2d"}

# (op, format) -> C function; dense entries are the existing kernels of mcup_nn.h
SPARSE_KERNEL_FUNCTIONS: dict[tuple[Op, str], str] = {
    (op, fmt): KERNEL_FUNCTIONS[op] if fmt == "dense" else f"mcup_{prefix}_s8_{fmt}"
    for op, prefix in _OP_PREFIX.items()
    for fmt in FORMATS
}

# (op, format) -> C parameter struct (mcup_nn.h for dense, mcup_sparse.h otherwise)
PARAMS_STRUCTS: dict[tuple[Op, str], str] = {
    (op, fmt): {
        "dense": f"mcup_{prefix}_params",
        "bitmask": f"mcup_{prefix}_bitmask_params",
        "csr8": f"mcup_{prefix}_csr_params",
        "csr4": f"mcup_{prefix}_csr_params",
    }[fmt]
    for op, prefix in _OP_PREFIX.items()
    for fmt in FORMATS
}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; expected one of {', '.join(VARIANTS)}")


# --- packing --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PackedWeights:
    """One layer's weights in one format: the arrays exactly as they are emitted to C.

    Fields that the format does not use are None. ``arrays()`` yields the others in emission
    order, named as the C arrays' suffixes (``mcup_param_<layer>_<field>``).
    """

    fmt: str
    shape: tuple[int, ...]  # the dense weights' shape; rows = shape[0], cols = the rest
    weights: np.ndarray | None = None  # dense: int8 [rows * cols]
    mask: np.ndarray | None = None  # bitmask: uint8 [rows * ceil(cols / 8)], MSB first
    values: np.ndarray | None = None  # bitmask, csr: int8 non-zeros (csr: with fillers)
    deltas: np.ndarray | None = None  # csr8: uint8 [entries]; csr4: uint8 [ceil(entries / 2)]
    row_ptr: np.ndarray | None = None  # csr: uint8/16/32 [rows + 1]

    @property
    def rows(self) -> int:
        return int(self.shape[0])

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def entries(self) -> int:
        """Stored weights: rows * cols for dense, nnz for bitmask, nnz + fillers for csr."""
        return int(self.weights.size if self.fmt == "dense" else self.values.size)

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("weights", "mask", "values", "deltas", "row_ptr")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays().values())


def weight_matrix(weights: np.ndarray) -> np.ndarray:
    """int8 weights [rows, ...] -> the int8 matrix [rows, cols] the formats store."""
    w = np.asarray(weights)
    if w.ndim < 2:
        raise ValueError(f"weights need at least 2 dimensions (rows, cols...), got shape {w.shape}")
    if w.dtype != np.int8:
        if not np.issubdtype(w.dtype, np.integer) or w.min(initial=0) < -128 or w.max(initial=0) > 127:
            raise ValueError(f"weights must be int8, got {w.dtype}")
        w = w.astype(np.int8)
    return np.ascontiguousarray(w.reshape(w.shape[0], -1))


def row_ptr_dtype(entries: int) -> np.dtype:
    """Narrowest unsigned type that holds every row pointer (0..entries).

    >>> [row_ptr_dtype(n).name for n in (0, 255, 256, 65535, 65536)]
    ['uint8', 'uint8', 'uint16', 'uint16', 'uint32']
    """
    for dtype in (np.uint8, np.uint16, np.uint32):
        if entries <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{entries} entries do not fit 32-bit row pointers")


def _csr_layout(w: np.ndarray, max_delta: int):
    """Row of each non-zero, its delta after fillers, its filler count, and entries per row."""
    rows, cols = np.nonzero(w)  # row-major order
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    prev = np.where(first, 0, np.concatenate([[0], cols[:-1]]))
    gaps = cols - prev
    fillers = np.where(gaps > 0, (gaps - 1) // max_delta, 0)  # each filler advances max_delta
    per_row = np.bincount(rows, weights=fillers + 1, minlength=w.shape[0]).astype(np.int64)
    return rows, cols, gaps - fillers * max_delta, fillers, per_row


def _csr_entries(w: np.ndarray, max_delta: int) -> int:
    return int(_csr_layout(w, max_delta)[4].sum())


def pack(weights: np.ndarray, fmt: str) -> PackedWeights:
    """Pack int8 weights (pruned entries exactly 0) into `fmt`; ``unpack`` inverts it exactly.

    >>> p = pack(np.array([[0, 5, 0, 0, -3], [0, 0, 0, 0, 0]], dtype=np.int8), "csr8")
    >>> p.values.tolist(), p.deltas.tolist(), p.row_ptr.tolist(), p.row_ptr.dtype.name
    ([5, -3], [1, 3], [0, 2, 2], 'uint8')
    >>> pack(np.array([[0, 5, 0, 0, -3]], dtype=np.int8), "bitmask").mask.tolist()  # 0b01001000
    [72]
    """
    _check_format(fmt)
    w = weight_matrix(weights)
    shape = tuple(int(d) for d in np.shape(weights))
    if fmt == "dense":
        return PackedWeights(fmt, shape, weights=w.ravel().copy())
    if fmt == "bitmask":
        mask = np.packbits(w != 0, axis=1, bitorder="big")  # [rows, ceil(cols / 8)]
        return PackedWeights(fmt, shape, mask=mask.ravel(), values=w[w != 0])
    max_delta = MAX_DELTA[fmt]
    rows, cols, last_delta, fillers, per_row = _csr_layout(w, max_delta)
    ends = np.cumsum(fillers + 1) - 1  # where each non-zero lands, after its fillers
    entries = int(per_row.sum())
    deltas = np.full(entries, max_delta, dtype=np.uint8)
    values = np.zeros(entries, dtype=np.int8)
    deltas[ends] = last_delta
    values[ends] = w[rows, cols]
    row_ptr = np.concatenate([[0], np.cumsum(per_row)]).astype(row_ptr_dtype(entries))
    if fmt == "csr4":
        nibbles = np.zeros(entries + entries % 2, dtype=np.uint8)
        nibbles[:entries] = deltas
        deltas = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    return PackedWeights(fmt, shape, values=values, deltas=deltas, row_ptr=row_ptr)


def _csr_deltas(packed: PackedWeights) -> np.ndarray:
    """One delta per entry (csr4 nibbles unpacked)."""
    if packed.fmt == "csr8":
        return packed.deltas.astype(np.int64)
    nibbles = np.stack([packed.deltas & 0xF, packed.deltas >> 4], axis=1).ravel()
    return nibbles[: packed.values.size].astype(np.int64)


def unpack(packed: PackedWeights) -> np.ndarray:
    """The int8 weights (original shape) that `packed` stores. Raises ValueError if malformed."""
    _check_format(packed.fmt)
    rows, cols = packed.rows, packed.cols
    if packed.fmt == "dense":
        return packed.weights.reshape(packed.shape).copy()
    w = np.zeros((rows, cols), dtype=np.int8)
    if packed.fmt == "bitmask":
        bits = np.unpackbits(packed.mask.reshape(rows, -1), axis=1, count=cols, bitorder="big").astype(bool)
        if int(bits.sum()) != packed.values.size:
            raise ValueError(f"bitmask has {int(bits.sum())} bits set but {packed.values.size} values")
        w[bits] = packed.values
        return w.reshape(packed.shape)
    row_ptr = packed.row_ptr.astype(np.int64)
    if row_ptr[0] != 0 or row_ptr[-1] != packed.values.size or (np.diff(row_ptr) < 0).any():
        raise ValueError("row pointers do not cover the values array")
    deltas = _csr_deltas(packed)
    row_of = np.repeat(np.arange(rows), np.diff(row_ptr))
    running = np.cumsum(deltas)
    col = running - np.concatenate([[0], running])[row_ptr[:-1]][row_of]  # cumsum restarted per row
    if col.size and col.max() >= cols:
        raise ValueError(f"a column index runs past the {cols} columns")
    w[row_of, col] = packed.values
    return w.reshape(packed.shape)


# --- byte accounting ------------------------------------------------------------------------


def format_bytes(weights: np.ndarray, fmt: str) -> int:
    """Bytes of the packed weight arrays (== pack(weights, fmt).nbytes, without packing)."""
    _check_format(fmt)
    w = weight_matrix(weights)
    rows, cols = w.shape
    if fmt == "dense":
        return rows * cols
    if fmt == "bitmask":
        return rows * ((cols + 7) // 8) + int(np.count_nonzero(w))
    entries = _csr_entries(w, MAX_DELTA[fmt])
    index_bytes = entries if fmt == "csr8" else (entries + 1) // 2
    return entries + index_bytes + (rows + 1) * row_ptr_dtype(entries).itemsize


def quant_bytes(layer: QuantLayer) -> int:
    """int32 bias (when present), multiplier and shift per output channel."""
    per_channel = 2 + (layer.bias is not None)
    return 4 * per_channel * int(layer.weights.shape[0])


def layer_bytes(layer: QuantLayer, fmt: str) -> int:
    """Every parameter byte the layer emits in `fmt`: packed weights + bias/multiplier/shift."""
    _require_weights(layer)
    return format_bytes(layer.weights, fmt) + quant_bytes(layer)


def _require_weights(layer: QuantLayer) -> None:
    if layer.op not in _OP_PREFIX:
        raise ValueError(f"layer {layer.name}: op {layer.op.value} has no weight formats")
    if layer.mask is not None and np.any(np.asarray(layer.weights)[~np.asarray(layer.mask, dtype=bool)]):
        raise ValueError(f"layer {layer.name}: weights outside the mask are not 0")


# --- kernels --------------------------------------------------------------------------------


def _source_name(op: Op, fmt: str) -> str:
    return f"{_OP_PREFIX[op]}_s8_{fmt}.c"


def sparse_kernel_sources(variant: str, ops_and_formats: Iterable[tuple[Op | str, str]]) -> list[Path]:
    """The .c files for the (op, format) pairs: the variant's file where it exists, else the
    reference. One per distinct pair, ordered by op then format, so builds are reproducible.

    >>> [p.relative_to(KERNEL_DIR).as_posix() for p in sparse_kernel_sources("reference", [("dense", "csr4")])]
    ['reference/fc_s8_csr4.c']
    """
    _check_variant(variant)
    wanted = set()
    for op, fmt in ops_and_formats:
        _check_format(fmt)
        op = Op(op)
        if op not in _OP_PREFIX:
            raise ValueError(f"op {op.value} has no weight formats")
        wanted.add((op, fmt))
    sources: list[Path] = []
    for op in Op:
        for fmt in FORMATS:
            if (op, fmt) not in wanted:
                continue
            if fmt == "dense":
                sources += kernel_sources(variant, [op])
                continue
            path = KERNEL_DIR / variant / _source_name(op, fmt)
            sources.append(path if path.is_file() else KERNEL_DIR / "reference" / _source_name(op, fmt))
    return sources


def _has_variant_file(op: Op, fmt: str, variant: str) -> bool:
    return (KERNEL_DIR / variant / _source_name(op, fmt)).is_file()


def sparse_scratch_bytes(layer: QuantLayer, fmt: str, variant: str) -> int:
    """Scratch bytes of the layer's kernel in `fmt`: exactly its C ``_get_buffer_size``.

    FC: the reference kernels need none; the DSP ones hold the input as int16 (input_offset
    added), 2 bytes per feature rounded up to a word. Conv2d: the reference kernels hold one
    im2col patch as int16 (k_h * k_w * in_c values, rounded up to a word); the DSP ones two
    patches interleaved, one word per patch position.
    """
    _check_format(fmt)
    _check_variant(variant)
    _require_weights(layer)
    if fmt == "dense":
        return scratch_bytes(layer, variant)
    cols = math.prod(int(d) for d in layer.weights.shape[1:])
    optimized = _has_variant_file(layer.op, fmt, variant) and variant != "reference"
    if layer.op is Op.DENSE:
        return 4 * ((cols + 1) // 2) if optimized else 0
    return 4 * cols if optimized else 4 * ((cols + 1) // 2)


def c_arrays(layer_name: str, packed: PackedWeights) -> list[tuple[str, str, np.ndarray]]:
    """(C name, C type, values) of each array the format emits, names ``mcup_param_<layer>_<field>``.

    >>> [(n, t) for n, t, _ in c_arrays("fc1", pack(np.eye(3, dtype=np.int8), "csr4"))]
    [('mcup_param_fc1_values', 'int8_t'), ('mcup_param_fc1_deltas', 'uint8_t'), ('mcup_param_fc1_row_ptr', 'uint8_t')]
    """
    return [
        (f"mcup_param_{layer_name}_{field}", f"{a.dtype.name}_t", a)
        for field, a in packed.arrays().items()
        if a.size > 0  # C has no empty arrays: the struct field is NULL instead (never read)
    ]


def c_definitions(layer_name: str, packed: PackedWeights, per_line: int = 16) -> str:
    """C definitions of the packed arrays (const, natural alignment: no padding is needed).

    >>> print(c_definitions("fc1", pack(np.array([[0, 7], [-1, 0]], dtype=np.int8), "csr8")))
    const int8_t mcup_param_fc1_values[2] = {
        7, -1
    };
    const uint8_t mcup_param_fc1_deltas[2] = {
        1, 0
    };
    const uint8_t mcup_param_fc1_row_ptr[3] = {
        0, 1, 2
    };
    <BLANKLINE>
    """
    out = []
    for name, ctype, values in c_arrays(layer_name, packed):
        flat = [str(int(v)) for v in values.ravel()]
        lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
        body = ",\n".join("    " + line for line in lines)
        out.append(f"const {ctype} {name}[{len(flat)}] = {{\n{body}\n}};\n")
    return "".join(out)


def c_weights_initializer(layer_name: str, packed: PackedWeights) -> str:
    """The designated initializers of the weight fields of the layer's params struct.

    >>> for field in c_weights_initializer("fc1", pack(np.eye(3, dtype=np.int8), "csr8")).split(", "):
    ...     print(field)
    .values = mcup_param_fc1_values
    .deltas = mcup_param_fc1_deltas
    .row_ptr = mcup_param_fc1_row_ptr
    .row_ptr_bytes = 1
    >>> c_weights_initializer("c1", pack(np.eye(3, dtype=np.int8), "bitmask"))
    '.mask = mcup_param_c1_mask, .values = mcup_param_c1_values'
    """
    fields = [
        f".{field} = " + (f"mcup_param_{layer_name}_{field}" if a.size > 0 else "NULL")
        for field, a in packed.arrays().items()
    ]
    if packed.row_ptr is not None:
        fields.append(f".row_ptr_bytes = {packed.row_ptr.dtype.itemsize}")
    return ", ".join(fields)


def c_params_initializer(layer: QuantLayer, packed: PackedWeights, quant_initializer: str) -> str:
    """C initializer of the layer's params struct (``PARAMS_STRUCTS[(op, fmt)]``).

    `quant_initializer` is the ``{ .bias = ..., ... }`` initializer of its mcup_quant_params.
    """
    weights = c_weights_initializer(layer.name, packed)
    if layer.op is Op.DENSE:
        out_f, in_f = layer.weights.shape
        return f"{{ .in_features = {in_f}, .out_features = {out_f}, {weights}, .q = {quant_initializer} }}"
    out_c, k_h, k_w, in_c = layer.weights.shape
    (h, w, _), (oh, ow, _) = layer.in_shape, layer.out_shape
    return (
        f"{{ .in_h = {h}, .in_w = {w}, .in_c = {in_c}, .out_h = {oh}, .out_w = {ow}, .out_c = {out_c},"
        f" .k_h = {k_h}, .k_w = {k_w}, .stride = {layer.stride}, .pad = {layer.pad},"
        f" {weights}, .q = {quant_initializer} }}"
    )


# --- cost model and format choice ----------------------------------------------------------


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

    def inside(n_out: int, k: int, n_in: int) -> int:
        starts = np.arange(n_out) * layer.stride - layer.pad
        return int(sum(np.count_nonzero((s + np.arange(k) >= 0) & (s + np.arange(k) < n_in)) for s in starts))

    return inside(out_h, k_h, in_h) * inside(out_w, k_w, in_w)


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
        per_row = _csr_layout(w, MAX_DELTA[fmt])[4]
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
    _check_format(fmt)
    _check_variant(variant)
    _require_weights(layer)
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
    _check_variant(variant)
    _require_weights(layer)
    if layer.mask is None:
        return ["dense"]
    if objective == "smallest":
        return list(FORMATS)
    dense = _model(layer.op, "dense", variant, core)
    dense_floor = predict_instructions(layer, "dense", variant, core) * (1 - dense["max_relative_error"])
    allowed = ["dense"]
    for fmt in SPARSE_FORMATS:
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
    weighted = [layer for layer in layers if layer.op in _OP_PREFIX]
    options = {layer.name: _candidates(layer, variant, objective, core) for layer in weighted}
    sizes = {layer.name: {fmt: format_bytes(layer.weights, fmt) for fmt in FORMATS} for layer in weighted}
    choice: dict[str, str] = {}
    for op in _OP_PREFIX:
        group = [layer.name for layer in weighted if layer.op is op]
        if not group:
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
