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

* ``block4`` — blocks of 1 x 4: the columns are cut into ceil(cols / 4) blocks of 4 consecutive
  columns (the last one padded with zero columns), and a row stores each block holding a non-zero,
  its zeros included, so any mask is representable (the speed comes when masks are made of whole
  blocks). ``values`` int8 [4 * blocks]: the stored blocks' weights, row-major, 4 per block;
  ``block_cols`` [blocks]: the block column of each (block b covers columns 4b .. 4b + 3), strictly
  increasing within a row, uint8 when ceil(cols / 4) <= 256 else uint16 (``block_col_dtype``: the
  width follows from the shape); ``row_ptr`` [rows + 1] counts blocks.

``row_ptr[r]`` is the index in ``values`` of row r's first entry (``row_ptr[rows]`` = entries),
for block4 the index of its first block. Its type is the narrowest unsigned one that holds
``entries`` (blocks): uint8, uint16 or uint32.

**int4 weights** (``QuantLayer.weight_bits`` 4: per-channel symmetric, values in [-8, 7]) are
stored two per byte in two's complement, the first of two values in the **low nibble** (TFLite's
and TFLM's int4 order, ``UnpackDenseInt4IntoInt8``). The mask, deltas and row pointers are as
above; only the weights/values arrays change, to uint8 bytes of nibbles:

* ``dense``   — ``weights`` uint8 [rows * ceil(cols / 2)]: **each row starts on a byte**, an odd
  row ends with a 0 high nibble. (For an even cols these are exactly TFLite's bytes of the
  [rows, cols] tensor; the DSP kernels read whole bytes of a row, and a row never shares a byte.)
* ``bitmask`` — ``values`` uint8 [ceil(nnz / 2)]: the non-zeros in row-major order as one nibble
  stream across rows (value k in the low nibble of byte k // 2 when k is even, the high when odd;
  a 0 high nibble after an odd count).
* ``csr8``/``csr4`` — ``values`` uint8 [ceil(entries / 2)], the same stream over the entries
  (fillers included): entry k's value sits where csr4 keeps entry k's delta, so ``row_ptr`` keeps
  counting entries and a row may start in a high nibble.
* ``block4`` — ``values`` uint8 [2 * blocks], the same stream: block k's 4 values in bytes 2k and
  2k + 1 (every block starts on a byte).

Every emitted byte is counted: ``format_bytes`` is the weight storage (the packed arrays'
sizes), ``layer_bytes`` adds the int32 bias, multiplier and shift per output channel. Alignment
padding between arrays is not counted (as in build.py, which sums symbol sizes).

Which format a layer is emitted in is chosen by costs.py (bytes and measured instructions); the
code generator emits the packed arrays (codegen/emit.py) for the kernels the operator table names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mcuprune.model.ir import QuantLayer
from mcuprune.model.ops import FORMATS, WEIGHT_BITS, check_bits, check_format

SPARSE_FORMATS = FORMATS[1:]
MAX_DELTA = {"csr8": 255, "csr4": 15}
BLOCK = 4  # block4: columns per block
MAX_BLOCK_COLS = 65536  # block4: uint16 block columns
WEIGHT_RANGE = {8: (-128, 127), 4: (-8, 7)}  # what each width can store (quantize gives [-127, 127], [-7, 7])


# --- nibbles --------------------------------------------------------------------------------


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """int4 values (in [-8, 7]) two per byte, the first in the low nibble; an odd count ends in a 0
    high nibble.

    >>> pack_nibbles(np.array([1, -2, 7])).tolist()  # 0xE1 = -2 << 4 | 1, then 7
    [225, 7]
    """
    v = np.asarray(values, dtype=np.int64).ravel() & 0xF
    if v.size % 2:
        v = np.append(v, 0)
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(data: np.ndarray, count: int) -> np.ndarray:
    """The first `count` int4 values of bytes packed by pack_nibbles, as int8.

    >>> unpack_nibbles(np.array([225, 7], dtype=np.uint8), 3).tolist()
    [1, -2, 7]
    """
    b = np.asarray(data, dtype=np.uint8).ravel()
    if count > 2 * b.size:
        raise ValueError(f"{b.size} bytes hold {2 * b.size} nibbles, not {count}")
    nibbles = np.stack([b & 0xF, b >> 4], axis=1).ravel()[:count].astype(np.int8)
    return np.where(nibbles >= 8, nibbles - 16, nibbles).astype(np.int8)


