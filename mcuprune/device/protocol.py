"""Host side of the frame protocol spoken over the device UART (docs/protocol.md).

Wire: ``COBS(body) 0x00``; body = ``version u8 | type u8 | seq u16 LE | payload | crc32 u32 LE``, the
CRC-32/IEEE over version..payload. The C twin is firmware/runtime/{cobs,crc32,protocol}.c.

Only ``FrameError`` (a ValueError) is raised for bad bytes; ``FrameReader`` never raises at all.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

import numpy as np

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


class MsgType(enum.IntEnum):
    INFO = 0x01
    INFER = 0x02
    TELEMETRY = 0x03  # blob firmware: telemetry on/off, last record
    CAPTURE = 0x04  # blob firmware: the next RESULTs carry a tensor
    UPDATE_BEGIN = 0x05
    UPDATE_CHUNK = 0x06
    UPDATE_COMMIT = 0x07
    ROLLBACK = 0x08
    INFER_FILE = 0x0E  # emulation only: inputs read from a host file through semihosting
    EXIT = 0x0F
    ERROR = 0xFF  # device -> host only

    @property
    def reply(self) -> int:
        return self | REPLY_FLAG


class ErrorCode(enum.IntEnum):
    BAD_CRC = 1
    BAD_VERSION = 2
    UNKNOWN_TYPE = 3
    BAD_LENGTH = 4
    TOO_LONG = 5
    MODEL_FAILED = 6  # mcup_init() or mcup_run() returned non-zero
    IO = 7  # INFER_FILE: host file missing or too short
    ARCH_MISMATCH = 8  # UPDATE_BEGIN: the blob is for another architecture (re-flash needed)
    BAD_BLOB = 9  # header invalid, or array table/contents invalid at commit
    BAD_BLOB_CRC = 10  # UPDATE_COMMIT: data CRC mismatch
    NO_UPDATE = 11  # UPDATE_CHUNK/COMMIT with no update open, or COMMIT with another blob id
    INCOMPLETE = 12  # UPDATE_COMMIT before the watermark reached the length
    NO_ROLLBACK = 13  # ROLLBACK with no other valid slot
    NO_MONITOR = 14  # reserved


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

    def body(self) -> bytes:
        """The unencoded body: header, payload, CRC."""
        if not (0 <= self.type <= 0xFF and 0 <= self.seq <= 0xFFFF and 0 <= self.version <= 0xFF):
            raise ValueError(f"frame field out of range: {self}")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
        head = _HEADER.pack(self.version, self.type, self.seq) + bytes(self.payload)
        return head + _CRC.pack(crc32(head))


def encode_frame(frame: Frame) -> bytes:
    """Wire bytes of `frame`: COBS(body) followed by the 0x00 delimiter."""
    return cobs_encode(frame.body()) + b"\x00"


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


# --- messages ----------------------------------------------------------------------------------
#
# pack_* builds a payload, unpack_* parses one. Every unpack_* checks the payload completely (length,
# enumerated values, trailing bytes) and raises FrameError, and only FrameError, on anything else.

_INFO_FIXED = struct.Struct("<BBBIIHHB")
_SLOT = struct.Struct("<BIIII")  # state, generation, length, blob id, watermark
_CAPACITY = struct.Struct("<I")
NO_SLOT = 0xFF  # INFO's active slot when no slot holds a usable blob
NUM_SLOTS = 2
MAX_CHUNK_DATA = MAX_PAYLOAD - 4  # UPDATE_CHUNK: u32 offset, then at most this many bytes
BLOB_HEADER_BYTES = 32  # UPDATE_BEGIN's payload (mcuprune.codegen.blob.HEADER_BYTES)


class ParamsMode(enum.IntEnum):
    STATIC = 0  # parameters compiled into the code: no updates, TELEMETRY/CAPTURE unknown
    BLOB = 1  # parameters in a blob in one of two slots: updatable


class SlotStatus(enum.IntEnum):
    EMPTY = 0
    WRITING = 1
    VALID = 2
    INVALID = 3


@dataclass(frozen=True)
class SlotState:
    """One slot record as INFO reports it."""

    state: SlotStatus
    generation: int
    length: int  # blob length, bytes
    blob_id: int
    watermark: int  # end of the contiguous prefix received (meaningful while WRITING)


_INFO_SLOTS_BYTES = 1 + NUM_SLOTS * _SLOT.size + _CAPACITY.size  # after the params mode byte


@dataclass(frozen=True)
class DeviceInfo:
    protocol_version: int
    fw_version: tuple[int, int]  # (major, minor)
    arch_hash: int
    clock_hz: int
    input_size: int  # int8 bytes per INFER payload
    output_size: int  # int8 logits per RESULT
    num_layers: int
    board: str
    model: str
    params_mode: int = ParamsMode.STATIC
    active_slot: int | None = None  # 0 (A), 1 (B), None: no usable slot (or static firmware)
    slots: tuple[SlotState, ...] = ()  # (A, B) for blob firmware, () for static
    slot_capacity: int = 0  # bytes per slot data area

    @property
    def updatable(self) -> bool:
        return self.params_mode == ParamsMode.BLOB

    @property
    def active(self) -> SlotState | None:
        """The record of the slot whose blob is serving, if any."""
        return None if self.active_slot is None else self.slots[self.active_slot]

    @property
    def active_blob_id(self) -> int | None:
        active = self.active
        return None if active is None else active.blob_id


def pack_info(info: DeviceInfo) -> bytes:
    fixed = _INFO_FIXED.pack(info.protocol_version, *info.fw_version, info.arch_hash, info.clock_hz,
                             info.input_size, info.output_size, info.num_layers)
    out = fixed + info.board.encode() + b"\x00" + info.model.encode() + b"\x00" + bytes([info.params_mode])
    if info.params_mode == ParamsMode.BLOB:
        if len(info.slots) != NUM_SLOTS:
            raise ValueError(f"blob firmware reports {NUM_SLOTS} slots, got {len(info.slots)}")
        out += bytes([NO_SLOT if info.active_slot is None else info.active_slot])
        out += b"".join(_SLOT.pack(s.state, s.generation, s.length, s.blob_id, s.watermark) for s in info.slots)
        out += _CAPACITY.pack(info.slot_capacity)
    return out


def _unpack_slots(data: bytes) -> tuple[int | None, tuple[SlotState, ...], int]:
    """INFO's tail after params mode 1: active slot, the two slot records, slot capacity."""
    if len(data) != _INFO_SLOTS_BYTES:
        raise FrameError(f"INFO slot section of {len(data)} bytes, expected {_INFO_SLOTS_BYTES}")
    active = data[0]
    if active not in (0, 1, NO_SLOT):
        raise FrameError(f"INFO active slot {active} is not 0, 1 or 0xff")
    slots = []
    for i in range(NUM_SLOTS):
        state, generation, length, blob_id, watermark = _SLOT.unpack_from(data, 1 + i * _SLOT.size)
        try:
            status = SlotStatus(state)
        except ValueError:
            raise FrameError(f"INFO slot {'AB'[i]} has unknown state {state}") from None
        slots.append(SlotState(status, generation, length, blob_id, watermark))
    (capacity,) = _CAPACITY.unpack_from(data, 1 + NUM_SLOTS * _SLOT.size)
    return (None if active == NO_SLOT else active), tuple(slots), capacity


