"""The messages of the device protocol (docs/protocol.md): types, error codes and every payload.

pack_* builds a payload, unpack_* parses one. Every unpack_* checks the payload completely (length,
enumerated values, trailing bytes) and raises FrameError, and only FrameError, on anything else.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

from mcuprune.device.frames import MAX_PAYLOAD, REPLY_FLAG, FrameError


class MsgType(enum.IntEnum):
    INFO = 0x01
    INFER = 0x02
    TELEMETRY = 0x03  # blob firmware: telemetry on/off, last record
    CAPTURE = 0x04  # blob firmware: the next RESULTs carry a tensor
    UPDATE_BEGIN = 0x05
    UPDATE_CHUNK = 0x06
    UPDATE_COMMIT = 0x07
    ROLLBACK = 0x08
    LABEL = 0x09  # blob firmware: the true class of a served sample (field ground truth)
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
    # Signed builds (docs/protocol.md, "Signed updates"):
    UNSIGNED = 15  # UPDATE_COMMIT: the blob carries no signature
    WRONG_KEY = 16  # UPDATE_COMMIT: the blob is signed with another key
    BAD_SIGNATURE = 17  # UPDATE_COMMIT: the signature does not verify (blob changed after signing, or forged)
    OLD_COUNTER = 18  # UPDATE_COMMIT, ROLLBACK: the blob's security counter is below the device's
    REPLAYED = 19  # an authorization for another nonce (recorded earlier, or from before a restart)
    UNAUTHORISED = 20  # a command that needs authority came without a valid authorization
    BAD_LABEL = 21  # LABEL: the class is not one of the model's outputs (>= INFO's output size)


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
    STATIC = 0  # parameters compiled into the code: no updates, TELEMETRY/CAPTURE/LABEL unknown
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
KEY_ID_BYTES = 8
NONCE_BYTES = 8
_INFO_SIGNED_BYTES = 1 + KEY_ID_BYTES + 4 + NONCE_BYTES  # mode 1, key id, counter, nonce


class SecurityMode(enum.IntEnum):
    DEVELOPMENT = 0  # --unsigned-updates (and static firmware): nothing needs authority
    SIGNED = 1  # built with a signing key


def _unpack_security(data: bytes) -> dict:
    """INFO's last section: the security mode, and for a signed build its key id, counter, nonce."""
    if len(data) == 1 and data[0] == SecurityMode.DEVELOPMENT:
        return {}
    if len(data) != _INFO_SIGNED_BYTES or data[0] != SecurityMode.SIGNED:
        raise FrameError(f"INFO security section of {len(data)} bytes (mode {data[0] if data else None}) is "
                         f"neither 1 byte of mode 0 nor {_INFO_SIGNED_BYTES} of mode 1")
    (counter,) = struct.unpack_from("<I", data, 1 + KEY_ID_BYTES)
    return {"signed": True, "key_id": bytes(data[1 : 1 + KEY_ID_BYTES]), "security_counter": counter,
            "nonce": bytes(data[-NONCE_BYTES:])}


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
    # Security section (docs/protocol.md, "Signed updates"); firmware without it is a development build.
    signed: bool = False  # built with a signing key: blobs must be signed, commands authorised
    key_id: bytes = b""  # signed: the first 8 bytes of SHA-512 of the owner's public key
    security_counter: int = 0  # signed: no blob below it is committed, booted or rolled back to
    nonce: bytes = b""  # signed: what the next authorization must be made for (u32 epoch, u32 sequence)

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
    if info.params_mode != ParamsMode.BLOB:
        return out + bytes([SecurityMode.DEVELOPMENT])
    if info.params_mode == ParamsMode.BLOB:
        if len(info.slots) != NUM_SLOTS:
            raise ValueError(f"blob firmware reports {NUM_SLOTS} slots, got {len(info.slots)}")
        out += bytes([NO_SLOT if info.active_slot is None else info.active_slot])
        out += b"".join(_SLOT.pack(s.state, s.generation, s.length, s.blob_id, s.watermark) for s in info.slots)
        out += _CAPACITY.pack(info.slot_capacity)
    if not info.signed:
        return out + bytes([SecurityMode.DEVELOPMENT])
    return out + bytes([SecurityMode.SIGNED]) + info.key_id + _U32.pack(info.security_counter) + info.nonce


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
        if len(tail) > 2:  # firmware from before the security section ends after the mode
            raise FrameError(f"INFO reply has {len(tail) - 1} bytes after params mode 0")
        security = _unpack_security(tail[1:]) if len(tail) == 2 else {}
        if security:
            raise FrameError("INFO reply of static firmware claims signed updates")
        return DeviceInfo(*common)
    if tail[0] != ParamsMode.BLOB:
        raise FrameError(f"INFO reply has unknown params mode {tail[0]}")
    slots_end = 1 + _INFO_SLOTS_BYTES
    active, slots, capacity = _unpack_slots(tail[1:slots_end])
    security = _unpack_security(tail[slots_end:]) if len(tail) > slots_end else {}
    return DeviceInfo(*common, params_mode=ParamsMode.BLOB, active_slot=active, slots=slots,
                      slot_capacity=capacity, **security)


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