def value_bytes(n: int, bits: int = 8) -> int:
    """Bytes of n stored weights: one each (int8), or two per byte (int4)."""
    check_bits(bits)
    return n if bits == 8 else (n + 1) // 2


def row_bytes(cols: int, bits: int = 8) -> int:
    """Bytes of one dense weight row (int4 rows start on a byte: ceil(cols / 2))."""
    return value_bytes(cols, bits)

# --- packing --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PackedWeights:
    """One layer's weights in one format: the arrays exactly as they are emitted to C.

    Fields that the format does not use are None. ``arrays()`` yields the others in emission
    order, named as the C arrays' suffixes (``mcup_param_<layer>_<field>``).
    """

    fmt: str
    shape: tuple[int, ...]  # the dense weights' shape; rows = shape[0], cols = the rest
    weights: np.ndarray | None = None  # dense: int8 [rows * cols]; int4: uint8 [rows * ceil(cols / 2)]
    mask: np.ndarray | None = None  # bitmask: uint8 [rows * ceil(cols / 8)], MSB first
    values: np.ndarray | None = None  # int8 non-zeros (csr: with fillers; block4: 4 per block); int4: uint8 nibbles
    deltas: np.ndarray | None = None  # csr8: uint8 [entries]; csr4: uint8 [ceil(entries / 2)]
    block_cols: np.ndarray | None = None  # block4: uint8/16 [blocks], the block column of each stored block
    row_ptr: np.ndarray | None = None  # csr: uint8/16/32 [rows + 1]; block4: the same, counting blocks
    bits: int = 8  # weight width: 8, or 4 (weights/values two per byte, see the module docstring)

    @property
    def rows(self) -> int:
        return int(self.shape[0])

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def entries(self) -> int:
        """Stored weights: rows * cols for dense, nnz for bitmask, nnz + fillers for csr, 4 * blocks for
        block4 (the stored blocks' zeros included)."""
        if self.fmt == "dense":
            return self.rows * self.cols
        if self.fmt == "bitmask":
            return int(np.unpackbits(self.mask).sum())
        if self.fmt == "block4":
            return BLOCK * int(self.row_ptr[-1])
        return int(self.row_ptr[-1])

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("weights", "mask", "values", "deltas", "block_cols", "row_ptr")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays().values())


def weight_matrix(weights: np.ndarray, bits: int = 8) -> np.ndarray:
    """int8 weights [rows, ...] -> the int8 matrix [rows, cols] the formats store. With `bits` 4 the
    values must be int4 ([-8, 7]), held in the int8 array."""
    check_bits(bits)
    w = np.asarray(weights)
    if w.ndim < 2:
        raise ValueError(f"weights need at least 2 dimensions (rows, cols...), got shape {w.shape}")
    if w.dtype != np.int8:
        if not np.issubdtype(w.dtype, np.integer) or w.min(initial=0) < -128 or w.max(initial=0) > 127:
            raise ValueError(f"weights must be int8, got {w.dtype}")
        w = w.astype(np.int8)
    lo, hi = WEIGHT_RANGE[bits]
    if bits != 8 and w.size and (w.min() < lo or w.max() > hi):
        raise ValueError(f"{bits}-bit weights must lie in [{lo}, {hi}], got [{w.min()}, {w.max()}]")
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