def unpack_info(payload: bytes) -> DeviceInfo:
    """INFO reply. Firmware from before params modes ends after the two names: that is mode 0."""
    payload = bytes(payload)
    if len(payload) < _INFO_FIXED.size + 2:
        raise FrameError(f"INFO reply of {len(payload)} bytes is too short")
    proto, major, minor, arch, clock, n_in, n_out, layers = _INFO_FIXED.unpack_from(payload)
    board_end = payload.find(b"\x00", _INFO_FIXED.size)
    model_end = payload.find(b"\x00", board_end + 1) if board_end >= 0 else -1
    if model_end < 0:
        raise FrameError("INFO reply must carry two NUL-terminated names")
    try:
        board = payload[_INFO_FIXED.size : board_end].decode()
        model = payload[board_end + 1 : model_end].decode()
    except UnicodeDecodeError:
        raise FrameError("INFO reply names are not UTF-8") from None
    tail = payload[model_end + 1 :]
    common = (proto, (major, minor), arch, clock, n_in, n_out, layers, board, model)
    if not tail:
        return DeviceInfo(*common)
    if tail[0] == ParamsMode.STATIC:
        if len(tail) != 1:
            raise FrameError(f"INFO reply has {len(tail) - 1} bytes after params mode 0")
        return DeviceInfo(*common)
    if tail[0] != ParamsMode.BLOB:
        raise FrameError(f"INFO reply has unknown params mode {tail[0]}")
    active, slots, capacity = _unpack_slots(tail[1:])
    return DeviceInfo(*common, params_mode=ParamsMode.BLOB, active_slot=active, slots=slots,
                      slot_capacity=capacity)


