"""Frames on the device UART (docs/protocol.md): COBS-delimited, versioned, sequence-numbered, CRC-checked.

Wire: ``COBS(body) 0x00``; body = ``version u8 | type u8 | seq u16 LE | payload | crc32 u32 LE``, the
CRC-32/IEEE over version..payload. The C twin is firmware/runtime/{cobs,crc32,protocol}.c. What a
payload holds is messages.py's business.

Only ``FrameError`` (a ValueError) is raised for bad bytes; ``FrameReader`` never raises at all.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

PROTOCOL_VERSION = 1
MAX_PAYLOAD = 2048  # bytes, both directions (MCUP_MAX_PAYLOAD)
HEADER_SIZE = 4  # version, type, seq
CRC_SIZE = 4
MAX_BODY = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
REPLY_FLAG = 0x80  # reply type = request type | REPLY_FLAG


def cobs_max_encoded(n: int) -> int:
    """Largest COBS encoding of n bytes, without the 0x00 delimiter."""
    return n + n // 254 + 1


MAX_ENCODED = cobs_max_encoded(MAX_BODY)

_HEADER = struct.Struct("<BBH")
_CRC = struct.Struct("<I")


class FrameError(ValueError):
    """Bytes that are not a valid frame (or a payload that does not fit its message)."""


def crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32/IEEE (reflected 0xEDB88320, init and xorout 0xFFFFFFFF): zlib's, same as the firmware's."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def cobs_encode(data: bytes) -> bytes:
    """Canonical COBS: no 0x00 in the result; a final full 254-byte block gets no trailing 0x01."""
    out = bytearray()
    segments = bytes(data).split(b"\x00")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        # A full block (code 0xFF) has no implicit zero; close one early only if more data follows.
        while len(seg) > 254 or (len(seg) == 254 and not last):
            out.append(0xFF)
            out += seg[:254]
            seg = seg[254:]
        out.append(len(seg) + 1)
        out += seg
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode. Raises FrameError on a 0x00 byte or a block running past the end."""
    data = bytes(data)
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise FrameError("COBS data contains 0x00")
        end = i + code
        if end > n:
            raise FrameError("COBS block runs past the end of the frame")
        block = data[i + 1 : end]
        if 0 in block:
            raise FrameError("COBS data contains 0x00")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""
    version: int = PROTOCOL_VERSION

    def body(self, max_payload: int = MAX_PAYLOAD) -> bytes:
        """The unencoded body: header, payload, CRC."""
        if not (0 <= self.type <= 0xFF and 0 <= self.seq <= 0xFFFF and 0 <= self.version <= 0xFF):
            raise ValueError(f"frame field out of range: {self}")
        if len(self.payload) > max_payload:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds MAX_PAYLOAD={max_payload}")
        head = _HEADER.pack(self.version, self.type, self.seq) + bytes(self.payload)
        return head + _CRC.pack(crc32(head))


def encode_frame(frame: Frame, max_payload: int = MAX_PAYLOAD) -> bytes:
    """Wire bytes of `frame`: COBS(body) followed by the 0x00 delimiter."""
    return cobs_encode(frame.body(max_payload)) + b"\x00"


def max_request_payload(input_size: int) -> int:
    """The longest request a device takes: MAX_PAYLOAD, or an INFER of a larger input
    (MCUP_MAX_REQUEST_PAYLOAD in firmware/runtime/protocol.h). Replies stay within MAX_PAYLOAD."""
    return max(MAX_PAYLOAD, input_size)


def decode_body(body: bytes) -> Frame:
    """Check length, CRC and version of a decoded body. Raises FrameError."""
    if len(body) < HEADER_SIZE + CRC_SIZE:
        raise FrameError(f"frame of {len(body)} bytes is shorter than header + CRC")
    if len(body) > MAX_BODY:
        raise FrameError(f"frame of {len(body)} bytes is longer than MAX_BODY={MAX_BODY}")
    (crc,) = _CRC.unpack_from(body, len(body) - CRC_SIZE)
    if crc32(body[:-CRC_SIZE]) != crc:
        raise FrameError("frame CRC mismatch")
    version, type_, seq = _HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise FrameError(f"frame has protocol version {version}, expected {PROTOCOL_VERSION}")
    return Frame(type=type_, seq=seq, payload=bytes(body[HEADER_SIZE:-CRC_SIZE]), version=version)


def decode_frame(encoded: bytes) -> Frame:
    """Frame from COBS-encoded bytes (without the 0x00 delimiter). Raises FrameError."""
    if len(encoded) > MAX_ENCODED:
        raise FrameError(f"encoded frame of {len(encoded)} bytes is longer than {MAX_ENCODED}")
    return decode_body(cobs_decode(encoded))


def printable(data: bytes, limit: int = 200) -> str:
    """One line of text showing `data` for humans: newlines as ' | ', other control bytes escaped,
    at most `limit` characters (the tail, which is what matters when something hangs)."""
    text = bytes(data).decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
    parts = []
    for ch in text:
        if ch == "\n":
            parts.append(" | ")
        elif ch.isprintable() and ord(ch) < 0x7F:
            parts.append(ch)
        else:
            parts.append(f"\\x{ord(ch):02x}")
    line = "".join(parts).strip(" |")
    return line if len(line) <= limit else "..." + line[-(limit - 3) :]


class FrameReader:
    """Turns a byte stream into frames. Feed it whatever the port returns, in any split.

    Anything between delimiters that is not a valid frame (the boot banner, a fault line, line
    noise) is kept, most recent last, in a ring of `noise_limit` bytes for diagnostics.
    """

    def __init__(self, noise_limit: int = 4096) -> None:
        self._pending = bytearray()
        self._discarding = False  # the current chunk outgrew any frame: skip to the next 0x00
        self._noise = bytearray()
        self._noise_limit = noise_limit
        self.dropped = 0  # chunks that were not frames

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        view = bytes(data)
        start = 0
        while start < len(view):
            end = view.find(b"\x00", start)
            piece = view[start:] if end < 0 else view[start:end]
            self._append(piece)
            if end < 0:
                break
            chunk, discarding = bytes(self._pending), self._discarding
            self._pending.clear()
            self._discarding = False
            start = end + 1
            if not chunk and not discarding:
                continue  # an empty chunk: two delimiters in a row
            try:
                if discarding:
                    raise FrameError("too long")
                frames.append(decode_frame(chunk))
            except FrameError:
                self.dropped += 1
                self._add_noise(chunk + b"\n")
        return frames

    def _append(self, piece: bytes) -> None:
        if self._discarding:
            self._add_noise(piece)
            return
        self._pending += piece
        if len(self._pending) > MAX_ENCODED:
            self._add_noise(bytes(self._pending))
            self._pending.clear()
            self._discarding = True

    def _add_noise(self, data: bytes) -> None:
        self._noise += data
        if len(self._noise) > self._noise_limit:
            del self._noise[: len(self._noise) - self._noise_limit]

    @property
    def noise(self) -> bytes:
        """Recent bytes that were not frames (each dropped chunk followed by a newline)."""
        return bytes(self._noise)

    @property
    def pending(self) -> bytes:
        """Bytes received since the last delimiter."""
        return bytes(self._pending)

    def last_output(self, limit: int = 200) -> str:
        """The most recent non-frame output, printable and bounded, e.g. for error messages."""
        text = printable(self._noise + self._pending, limit)
        return text or "(none)"