def block_col_dtype(cols: int) -> np.dtype:
    """block4's block column type for a matrix of `cols` columns: uint8 up to 256 blocks, else uint16.

    >>> [block_col_dtype(n).name for n in (1, 1024, 1025, 262144)]
    ['uint8', 'uint8', 'uint16', 'uint16']
    """
    blocks = -(-cols // BLOCK)
    if blocks > MAX_BLOCK_COLS:
        raise ValueError(f"block4 takes at most {BLOCK * MAX_BLOCK_COLS} columns, not {cols}")
    return np.dtype(np.uint8 if blocks <= 256 else np.uint16)


def block_layout(w: np.ndarray) -> np.ndarray:
    """block4: which blocks of 4 columns hold a non-zero, bool [rows, ceil(cols / 4)]."""
    rows, cols = w.shape
    padded = np.zeros((rows, -(-cols // BLOCK) * BLOCK), dtype=bool)
    padded[:, :cols] = w != 0
    return padded.reshape(rows, -1, BLOCK).any(axis=2)


def csr_layout(w: np.ndarray, max_delta: int):
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
    return int(csr_layout(w, max_delta)[4].sum())


def _pack_values(values: np.ndarray, bits: int) -> np.ndarray:
    return values if bits == 8 else pack_nibbles(values)


def pack(weights: np.ndarray, fmt: str, bits: int = 8) -> PackedWeights:
    """Pack int8 weights (pruned entries exactly 0) into `fmt`, `bits` wide (8, or 4: two per byte,
    see the module docstring); ``unpack`` inverts it exactly.

    >>> p = pack(np.array([[0, 5, 0, 0, -3], [0, 0, 0, 0, 0]], dtype=np.int8), "csr8")
    >>> p.values.tolist(), p.deltas.tolist(), p.row_ptr.tolist(), p.row_ptr.dtype.name
    ([5, -3], [1, 3], [0, 2, 2], 'uint8')
    >>> pack(np.array([[0, 5, 0, 0, -3]], dtype=np.int8), "bitmask").mask.tolist()  # 0b01001000
    [72]
    >>> pack(np.array([[1, -2, 3], [4, 5, -8]], dtype=np.int8), "dense", 4).weights.tolist()  # rows padded
    [225, 3, 84, 8]
    >>> p = pack(np.array([[0, 0, 0, 0, 0, 2], [3, 0, 0, 0, 0, 0]], dtype=np.int8), "block4")
    >>> p.values.tolist(), p.block_cols.tolist(), p.row_ptr.tolist()  # the last block padded to 4 columns
    ([0, 2, 0, 0, 3, 0, 0, 0], [1, 0], [0, 1, 2])
    """
    check_format(fmt)
    w = weight_matrix(weights, bits)
    shape = tuple(int(d) for d in np.shape(weights))
    if fmt == "dense":
        if bits == 8:
            return PackedWeights(fmt, shape, weights=w.ravel().copy())
        return PackedWeights(fmt, shape, weights=np.concatenate([pack_nibbles(row) for row in w]) if w.size
                             else np.zeros(0, np.uint8), bits=bits)  # fmt: skip
    if fmt == "bitmask":
        mask = np.packbits(w != 0, axis=1, bitorder="big")  # [rows, ceil(cols / 8)]
        return PackedWeights(fmt, shape, mask=mask.ravel(), values=_pack_values(w[w != 0], bits), bits=bits)
    if fmt == "block4":
        kept = block_layout(w)  # [rows, blocks per row]
        rows_of, block_of = np.nonzero(kept)  # row-major
        padded = np.zeros((w.shape[0], kept.shape[1] * BLOCK), dtype=np.int8)
        padded[:, : w.shape[1]] = w
        values = padded.reshape(w.shape[0], -1, BLOCK)[rows_of, block_of].ravel()
        blocks = int(block_of.size)
        row_ptr = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(row_ptr_dtype(blocks))
        return PackedWeights(fmt, shape, values=_pack_values(values, bits),
                             block_cols=block_of.astype(block_col_dtype(w.shape[1])), row_ptr=row_ptr, bits=bits)
    max_delta = MAX_DELTA[fmt]
    rows, cols, last_delta, fillers, per_row = csr_layout(w, max_delta)
    ends = np.cumsum(fillers + 1) - 1  # where each non-zero lands, after its fillers
    entries = int(per_row.sum())
    deltas = np.full(entries, max_delta, dtype=np.uint8)
    values = np.zeros(entries, dtype=np.int8)
    deltas[ends] = last_delta
    values[ends] = w[rows, cols]
    row_ptr = np.concatenate([[0], np.cumsum(per_row)]).astype(row_ptr_dtype(entries))
    if fmt == "csr4":
        deltas = pack_nibbles(deltas)  # 0..15: the same low-nibble-first stream
    return PackedWeights(fmt, shape, values=_pack_values(values, bits), deltas=deltas, row_ptr=row_ptr, bits=bits)


def _csr_deltas(packed: PackedWeights, entries: int) -> np.ndarray:
    """One delta per entry (csr4 nibbles unpacked)."""
    if packed.deltas.size != (entries if packed.fmt == "csr8" else (entries + 1) // 2):
        raise ValueError(f"{packed.fmt} deltas array has {packed.deltas.size} bytes for {entries} entries")
    if packed.fmt == "csr8":
        return packed.deltas.astype(np.int64)
    nibbles = np.stack([packed.deltas & 0xF, packed.deltas >> 4], axis=1).ravel()
    return nibbles[:entries].astype(np.int64)


def _unpack_values(packed: PackedWeights, count: int) -> np.ndarray:
    """The `count` stored values (int8), checking the array holds exactly that many."""
    if packed.values.size != value_bytes(count, packed.bits):
        raise ValueError(f"{packed.fmt} values array has {packed.values.size} bytes, {count} {packed.bits}-bit "
                         f"values need {value_bytes(count, packed.bits)}")
    return packed.values if packed.bits == 8 else unpack_nibbles(packed.values, count)


def unpack(packed: PackedWeights) -> np.ndarray:
    """The int8 weights (original shape) that `packed` stores. Raises ValueError if malformed."""
    check_format(packed.fmt)
    check_bits(packed.bits)
    rows, cols = packed.rows, packed.cols
    if packed.fmt == "dense":
        if packed.bits == 8:
            return packed.weights.reshape(packed.shape).copy()
        per_row = row_bytes(cols, packed.bits)
        if packed.weights.size != rows * per_row:
            raise ValueError(f"int4 dense weights have {packed.weights.size} bytes, {rows} rows of {cols} need "
                             f"{rows * per_row}")
        data = packed.weights.reshape(rows, per_row)
        return np.stack([unpack_nibbles(row, cols) for row in data]).reshape(packed.shape)
    if packed.fmt == "block4":
        return _unpack_block4(packed).reshape(packed.shape)
    w = np.zeros((rows, cols), dtype=np.int8)
    if packed.fmt == "bitmask":
        bits = np.unpackbits(packed.mask.reshape(rows, -1), axis=1, count=cols, bitorder="big").astype(bool)
        nnz = int(bits.sum())
        if packed.bits == 8 and nnz != packed.values.size:
            raise ValueError(f"bitmask has {nnz} bits set but {packed.values.size} values")
        w[bits] = _unpack_values(packed, nnz)
        return w.reshape(packed.shape)
    row_ptr = packed.row_ptr.astype(np.int64)
    entries = int(row_ptr[-1])
    if row_ptr[0] != 0 or packed.values.size != value_bytes(entries, packed.bits) or (np.diff(row_ptr) < 0).any():
        raise ValueError("row pointers do not cover the values array")
    deltas = _csr_deltas(packed, entries)
    row_of = np.repeat(np.arange(rows), np.diff(row_ptr))
    running = np.cumsum(deltas)
    col = running - np.concatenate([[0], running])[row_ptr[:-1]][row_of]  # cumsum restarted per row
    if col.size and col.max() >= cols:
        raise ValueError(f"a column index runs past the {cols} columns")
    w[row_of, col] = _unpack_values(packed, entries)
    return w.reshape(packed.shape)


def _unpack_block4(packed: PackedWeights) -> np.ndarray:
    """The [rows, cols] matrix of a block4 packing, checking what mcup_bind checks (bind_check.c)."""
    rows, cols = packed.rows, packed.cols
    n_blocks = -(-cols // BLOCK)
    row_ptr = packed.row_ptr.astype(np.int64)
    blocks = int(row_ptr[-1]) if row_ptr.size == rows + 1 else -1
    if blocks < 0 or row_ptr[0] != 0 or (np.diff(row_ptr) < 0).any() or packed.block_cols.size != blocks:
        raise ValueError("row pointers do not cover the block columns")
    if packed.block_cols.dtype != block_col_dtype(cols):
        raise ValueError(f"block columns of {cols} columns are {block_col_dtype(cols).name}, "
                         f"not {packed.block_cols.dtype.name}")
    col = packed.block_cols.astype(np.int64)
    row_of = np.repeat(np.arange(rows), np.diff(row_ptr))
    if col.size and col.max() >= n_blocks:
        raise ValueError(f"a block column runs past the {n_blocks} blocks of {cols} columns")
    if (np.diff(col)[row_of[1:] == row_of[:-1]] <= 0).any():
        raise ValueError("block columns do not increase within a row")
    padded = np.zeros((rows, n_blocks, BLOCK), dtype=np.int8)
    padded[row_of, col] = _unpack_values(packed, BLOCK * blocks).reshape(-1, BLOCK)
    return padded.reshape(rows, -1)[:, :cols]


# --- byte accounting ------------------------------------------------------------------------


def format_sizes(weights: np.ndarray, bits: int = 8) -> dict[str, int]:
    """format_bytes of the weights in every format, by format name."""
    return {fmt: format_bytes(weights, fmt, bits) for fmt in FORMATS}


def format_bytes(weights: np.ndarray, fmt: str, bits: int = 8) -> int:
    """Bytes of the packed weight arrays (== pack(weights, fmt, bits).nbytes, without packing), `bits`
    the weight width (8, or 4: values two per byte, dense rows starting on a byte)."""
    check_format(fmt)
    w = weight_matrix(weights, bits)
    rows, cols = w.shape
    if fmt == "dense":
        return rows * row_bytes(cols, bits)
    if fmt == "bitmask":
        return rows * ((cols + 7) // 8) + value_bytes(int(np.count_nonzero(w)), bits)
    if fmt == "block4":
        blocks = int(block_layout(w).sum())
        return (value_bytes(BLOCK * blocks, bits) + blocks * block_col_dtype(cols).itemsize
                + (rows + 1) * row_ptr_dtype(blocks).itemsize)  # fmt: skip
    entries = _csr_entries(w, MAX_DELTA[fmt])
    index_bytes = entries if fmt == "csr8" else (entries + 1) // 2
    return value_bytes(entries, bits) + index_bytes + (rows + 1) * row_ptr_dtype(entries).itemsize


def quant_bytes(layer: QuantLayer) -> int:
    """int32 bias (when present), multiplier and shift per output channel."""
    per_channel = 2 + (layer.bias is not None)
    return 4 * per_channel * int(layer.weights.shape[0])


def layer_bytes(layer: QuantLayer, fmt: str) -> int:
    """Every parameter byte the layer emits in `fmt` at its ``weight_bits``: packed weights +
    bias/multiplier/shift."""
    require_weights(layer)
    return format_bytes(layer.weights, fmt, layer.weight_bits) + quant_bytes(layer)


def pack_layer(layer: QuantLayer, fmt: str) -> PackedWeights:
    """The layer's weights packed in `fmt` at its own width (``weight_bits``)."""
    require_weights(layer)
    return pack(layer.weights, fmt, layer.weight_bits)


def require_weights(layer: QuantLayer) -> None:
    if layer.weights is None:
        raise ValueError(f"layer {layer.name}: op {layer.op.value} has no weight formats")
    if layer.weight_bits not in WEIGHT_BITS:
        raise ValueError(f"layer {layer.name}: weights are {', '.join(map(str, WEIGHT_BITS))} bits wide, not "
                         f"{layer.weight_bits}")
    if layer.mask is not None and np.any(np.asarray(layer.weights)[~np.asarray(layer.mask, dtype=bool)]):
        raise ValueError(f"layer {layer.name}: weights outside the mask are not 0")