# --- TELEMETRY ---------------------------------------------------------------------------------

TELEMETRY_BYTES = 43
TELEMETRY_FIELDS = ("count", "top1", "confidence_q15", "recon_error", "histogram")  # Telemetry.record()
_TELEMETRY = struct.Struct("<IBHI16H")


def pack_telemetry_record(record: dict) -> bytes:
    """The 43-byte record from a dict with Telemetry.record()'s keys."""
    hist = [int(v) for v in record["histogram"]]
    if len(hist) != 16:
        raise ValueError(f"telemetry histogram has {len(hist)} bins, expected 16")
    return _TELEMETRY.pack(int(record["count"]), int(record["top1"]), int(record["confidence_q15"]),
                           int(record["recon_error"]), *hist)


def unpack_telemetry_record(data: bytes) -> dict:
    """43 bytes -> {count, top1, confidence_q15, recon_error, histogram} (Telemetry.record()'s shape)."""
    if len(data) != TELEMETRY_BYTES:
        raise FrameError(f"telemetry record of {len(data)} bytes, expected {TELEMETRY_BYTES}")
    count, top1, confidence, recon, *hist = _TELEMETRY.unpack(bytes(data))
    return {"count": count, "top1": top1, "confidence_q15": confidence, "recon_error": recon,
            "histogram": list(hist)}


def _check_mode(mode: int, what: str) -> int:
    if mode not in (0, 1):
        raise FrameError(f"{what} mode {mode} is not 0 (off) or 1 (on)")
    return mode


def pack_telemetry_request(mode: int) -> bytes:
    if mode not in (0, 1):
        raise ValueError(f"telemetry mode must be 0 (off) or 1 (on), got {mode}")
    return bytes([mode])


def unpack_telemetry_request(payload: bytes) -> int:
    if len(payload) != 1:
        raise FrameError(f"TELEMETRY request of {len(payload)} bytes, expected 1")
    return _check_mode(payload[0], "TELEMETRY")


def pack_telemetry_reply(mode: int, record: dict) -> bytes:
    return bytes([mode]) + pack_telemetry_record(record)


def unpack_telemetry_reply(payload: bytes) -> tuple[int, dict]:
    """TELEMETRY reply: (mode now in force, the record of the last inference)."""
    if len(payload) != 1 + TELEMETRY_BYTES:
        raise FrameError(f"TELEMETRY reply of {len(payload)} bytes, expected {1 + TELEMETRY_BYTES}")
    return _check_mode(payload[0], "TELEMETRY reply"), unpack_telemetry_record(payload[1:])


# --- CAPTURE -----------------------------------------------------------------------------------


class CaptureWhich(enum.IntEnum):
    INPUT = 0  # the int8 input as received
    PENULTIMATE = 1  # the last layer's input activations


_CAPTURE_REQUEST = struct.Struct("<BH")
_CAPTURE_REPLY = struct.Struct("<BHH")


@dataclass(frozen=True)
class CaptureReply:
    which: int  # CaptureWhich
    count: int  # the next `count` RESULTs carry the tensor
    bytes_per_capture: int


def _capture_which(which: int) -> int:
    if which not in (CaptureWhich.INPUT, CaptureWhich.PENULTIMATE):
        raise FrameError(f"capture target {which} is not 0 (input) or 1 (penultimate)")
    return which


def pack_capture_request(which: int, count: int) -> bytes:
    if which not in (CaptureWhich.INPUT, CaptureWhich.PENULTIMATE) or not 0 <= count <= 0xFFFF:
        raise ValueError(f"bad CAPTURE request: which {which}, count {count}")
    return _CAPTURE_REQUEST.pack(which, count)


def unpack_capture_request(payload: bytes) -> tuple[int, int]:
    if len(payload) != _CAPTURE_REQUEST.size:
        raise FrameError(f"CAPTURE request of {len(payload)} bytes, expected {_CAPTURE_REQUEST.size}")
    which, count = _CAPTURE_REQUEST.unpack(bytes(payload))
    return _capture_which(which), count


def pack_capture_reply(reply: CaptureReply) -> bytes:
    return _CAPTURE_REPLY.pack(reply.which, reply.count, reply.bytes_per_capture)


def unpack_capture_reply(payload: bytes) -> CaptureReply:
    if len(payload) != _CAPTURE_REPLY.size:
        raise FrameError(f"CAPTURE reply of {len(payload)} bytes, expected {_CAPTURE_REPLY.size}")
    which, count, size = _CAPTURE_REPLY.unpack(bytes(payload))
    return CaptureReply(_capture_which(which), count, size)


