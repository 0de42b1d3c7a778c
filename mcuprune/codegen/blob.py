"""The model blob: every parameter of an updatable firmware in one byte string.

Layout (docs/protocol.md, "Model blob"; C twin firmware/runtime/blob.{h,c}): a 32-byte header
(magic, format, architecture hash, length, blob id, array count, data CRC, header CRC), a table of
(offset, length) per array, then the arrays, each 4-aligned. Which arrays, in which order and of
which element type, is fixed by the architecture; codegen.blob_arrays lists them for a model.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = 0x4250434D  # b"MCPB" little-endian
FORMAT = 1
HEADER_BYTES = 32
TABLE_ENTRY_BYTES = 8
_HEADER = struct.Struct("<IHHIIIHHII")  # ..., data_crc, header_crc
_HEADER_NO_CRC = struct.Struct("<IHHIIIHHI")


class BlobError(ValueError):
    """A blob that is not well formed (bad magic, CRC, table)."""


@dataclass(frozen=True)
class BlobHeader:
    arch_hash: int
    length: int
    blob_id: int
    n_arrays: int
    data_crc: int
    header_crc: int
    magic: int = MAGIC
    format: int = FORMAT
    header_bytes: int = HEADER_BYTES
    reserved: int = 0

    def pack(self) -> bytes:
        return _HEADER.pack(self.magic, self.format, self.header_bytes, self.arch_hash, self.length, self.blob_id,
                            self.n_arrays, self.reserved, self.data_crc, self.header_crc)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def pack_blob(arrays: list[np.ndarray], arch_hash: int, blob_id: int | None = None) -> bytes:
    """Header + table + arrays (little-endian, each 4-aligned, zero padding between them).

    `blob_id` defaults to the data CRC, so two blobs with the same parameters have the same id.
    """
    n = len(arrays)
    if n > 0xFFFF:
        raise BlobError(f"{n} arrays do not fit the u16 array count")
    offset = _align4(HEADER_BYTES + TABLE_ENTRY_BYTES * n)
    table, parts = [], []
    for a in arrays:
        raw = np.ascontiguousarray(a).astype(np.asarray(a).dtype.newbyteorder("<"), copy=False).tobytes()
        table.append((offset, len(raw)))
        parts.append((offset, raw))
        offset = _align4(offset + len(raw))
    length = parts[-1][0] + len(parts[-1][1]) if parts else HEADER_BYTES + TABLE_ENTRY_BYTES * n
    body = bytearray(length - HEADER_BYTES)
    for i, (off, ln) in enumerate(table):
        struct.pack_into("<II", body, TABLE_ENTRY_BYTES * i, off, ln)
    for off, raw in parts:
        body[off - HEADER_BYTES : off - HEADER_BYTES + len(raw)] = raw
    data_crc = zlib.crc32(bytes(body))
    blob_id = data_crc if blob_id is None else blob_id
    head = _HEADER_NO_CRC.pack(MAGIC, FORMAT, HEADER_BYTES, arch_hash, length, blob_id, n, 0, data_crc)
    return head + struct.pack("<I", zlib.crc32(head)) + bytes(body)


def parse_header(data: bytes, capacity: int | None = None) -> BlobHeader:
    """Check and parse the 32-byte header (what the device checks at UPDATE_BEGIN, bar the arch hash)."""
    if len(data) < HEADER_BYTES:
        raise BlobError(f"blob of {len(data)} bytes is shorter than its {HEADER_BYTES}-byte header")
    fields = _HEADER.unpack_from(data)
    magic, fmt, header_bytes, arch, length, blob_id, n, reserved, data_crc, header_crc = fields
    if magic != MAGIC:
        raise BlobError(f"not a model blob (magic 0x{magic:08x}, expected 0x{MAGIC:08x})")
    if fmt != FORMAT or header_bytes != HEADER_BYTES:
        raise BlobError(f"blob format {fmt} with a {header_bytes}-byte header is not format {FORMAT}")
    if zlib.crc32(data[:28]) != header_crc:
        raise BlobError("blob header CRC mismatch")
    if length < HEADER_BYTES + TABLE_ENTRY_BYTES * n:
        raise BlobError(f"blob length {length} cannot hold the header and a {n}-entry table")
    if capacity is not None and length > capacity:
        raise BlobError(f"blob of {length} bytes does not fit a {capacity}-byte slot")
    return BlobHeader(arch, length, blob_id, n, data_crc, header_crc, magic, fmt, header_bytes, reserved)


def parse_blob(data: bytes) -> tuple[BlobHeader, list[bytes]]:
    """Header and the raw bytes of each array; checks both CRCs and the table bounds."""
    header = parse_header(data)
    if len(data) != header.length:
        raise BlobError(f"blob is {len(data)} bytes, its header says {header.length}")
    if zlib.crc32(data[HEADER_BYTES:]) != header.data_crc:
        raise BlobError("blob data CRC mismatch")
    arrays = []
    for i in range(header.n_arrays):
        off, ln = struct.unpack_from("<II", data, HEADER_BYTES + TABLE_ENTRY_BYTES * i)
        if off % 4 or off < HEADER_BYTES + TABLE_ENTRY_BYTES * header.n_arrays or off + ln > header.length:
            raise BlobError(f"array {i} at offset {off}, {ln} bytes, lies outside the blob or is misaligned")
        arrays.append(data[off : off + ln])
    return header, arrays