# --- LABEL -------------------------------------------------------------------------------------

LABEL_RING = 256  # MCUP_LABEL_RING: the device remembers the last this many served samples
NO_TOP1 = 0xFF  # LABEL reply's served top1 when the sample is unknown
_LABEL_REQUEST = struct.Struct("<IB")  # sample id, class
_LABEL_REPLY = struct.Struct("<IBBBII")  # sample id, class, status, served top1, labeled, correct


class LabelStatus(enum.IntEnum):
    COUNTED = 0  # the sample is in the device's ring: labeled (and maybe correct) moved
    UNKNOWN = 1  # older than the ring, never served, or from before a restart: not counted


@dataclass(frozen=True)
class LabelReply:
    sample_id: int  # the telemetry count of the sample's RESULT
    label: int  # the true class the host sent
    counted: bool  # the device still remembered the sample and counted the label
    served_top1: int | None  # the class the device served for it (None when not counted)
    labeled: int  # labels counted since boot, this one included
    correct: int  # ... whose class was the served top1


def pack_label(sample_id: int, label: int) -> bytes:
    if not 0 <= sample_id <= 0xFFFFFFFF or not 0 <= label <= 0xFF:
        raise ValueError(f"bad LABEL request: sample id {sample_id}, class {label}")
    return _LABEL_REQUEST.pack(sample_id, label)


def unpack_label(payload: bytes) -> tuple[int, int]:
    """LABEL request: (sample id, class). Whether the class exists is the device's to say (BAD_LABEL)."""
    if len(payload) != _LABEL_REQUEST.size:
        raise FrameError(f"LABEL request of {len(payload)} bytes, expected {_LABEL_REQUEST.size}")
    sample_id, label = _LABEL_REQUEST.unpack(bytes(payload))
    return sample_id, label


def pack_label_reply(reply: LabelReply) -> bytes:
    if reply.counted == (reply.served_top1 is None):
        raise ValueError(f"a LABEL reply has a served top1 exactly when counted: {reply}")
    status = LabelStatus.COUNTED if reply.counted else LabelStatus.UNKNOWN
    top1 = NO_TOP1 if reply.served_top1 is None else reply.served_top1
    return _LABEL_REPLY.pack(reply.sample_id, reply.label, status, top1, reply.labeled, reply.correct)


def unpack_label_reply(payload: bytes) -> LabelReply:
    if len(payload) != _LABEL_REPLY.size:
        raise FrameError(f"LABEL reply of {len(payload)} bytes, expected {_LABEL_REPLY.size}")
    sample_id, label, status, top1, labeled, correct = _LABEL_REPLY.unpack(bytes(payload))
    if status not in (LabelStatus.COUNTED, LabelStatus.UNKNOWN):
        raise FrameError(f"LABEL reply status {status} is not 0 (counted) or 1 (unknown)")
    counted = status == LabelStatus.COUNTED
    if not counted and top1 != NO_TOP1:
        raise FrameError(f"LABEL reply of an unknown sample serves top1 {top1}, expected 0xff")
    return LabelReply(sample_id, label, counted, top1 if counted else None, labeled, correct)


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