# --- UPDATE_BEGIN / UPDATE_CHUNK / UPDATE_COMMIT / ROLLBACK -------------------------------------

_BEGIN_REPLY = struct.Struct("<BIH")
_SWITCH = struct.Struct("<BII")
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class UpdateBeginReply:
    slot: int  # the slot being written (the inactive one)
    next_offset: int  # 32 for a fresh update, the watermark when resuming
    max_chunk: int  # largest UPDATE_CHUNK data the device takes, bytes


@dataclass(frozen=True)
class SlotSwitch:
    """UPDATE_COMMIT and ROLLBACK replies: the slot now serving."""

    slot: int
    generation: int
    blob_id: int


def _check_slot(slot: int, what: str) -> int:
    if slot not in (0, 1):
        raise FrameError(f"{what} names slot {slot}, not 0 or 1")
    return slot


def pack_update_begin(header: bytes) -> bytes:
    if len(header) != BLOB_HEADER_BYTES:
        raise ValueError(f"UPDATE_BEGIN carries the {BLOB_HEADER_BYTES}-byte blob header, got {len(header)} bytes")
    return bytes(header)


def unpack_update_begin(payload: bytes) -> bytes:
    if len(payload) != BLOB_HEADER_BYTES:
        raise FrameError(f"UPDATE_BEGIN of {len(payload)} bytes, expected {BLOB_HEADER_BYTES}")
    return bytes(payload)


def pack_update_begin_reply(reply: UpdateBeginReply) -> bytes:
    return _BEGIN_REPLY.pack(reply.slot, reply.next_offset, reply.max_chunk)


def unpack_update_begin_reply(payload: bytes) -> UpdateBeginReply:
    if len(payload) != _BEGIN_REPLY.size:
        raise FrameError(f"UPDATE_BEGIN reply of {len(payload)} bytes, expected {_BEGIN_REPLY.size}")
    slot, next_offset, max_chunk = _BEGIN_REPLY.unpack(bytes(payload))
    if not 1 <= max_chunk <= MAX_CHUNK_DATA:
        raise FrameError(f"UPDATE_BEGIN reply allows chunks of {max_chunk} bytes, not 1..{MAX_CHUNK_DATA}")
    if next_offset < BLOB_HEADER_BYTES:
        raise FrameError(f"UPDATE_BEGIN reply's next offset {next_offset} lies inside the header")
    return UpdateBeginReply(_check_slot(slot, "UPDATE_BEGIN reply"), next_offset, max_chunk)


def pack_update_chunk(offset: int, data: bytes) -> bytes:
    if not 1 <= len(data) <= MAX_CHUNK_DATA or not 0 <= offset <= 0xFFFFFFFF:
        raise ValueError(f"UPDATE_CHUNK takes 1..{MAX_CHUNK_DATA} bytes at a u32 offset, got {len(data)} at {offset}")
    return _U32.pack(offset) + bytes(data)


def unpack_update_chunk(payload: bytes) -> tuple[int, bytes]:
    if not 4 + 1 <= len(payload) <= 4 + MAX_CHUNK_DATA:
        raise FrameError(f"UPDATE_CHUNK of {len(payload)} bytes, expected 5..{4 + MAX_CHUNK_DATA}")
    return _U32.unpack_from(bytes(payload))[0], bytes(payload[4:])


def pack_update_chunk_reply(watermark: int) -> bytes:
    return _U32.pack(watermark)


def unpack_update_chunk_reply(payload: bytes) -> int:
    """UPDATE_CHUNK reply: the watermark (end of the contiguous prefix the device holds)."""
    if len(payload) != 4:
        raise FrameError(f"UPDATE_CHUNK reply of {len(payload)} bytes, expected 4")
    return _U32.unpack(bytes(payload))[0]


def pack_update_commit(blob_id: int) -> bytes:
    return _U32.pack(blob_id)


def unpack_update_commit(payload: bytes) -> int:
    if len(payload) != 4:
        raise FrameError(f"UPDATE_COMMIT of {len(payload)} bytes, expected 4")
    return _U32.unpack(bytes(payload))[0]


def unpack_rollback(payload: bytes) -> None:
    if payload:
        raise FrameError(f"ROLLBACK of {len(payload)} bytes, expected none")


def pack_slot_switch(switch: SlotSwitch) -> bytes:
    return _SWITCH.pack(switch.slot, switch.generation, switch.blob_id)


def unpack_slot_switch(payload: bytes) -> SlotSwitch:
    """UPDATE_COMMIT (0x87) and ROLLBACK (0x88) replies."""
    if len(payload) != _SWITCH.size:
        raise FrameError(f"slot switch reply of {len(payload)} bytes, expected {_SWITCH.size}")
    slot, generation, blob_id = _SWITCH.unpack(bytes(payload))
    return SlotSwitch(_check_slot(slot, "slot switch reply"), generation, blob_id)


# --- RESULT ------------------------------------------------------------------------------------

SECTION_TELEMETRY = 1
SECTION_CAPTURE = 2
_SECTION = struct.Struct("<BH")


@dataclass(frozen=True, eq=False)
class InferResult:
    logits: np.ndarray  # int8 [output_size]
    predicted: int  # argmax of logits, first index wins ties
    ticks: int  # SysTick ticks spent in mcup_run
    layer_ticks: np.ndarray  # uint32 [num_layers], ticks per layer
    telemetry: dict | None = None  # with TELEMETRY on: Telemetry.record()'s keys
    capture: tuple[int, np.ndarray] | None = None  # after CAPTURE: (CaptureWhich, int8 tensor)


def pack_result(result: InferResult) -> bytes:
    logits = np.asarray(result.logits, dtype=np.int8)
    layer_ticks = np.asarray(result.layer_ticks, dtype="<u4")
    out = struct.pack("<IB", result.ticks, result.predicted) + logits.tobytes() + layer_ticks.tobytes()
    if result.telemetry is not None:
        out += _SECTION.pack(SECTION_TELEMETRY, TELEMETRY_BYTES) + pack_telemetry_record(result.telemetry)
    if result.capture is not None:
        which, tensor = result.capture
        data = bytes([which]) + np.asarray(tensor, dtype=np.int8).tobytes()
        out += _SECTION.pack(SECTION_CAPTURE, len(data)) + data
    return out


def unpack_result(payload: bytes, output_size: int, num_layers: int) -> InferResult:
    """RESULT: the fixed fields, then optional sections (telemetry, then capture; each at most once)."""
    payload = bytes(payload)
    fixed = 5 + output_size + 4 * num_layers
    if len(payload) < fixed:
        raise FrameError(f"RESULT of {len(payload)} bytes, expected {fixed} "
                         f"({output_size} logits, {num_layers} layers) or more")
    ticks, predicted = struct.unpack_from("<IB", payload)
    logits = np.frombuffer(payload, dtype=np.int8, count=output_size, offset=5).copy()
    layer_ticks = np.frombuffer(payload, dtype="<u4", count=num_layers, offset=5 + output_size)
    telemetry, capture = None, None
    pos, last_tag = fixed, 0
    while pos < len(payload):
        if len(payload) - pos < _SECTION.size:
            raise FrameError(f"RESULT has {len(payload) - pos} stray bytes after its sections")
        tag, length = _SECTION.unpack_from(payload, pos)
        body = payload[pos + _SECTION.size : pos + _SECTION.size + length]
        if len(body) != length:
            raise FrameError(f"RESULT section {tag} of {length} bytes runs past the end")
        if tag <= last_tag:
            raise FrameError(f"RESULT section {tag} out of order or repeated")
        if tag == SECTION_TELEMETRY:
            telemetry = unpack_telemetry_record(body)
        elif tag == SECTION_CAPTURE:
            if length < 2:
                raise FrameError(f"RESULT capture section of {length} bytes holds no tensor")
            capture = (_capture_which(body[0]), np.frombuffer(body, dtype=np.int8, offset=1).copy())
        else:
            raise FrameError(f"RESULT has unknown section tag {tag}")
        pos, last_tag = pos + _SECTION.size + length, tag
    return InferResult(logits, predicted, ticks, layer_ticks.astype(np.uint32), telemetry, capture)


# --- ERROR -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorReply:
    code: int
    offending_type: int

    def describe(self) -> str:
        try:
            what = ErrorCode(self.code).name
        except ValueError:
            what = f"error {self.code}"
        try:
            kind = MsgType(self.offending_type).name
        except ValueError:
            kind = f"0x{self.offending_type:02x}"
        return f"{what} for {kind}"


def pack_error(err: ErrorReply) -> bytes:
    return bytes([err.code, err.offending_type])


def unpack_error(payload: bytes) -> ErrorReply:
    if len(payload) != 2:
        raise FrameError(f"ERROR payload of {len(payload)} bytes, expected 2")
    return ErrorReply(payload[0], payload[1])
