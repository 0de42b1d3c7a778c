"""The firmware's frame handling (firmware/runtime/protocol.c with cobs.c, crc32.c and, for the
--params blob messages, slots.c, blob.c, telemetry.c) built for the host with
gcc -fsanitize=address,undefined and fed hundreds of thousands of frames by tests/c/proto_harness.c.
The fake blob model (tests/c/fake_model/) stands in for generated code; replies are parsed with
mcuprune.device.messages, so both sides of the wire format are checked against each other.

* random bytes, valid frames of every type with random payloads, and mutated valid frames (bit
  flips, truncation, duplication, reordering, lost delimiters): no sanitizer error, and
  everything the device writes is a well-formed reply frame;
* for the valid frames, every request gets exactly the reply a small model of the device predicts:
  each well-formed but wrong request an ERROR with the right code;
* a scripted session: INFO, TELEMETRY, CAPTURE, an update, rollbacks, LABEL, their errors.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from test_slots_c import C_DIR, RUNTIME, TEST_CAPACITY, fake_arrays, fake_blobs, host_build, write_test_blobs

from mcuprune.device.frames import MAX_PAYLOAD, Frame, FrameReader, cobs_encode, crc32
from mcuprune.device.messages import (
    LABEL_RING,
    ErrorCode,
    LabelReply,
    MsgType,
    ParamsMode,
    SlotStatus,
    unpack_capture_reply,
    unpack_error,
    unpack_info,
    unpack_label_reply,
    unpack_result,
    unpack_slot_switch,
    unpack_telemetry_reply,
    unpack_update_begin_reply,
    unpack_update_chunk_reply,
)

FAKE_INPUT, FAKE_OUTPUT, FAKE_LAYERS, FAKE_PENULTIMATE = 32, 4, 2, 8  # tests/c/fake_model/model.h
FILE_INPUTS = 3  # proto_harness.c: the fake semihosting file FAKE_FILE
FAKE_FILE = b"/tmp/mcuprune-offer-fake/mem.bin"  # an offered path (protocol.c opens no other kind)
# Paths the device must refuse without opening: not offered, or escaping the offered folder.
UNOFFERED = [b"mem", b"/etc/passwd", b"/tmp/mcuprune-offer-fake/../../etc/x.bin", b"/tmp/mcuprune-offer-/x.bin",
             b"/tmp/mcuprune-offer-fake/mem.txt", b":tt", b"/tmp/mcuprune-offer-fake/./mem.bin"]
RESULT_FIXED = 4 + 1 + FAKE_OUTPUT + 4 * FAKE_LAYERS
TELEMETRY_SECTION = 3 + 43


def _build(folder: Path, name: str, *defines: str) -> Path:
    write_test_blobs(folder / "test_blobs.c")
    sources = [C_DIR / "proto_harness.c", RUNTIME / "protocol.c", RUNTIME / "cobs.c", RUNTIME / "crc32.c",
               RUNTIME / "slots.c", RUNTIME / "blob.c", RUNTIME / "telemetry.c", C_DIR / "fake_model.c",
               folder / "test_blobs.c"]
    return host_build(folder / name, sources, ('MCUP_BOARD_NAME="host-board"', "MCUP_CLOCK_HZ=25000000u", *defines))


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The --params blob firmware."""
    return _build(tmp_path_factory.mktemp("proto-harness"), "proto_harness")


def serve(exe: Path, wire: bytes) -> list[Frame]:
    proc = subprocess.run([str(exe), "serve"], input=wire, capture_output=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]  # ASan/UBSan land here
    reader = FrameReader()
    frames = reader.feed(proc.stdout)
    # The device writes nothing but well-formed frames: no undecodable bytes, nothing unterminated.
    assert reader.dropped == 0 and reader.noise == b"" and reader.pending == b""
    for f in frames:
        assert f.type == MsgType.ERROR or 0x81 <= f.type <= 0x8F, f
        if f.type == MsgType.ERROR:
            code = unpack_error(f.payload).code
            assert 1 <= code <= 13 or code == ErrorCode.BAD_LABEL, f
    return frames


def wire_body(version: int, type_: int, seq: int, payload: bytes, crc_ok: bool = True) -> bytes:
    head = struct.pack("<BBH", version, type_, seq) + payload
    crc = crc32(head) ^ (0 if crc_ok else 0x00100000)
    return b"\x00" + cobs_encode(head + struct.pack("<I", crc)) + b"\x00"


def test_crc_check_value_pinned_in_c(harness: Path) -> None:
    out = subprocess.run([str(harness), "crc"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "cbf43926"


def test_static_build_has_no_blob_messages(tmp_path: Path) -> None:
    """Static parameters: INFO ends in params mode 0, types 0x03..0x09 are unknown, RESULTs bare."""
    exe = _build(tmp_path, "proto_harness_static", "FAKE_STATIC_PARAMS")
    x = bytes(range(FAKE_INPUT))
    script = [(0x01, b""), (0x02, x)] + [(t, p) for t in range(0x03, 0x0A)
                                          for p in (b"", b"\x01", b"\x00\x01\x00", bytes(32), bytes(8), bytes(5))]
    frames = serve(exe, b"".join(wire_body(1, t, i, p) for i, (t, p) in enumerate(script)))
    assert [f.seq for f in frames] == list(range(len(script)))
    info = frames[0].payload
    # params mode 0, then security mode 0: static firmware is always a development build
    assert info.endswith(b"fake\x00\x00\x00") and unpack_info(info).params_mode == ParamsMode.STATIC
    assert frames[1].type == 0x82 and len(frames[1].payload) == RESULT_FIXED
    for f, (t, _) in zip(frames[2:], script[2:], strict=True):
        err = unpack_error(f.payload)
        assert f.type == MsgType.ERROR and (err.code, err.offending_type) == (ErrorCode.UNKNOWN_TYPE, t)


# --- a model of what the device answers ------------------------------------------------------------


@dataclass
class Expect:
    """What one request must get: `n_results` RESULTs (INFER_FILE items), then one final frame."""

    seq: int
    type: int  # the reply type, or ERROR
    code: int = 0  # an ERROR with this code (for request type `offending`) is required
    offending: int = 0
    codes: tuple[int, ...] = ()  # COMMIT/ROLLBACK: the reply, or an ERROR with one of these codes
    check: Callable | None = None  # check(payload) of the reply; with `codes`: check(payload | None, code)
    n_results: int = 0


@dataclass
class Model:
    """Just enough device state to predict every reply of the valid-frame stream."""

    blobs: dict[str, bytes]
    telemetry_on: int = 0
    capture_which: int = 0
    capture_left: int = 0
    inferences: int = 0
    update_open: bool = False
    current: bytes = b""  # blob of the open update
    served: dict[int, int] = field(default_factory=dict)  # LABEL's ring: sample id -> top1, the last 256
    labeled: int = 0
    correct: int = 0
    stats: dict = field(default_factory=dict)

    def result_check(self, payload: bytes) -> None:
        """One successful inference: its RESULT and the state it changes."""
        self.inferences += 1
        expected = RESULT_FIXED + (TELEMETRY_SECTION if self.telemetry_on else 0)
        if self.capture_left:
            expected += 4 + (FAKE_INPUT if self.capture_which == 0 else FAKE_PENULTIMATE)
        assert len(payload) == expected
        r = unpack_result(payload, FAKE_OUTPUT, FAKE_LAYERS)
        assert r.ticks == 1000 and r.predicted == int(np.argmax(r.logits))
        assert (r.telemetry is not None) == bool(self.telemetry_on)
        if r.telemetry is not None:
            assert r.telemetry["count"] == self.inferences % 2**32 and r.telemetry["top1"] == r.predicted
        self.served[self.inferences] = r.predicted
        self.served.pop(self.inferences - LABEL_RING, None)
        assert (r.capture is not None) == bool(self.capture_left)
        if self.capture_left:
            assert r.capture[0] == self.capture_which
            self.capture_left -= 1


def _rand_bytes(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


@dataclass
class Gen:
    blobs: dict[str, bytes]
    current: bytes = b""  # the blob of the last good UPDATE_BEGIN: chunks mostly come from it
    infers: int = 0  # INFERs generated: about the device's count, for LABEL ids that hit the ring


def random_request(rng: np.random.Generator, g: Gen) -> tuple[int, bytes]:
    """A message type and payload: mostly plausible, often wrong in one way or another."""
    if rng.random() < 0.07:  # any type at all, any short payload
        return int(rng.integers(0, 256)), _rand_bytes(rng, int(rng.choice([0, 1, 3, 4, 5, 32, 33, 200])))
    t = int(rng.choice([0x01, 0x02, 0x02, 0x03, 0x04, 0x05, 0x05, 0x06, 0x06, 0x06, 0x06, 0x07, 0x08, 0x09, 0x0E,
                        0x0F]))
    if t == 0x01:
        return t, b"" if rng.random() < 0.9 else _rand_bytes(rng, 1)
    if t == 0x02:
        g.infers += 1
        n = FAKE_INPUT if rng.random() < 0.9 else int(rng.integers(0, 64))
        return t, ((b"FAIL" if rng.random() < 0.1 else b"") + _rand_bytes(rng, n))[:n]
    if t == 0x03:
        return t, bytes([int(rng.choice([0, 1, 1, 2, 255]))]) if rng.random() < 0.95 else b""
    if t == 0x04:
        p = struct.pack("<BH", int(rng.choice([0, 1, 2])), int(rng.choice([0, 1, 2, 5])))
        return t, p + b"\x00" if rng.random() < 0.05 else p
    if t == 0x05:
        pick = rng.random()
        if pick < 0.5:
            g.current = g.blobs[str(rng.choice(["blob_new", "blob_third", "blob_bad_bind"]))]
            return t, g.current[:32]
        if pick < 0.6:
            return t, g.blobs["blob_other_arch"][:32]
        return t, _rand_bytes(rng, 32 if pick < 0.9 else int(rng.choice([0, 31, 33])))
    if t == 0x06:
        blob = g.current or g.blobs["blob_new"]
        off = int(rng.choice([0, 31, 32, int(rng.integers(32, len(blob))), int(rng.integers(32, len(blob))),
                              len(blob) - 1, len(blob), 0xFFFFFFFF]))
        n = int(rng.choice([0, 1, int(rng.integers(1, 400)), int(rng.integers(1, 400)), MAX_PAYLOAD - 4]))
        data = blob[off : off + n] if rng.random() < 0.95 else b""
        if 0 < len(data) < n and rng.random() < 0.7:
            n = len(data)  # mostly chunks that fit
        return t, struct.pack("<I", off) + data[:n] + _rand_bytes(rng, n - len(data[:n]))
    if t == 0x07:
        blob = g.current or g.blobs["blob_new"]
        p = blob[16:20] if rng.random() < 0.8 else _rand_bytes(rng, 4)
        return t, p[:3] if rng.random() < 0.05 else p
    if t == 0x08:
        return t, b"" if rng.random() < 0.95 else b"\x01"
    if t == 0x09:  # mostly recent samples (some pushed out of the ring by now), any class, any id
        sample_id = (g.infers - int(rng.integers(0, 2 * LABEL_RING))) % 2**32 if rng.random() < 0.9 \
            else int(rng.integers(0, 2**32))
        p = struct.pack("<IB", sample_id, int(rng.choice([0, 1, 2, 3, 3, FAKE_OUTPUT, 255])))
        return t, p[:4] if rng.random() < 0.03 else p
    if t == 0x0E:
        path = [FAKE_FILE, FAKE_FILE, b"nofile", b"me\x00m", *UNOFFERED][int(rng.integers(0, 4 + len(UNOFFERED)))]
        p = struct.pack("<I", int(rng.integers(0, FILE_INPUTS + 2))) + path + b"\x00"
        return t, p[: int(rng.integers(0, len(p)))] if rng.random() < 0.1 else p
    return t, bytes([int(rng.integers(0, 256))]) if rng.random() < 0.95 else b""  # EXIT


FIXED_LENGTH = {0x01: 0, 0x02: FAKE_INPUT, 0x03: 1, 0x04: 3, 0x05: 32, 0x07: 4, 0x08: 0, 0x09: 5, 0x0F: 1}
KNOWN_TYPES = set(FIXED_LENGTH) | {0x06, 0x0E}


FAULTS = ("version", "crc", "short", "long")  # frame-level faults, each with its own ERROR


def wire_request(rng: np.random.Generator, t: int, p: bytes, seq: int, fault: str | None) -> bytes:
    """The frame on the wire, well formed or with one frame-level fault (always preceded by 0x00,
    so a fault never spills into the next frame)."""
    if fault == "version":
        return wire_body(int(rng.choice([0, 2, 0x81, 0xFF])), t, seq, p)
    if fault == "crc":
        return wire_body(1, t, seq, p, crc_ok=False)
    if fault == "short":  # a header, but less than a CRC after it
        body = struct.pack("<BBH", 1, t, seq) + _rand_bytes(rng, int(rng.integers(0, 4)))
        return b"\x00" + cobs_encode(body) + b"\x00"
    if fault == "long":  # payload over MAX_PAYLOAD
        return wire_body(1, t, seq, _rand_bytes(rng, int(rng.integers(MAX_PAYLOAD + 1, MAX_PAYLOAD + 600))))
    return wire_body(1, t, seq, p)


def predict(m: Model, t: int, p: bytes, seq: int, fault: str | None = None) -> Expect:
    """What the device must answer to request (t, p), given the state of `m` (which is updated)."""
    def err(code: int) -> Expect:
        m.stats[code] = m.stats.get(code, 0) + 1
        return Expect(seq, MsgType.ERROR, code=code, offending=t)

    if fault is not None:  # checked before the type, in this order: length limit, CRC, version
        return err({"long": ErrorCode.TOO_LONG, "short": ErrorCode.BAD_LENGTH, "crc": ErrorCode.BAD_CRC,
                    "version": ErrorCode.BAD_VERSION}[fault])
    if t not in KNOWN_TYPES:
        return err(ErrorCode.UNKNOWN_TYPE)
    if t in FIXED_LENGTH and len(p) != FIXED_LENGTH[t]:
        return err(ErrorCode.BAD_LENGTH)
    if t == 0x01:
        def check_info(payload: bytes) -> None:
            info = unpack_info(payload)
            assert info.params_mode == ParamsMode.BLOB and info.slot_capacity == TEST_CAPACITY
            assert info.active_slot in (0, 1) and info.model == "fake" and info.board == "host-board"
            assert info.active.state == SlotStatus.VALID
            other = info.slots[1 - info.active_slot]
            assert (other.state == SlotStatus.WRITING) == m.update_open
        return Expect(seq, 0x81, check=check_info)
    if t == 0x02:
        if p[:4] == b"FAIL":
            return err(ErrorCode.MODEL_FAILED)
        return Expect(seq, 0x82, check=m.result_check)
    if t == 0x03:
        if p[0] > 1:
            return err(ErrorCode.BAD_LENGTH)
        m.telemetry_on = p[0]
        count = m.inferences

        def check_telemetry(payload: bytes) -> None:
            mode, record = unpack_telemetry_reply(payload)
            assert mode == p[0] and record["count"] == count
        return Expect(seq, 0x83, check=check_telemetry)
    if t == 0x04:
        which, count = struct.unpack("<BH", p)
        if which > 1:
            return err(ErrorCode.BAD_LENGTH)
        m.capture_which, m.capture_left = which, count

        def check_capture(payload: bytes) -> None:
            r = unpack_capture_reply(payload)
            assert (r.which, r.count) == (which, count)
            assert r.bytes_per_capture == (FAKE_INPUT if which == 0 else FAKE_PENULTIMATE)
        return Expect(seq, 0x84, check=check_capture)
    if t == 0x05:
        if p == m.blobs["blob_other_arch"][:32]:
            return err(ErrorCode.ARCH_MISMATCH)
        good = {b[:32]: b for k, b in m.blobs.items() if k not in ("blob_other_arch", "blob_too_big")}
        if p not in good:
            return err(ErrorCode.BAD_BLOB)
        blob = good[p]
        m.update_open, m.current = True, blob

        def check_begin(payload: bytes) -> None:
            r = unpack_update_begin_reply(payload)
            assert 32 <= r.next_offset <= len(blob) and r.max_chunk == MAX_PAYLOAD - 4
        return Expect(seq, 0x85, check=check_begin)
    if t == 0x06:
        if len(p) < 5:
            return err(ErrorCode.BAD_LENGTH)
        if not m.update_open:
            return err(ErrorCode.NO_UPDATE)
        off, n, length = struct.unpack_from("<I", p)[0], len(p) - 4, len(m.current)
        if off < 32 or off + n > length:
            return err(ErrorCode.BAD_LENGTH)

        def check_chunk(payload: bytes) -> None:
            assert 32 <= unpack_update_chunk_reply(payload) <= length
        return Expect(seq, 0x86, check=check_chunk)
    if t == 0x07:
        if not m.update_open or p != m.current[16:20]:
            return err(ErrorCode.NO_UPDATE)
        blob = m.current

        def after_commit(payload: bytes | None, code: int) -> None:
            if code != ErrorCode.INCOMPLETE:
                m.update_open = False  # committed, or refused and marked INVALID
            if code == 0:
                switch = unpack_slot_switch(payload)
                assert switch.blob_id == struct.unpack_from("<I", blob, 16)[0] and switch.generation >= 2
                m.stats["commits"] = m.stats.get("commits", 0) + 1
            if code == ErrorCode.BAD_BLOB:
                assert blob == m.blobs["blob_bad_bind"]
        return Expect(seq, 0x87, codes=(ErrorCode.INCOMPLETE, ErrorCode.BAD_BLOB_CRC, ErrorCode.BAD_BLOB),
                      check=after_commit)
    if t == 0x08:
        if m.update_open:  # the other slot is being written
            return err(ErrorCode.NO_ROLLBACK)

        def after_rollback(payload: bytes | None, code: int) -> None:
            if code == 0:
                unpack_slot_switch(payload)
                m.stats["rollbacks"] = m.stats.get("rollbacks", 0) + 1
        return Expect(seq, 0x88, codes=(ErrorCode.NO_ROLLBACK,), check=after_rollback)
    if t == 0x09:
        sample_id, label = struct.unpack("<IB", p)
        if label >= FAKE_OUTPUT:
            return err(ErrorCode.BAD_LABEL)
        top1 = m.served.get(sample_id)
        if top1 is not None:
            m.labeled, m.correct = m.labeled + 1, m.correct + (label == top1)
        m.stats["label_counted" if top1 is not None else "label_unknown"] = \
            m.stats.get("label_counted" if top1 is not None else "label_unknown", 0) + 1
        expected = struct.pack("<IBBBII", sample_id, label, top1 is None, 0xFF if top1 is None else top1,
                               m.labeled, m.correct)

        def check_label(payload: bytes) -> None:
            assert payload == expected
            unpack_label_reply(payload)
        return Expect(seq, 0x89, check=check_label)
    if t == 0x0E:
        if len(p) < 6 or p[-1] != 0:
            return err(ErrorCode.BAD_LENGTH)
        count = struct.unpack_from("<I", p)[0]
        if p[4:].split(b"\x00")[0] != FAKE_FILE:
            return err(ErrorCode.IO)
        if count > FILE_INPUTS:
            m.stats[ErrorCode.IO] = m.stats.get(ErrorCode.IO, 0) + 1
            return Expect(seq, MsgType.ERROR, code=ErrorCode.IO, offending=t, n_results=FILE_INPUTS)

        def check_done(payload: bytes) -> None:
            assert payload == struct.pack("<I", count)
        return Expect(seq, 0x8E, check=check_done, n_results=count)

    def check_exit(payload: bytes) -> None:
        assert payload == b""
    return Expect(seq, 0x8F, check=check_exit)


def check_reply(frames: list[Frame], i: int, e: Expect, m: Model) -> int:
    """Check the frames request `e` gets, from frames[i]; returns the index after them."""
    for k in range(e.n_results):  # INFER_FILE items
        f = frames[i + k]
        assert f.seq == (e.seq + 1 + k) % 65536 and f.type == 0x82, f
        m.result_check(f.payload)
    f = frames[i + e.n_results]
    assert f.seq == e.seq, (f, e)
    if e.code:
        err = unpack_error(f.payload) if f.type == MsgType.ERROR else None
        assert err is not None and (err.code, err.offending_type) == (e.code, e.offending), (f, e)
    elif f.type == MsgType.ERROR:  # COMMIT / ROLLBACK may fail in the ways listed
        err = unpack_error(f.payload)
        assert err.code in e.codes and err.offending_type == e.type & 0x7F, (f, e)
        e.check(None, err.code)
    else:
        assert f.type == e.type, (f, e)
        if e.codes:
            e.check(f.payload, 0)
        else:
            e.check(f.payload)
    return i + e.n_results + 1


N_VALID = 150_000


def test_valid_frames_of_every_type_get_the_predicted_reply(harness: Path) -> None:
    rng = np.random.default_rng(11)
    g = Gen(fake_blobs())
    requests, wire = [], bytearray()
    for i in range(N_VALID):
        t, p = random_request(rng, g)
        fault = str(rng.choice(FAULTS)) if rng.random() < 0.04 else None
        seq = (8 * i) % 65536  # room for INFER_FILE's item seqs
        requests.append((t, p, seq, fault))
        wire += wire_request(rng, t, p, seq, fault)
        if rng.random() < 0.01:  # a body too short to hold a seq: dropped without a reply
            wire += b"\x00" + _rand_bytes(rng, int(rng.integers(1, 4))).replace(b"\x00", b"\x01") + b"\x00"
    frames = serve(harness, bytes(wire))
    m = Model(g.blobs)
    i = 0
    for t, p, seq, fault in requests:
        i = check_reply(frames, i, predict(m, t, p, seq, fault), m)
    assert i == len(frames)  # nothing but the predicted replies
    # The stream reached every error code the handlers give and every kind of success.
    assert {ErrorCode.BAD_CRC, ErrorCode.BAD_VERSION, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_LENGTH,
            ErrorCode.TOO_LONG, ErrorCode.MODEL_FAILED, ErrorCode.IO, ErrorCode.ARCH_MISMATCH, ErrorCode.BAD_BLOB,
            ErrorCode.NO_UPDATE, ErrorCode.NO_ROLLBACK, ErrorCode.BAD_LABEL} <= set(m.stats)
    assert m.stats.get("commits", 0) > 0 and m.stats.get("rollbacks", 0) > 0
    assert m.stats.get("label_counted", 0) > 0 and m.stats.get("label_unknown", 0) > 0 and m.correct > 0
    assert {0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8E, 0x8F, 0xFF} <= {f.type for f in frames}


def test_random_bytes(harness: Path) -> None:
    """Random bytes; random bodies in valid COBS; random bodies with a valid CRC (version 1 half
    the time), which reach the handlers with any type, seq and payload."""
    rng = np.random.default_rng(12)
    parts = []
    for k in range(30_000):
        if k % 3 == 0:
            chunk = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8)
            chunk[rng.random(chunk.size) < rng.choice([0.0, 0.002, 0.05])] = 0
            parts.append(chunk.tobytes())
            continue
        body = _rand_bytes(rng, int(rng.choice([0, 1, 3, 4, 7, 8, 9, 40, int(rng.integers(0, 2100)), 2056, 2057])))
        if k % 3 == 2:
            if body and rng.random() < 0.5:
                body = b"\x01" + body[1:]
            body += struct.pack("<I", crc32(body))
        parts.append(b"\x00" + cobs_encode(body) + b"\x00")
    wire = b"".join(parts)
    assert len(wire) > 5_000_000
    replies = serve(harness, wire)  # no sanitizer report; the device only wrote well-formed frames
    assert len(replies) > 15_000
    codes = {unpack_error(f.payload).code for f in replies if f.type == MsgType.ERROR}
    assert {ErrorCode.BAD_CRC, ErrorCode.BAD_VERSION, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_LENGTH,
            ErrorCode.TOO_LONG} <= codes


def _mutate(rng: np.random.Generator, frames: list[bytes]) -> bytes:
    out = bytearray()
    i = 0
    while i < len(frames):
        f = bytearray(frames[i])
        kind = int(rng.integers(0, 8))
        if kind == 0:  # bit flips (may create or remove a 0x00)
            for _ in range(int(rng.integers(1, 4))):
                f[int(rng.integers(0, len(f)))] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # truncated: the rest runs into the next frame
            f = f[: int(rng.integers(0, len(f)))]
        elif kind == 2:  # duplicated
            f = f + f
        elif kind == 3 and i + 1 < len(frames):  # swapped with the next one
            f = bytearray(frames[i + 1]) + f
            i += 1
        elif kind == 4:  # the leading delimiter lost: joined to the previous frame
            f = f[1:]
        elif kind == 5:  # garbage in front
            f = bytearray(_rand_bytes(rng, int(rng.integers(1, 40)))) + f
        out += f
        i += 1
    return bytes(out)


def test_mutated_frames(harness: Path) -> None:
    rng = np.random.default_rng(13)
    g = Gen(fake_blobs())
    frames = []
    for i in range(200_000):
        t, p = random_request(rng, g)
        frames.append(wire_body(1, t, i % 65536, p))
    replies = serve(harness, _mutate(rng, frames))
    assert len(replies) > 100_000  # most frames still got through, one way or another


def fake_logits(arrays: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """tests/c/fake_model.c mcup_run in numpy."""
    penultimate = (x[:FAKE_PENULTIMATE].view(np.uint8) ^ x[FAKE_PENULTIMATE : 2 * FAKE_PENULTIMATE].view(np.uint8))
    penultimate = penultimate.view(np.int8).astype(np.int64)
    w = arrays[0].astype(np.int64).reshape(FAKE_OUTPUT, FAKE_PENULTIMATE)
    acc = (arrays[1].astype(np.int64) + w @ penultimate) >> 6
    return np.clip(acc, -128, 127).astype(np.int8)


def test_scripted_session(harness: Path) -> None:
    blobs = fake_blobs()
    factory, new, bad = blobs["blob_factory"], blobs["blob_new"], blobs["blob_bad_bind"]
    factory_arrays, new_arrays = fake_arrays(1, 924), fake_arrays(2, 1324)
    id_of = {name: struct.unpack_from("<I", b, 16)[0] for name, b in blobs.items()}
    x = np.random.default_rng(3).integers(-128, 128, FAKE_INPUT).astype(np.int8)
    bad_crc_header = bytearray(new[:32])
    bad_crc_header[30] ^= 1
    half = 32 + (len(new) - 32) // 2
    corrupted = bytearray(new[32:])
    corrupted[100] ^= 0x20

    def chunk(offset: int, data: bytes) -> bytes:
        return struct.pack("<I", offset) + data

    # LABEL's sample ids are the RESULTs' counts: 1 is step 1's (factory), 9 step 36's (new parameters).
    top1_factory = int(np.argmax(fake_logits(factory_arrays, x)))
    top1_new = int(np.argmax(fake_logits(new_arrays, x)))
    wrong = (top1_factory + 1) % FAKE_OUTPUT

    script: list[tuple[int, bytes]] = [
        (0x01, b""),                                   # 0 INFO
        (0x02, x.tobytes()),                           # 1 INFER
        (0x03, b"\x01"),                               # 2 TELEMETRY on
        (0x04, struct.pack("<BH", 0, 1)),              # 3 CAPTURE input once
        (0x02, x.tobytes()),                           # 4
        (0x04, struct.pack("<BH", 1, 1)),              # 5 CAPTURE penultimate once
        (0x02, x.tobytes()),                           # 6
        (0x02, x.tobytes()),                           # 7
        (0x05, blobs["blob_other_arch"][:32]),         # 8 ARCH_MISMATCH
        (0x05, bytes(bad_crc_header)),                 # 9 BAD_BLOB
        (0x06, chunk(32, new[32:64])),                 # 10 NO_UPDATE
        (0x07, new[16:20]),                            # 11 NO_UPDATE
        (0x05, new[:32]),                              # 12 begin: slot 1, from 32
        (0x06, chunk(0, new[:32])),                    # 13 BAD_LENGTH: the header is not a chunk
        (0x06, chunk(32, new[32:half])),               # 14
        (0x07, new[16:20]),                            # 15 INCOMPLETE
        (0x07, b"\x00\x00\x00\x00"),                   # 16 NO_UPDATE: another blob id
        (0x08, b""),                                   # 17 NO_ROLLBACK: B is being written
        (0x01, b""),                                   # 18 INFO: B WRITING
        (0x05, new[:32]),                              # 19 resumes at `half`
        (0x06, chunk(half, new[half:])),               # 20
        (0x07, new[16:20]),                            # 21 commit: slot 1, generation 2
        (0x02, x.tobytes()),                           # 22 the new parameters
        (0x01, b""),                                   # 23
        (0x08, b""),                                   # 24 rollback to A, generation 3
        (0x02, x.tobytes()),                           # 25 factory parameters again
        (0x08, b""),                                   # 26 and forward to B, generation 4
        (0x05, bad[:32]),                              # 27 a blob mcup_bind refuses goes to A
        (0x06, chunk(32, bad[32:])),                   # 28
        (0x07, bad[16:20]),                            # 29 BAD_BLOB
        (0x08, b""),                                   # 30 NO_ROLLBACK: A is INVALID
        (0x05, new[:32]),                              # 31 starts over in A
        (0x06, chunk(32, bytes(corrupted))),           # 32
        (0x07, new[16:20]),                            # 33 BAD_BLOB_CRC
        (0x0E, struct.pack("<I", 2) + FAKE_FILE + b"\x00"),  # 34 two RESULTs, then the count
        (0x03, b"\x00"),                               # 35 TELEMETRY off
        (0x02, x.tobytes()),                           # 36 no sections
        (0x01, b""),                                   # 37
        (0x09, struct.pack("<IB", 9, top1_new)),       # 38 LABEL: counted, correct
        (0x09, struct.pack("<IB", 1, wrong)),          # 39 counted, wrong
        (0x09, struct.pack("<IB", 9, top1_new)),       # 40 the same sample again: counted again
        (0x09, struct.pack("<IB", 1009, 0)),           # 41 never served: unknown
        (0x09, struct.pack("<IB", 0, 0)),              # 42 id 0 (zeroed ring slot): unknown
        (0x09, struct.pack("<IB", 9, FAKE_OUTPUT)),    # 43 BAD_LABEL
        (0x09, struct.pack("<I", 9)),                  # 44 BAD_LENGTH
        (0x0F, b"\x05"),                               # 45 EXIT
    ]
    wire = b"".join(wire_body(1, t, 8 * i, p) for i, (t, p) in enumerate(script))
    frames = serve(harness, wire)
    by_seq = {f.seq: f for f in frames}
    assert len(by_seq) == len(frames) == len(script) + 2  # + the two INFER_FILE items

    def reply(i: int) -> bytes:
        f = by_seq[8 * i]
        assert f.type == script[i][0] | 0x80, (i, f)
        return f.payload

    def error(i: int) -> int:
        f = by_seq[8 * i]
        assert f.type == MsgType.ERROR, (i, f)
        e = unpack_error(f.payload)
        assert e.offending_type == script[i][0]
        return e.code

    def result(payload: bytes, arrays: list[np.ndarray]):
        r = unpack_result(payload, FAKE_OUTPUT, FAKE_LAYERS)
        np.testing.assert_array_equal(r.logits, fake_logits(arrays, x))
        assert r.predicted == int(np.argmax(r.logits)) and list(r.layer_ticks) == [11, 22]
        return r

    info = unpack_info(reply(0))
    assert info.params_mode == ParamsMode.BLOB and info.active_slot == 0 and info.slot_capacity == TEST_CAPACITY
    a, b = info.slots
    assert (a.state, a.generation, a.length, a.blob_id) == (SlotStatus.VALID, 1, len(factory), id_of["blob_factory"])
    assert b.state == SlotStatus.EMPTY and (b.generation, b.length, b.blob_id, b.watermark) == (0, 0, 0, 0)
    assert (info.arch_hash, info.input_size, info.output_size, info.num_layers) == (0xFA4E0001, 32, 4, 2)

    r = result(reply(1), factory_arrays)
    assert r.telemetry is None and r.capture is None and len(reply(1)) == RESULT_FIXED
    mode, record = unpack_telemetry_reply(reply(2))
    assert mode == 1 and record["count"] == 1 and record["top1"] == r.predicted
    assert unpack_capture_reply(reply(3)) == type(unpack_capture_reply(reply(3)))(0, 1, FAKE_INPUT)
    r = result(reply(4), factory_arrays)
    assert r.telemetry["count"] == 2 and sum(r.telemetry["histogram"]) == FAKE_PENULTIMATE
    assert r.capture[0] == 0 and np.array_equal(r.capture[1], x)
    assert unpack_capture_reply(reply(5)).bytes_per_capture == FAKE_PENULTIMATE
    r = result(reply(6), factory_arrays)
    penultimate = (x[:8].view(np.uint8) ^ x[8:16].view(np.uint8)).view(np.int8)
    assert r.capture[0] == 1 and np.array_equal(r.capture[1], penultimate) and r.telemetry["count"] == 3
    r = result(reply(7), factory_arrays)
    assert r.capture is None and r.telemetry["count"] == 4

    assert error(8) == ErrorCode.ARCH_MISMATCH and error(9) == ErrorCode.BAD_BLOB
    assert error(10) == ErrorCode.NO_UPDATE and error(11) == ErrorCode.NO_UPDATE
    begin = unpack_update_begin_reply(reply(12))
    assert (begin.slot, begin.next_offset, begin.max_chunk) == (1, 32, MAX_PAYLOAD - 4)
    assert error(13) == ErrorCode.BAD_LENGTH
    assert unpack_update_chunk_reply(reply(14)) == half
    assert error(15) == ErrorCode.INCOMPLETE and error(16) == ErrorCode.NO_UPDATE
    assert error(17) == ErrorCode.NO_ROLLBACK
    info = unpack_info(reply(18))
    assert info.active_slot == 0 and info.slots[1].state == SlotStatus.WRITING
    assert (info.slots[1].length, info.slots[1].blob_id, info.slots[1].watermark) == (len(new), id_of["blob_new"], half)
    assert unpack_update_begin_reply(reply(19)).next_offset == half
    assert unpack_update_chunk_reply(reply(20)) == len(new)
    switch = unpack_slot_switch(reply(21))
    assert (switch.slot, switch.generation, switch.blob_id) == (1, 2, id_of["blob_new"])
    assert result(reply(22), new_arrays).telemetry["count"] == 5
    info = unpack_info(reply(23))
    assert info.active_slot == 1 and [s.generation for s in info.slots] == [1, 2]
    assert [s.state for s in info.slots] == [SlotStatus.VALID, SlotStatus.VALID]
    switch = unpack_slot_switch(reply(24))
    assert (switch.slot, switch.generation, switch.blob_id) == (0, 3, id_of["blob_factory"])
    result(reply(25), factory_arrays)
    switch = unpack_slot_switch(reply(26))
    assert (switch.slot, switch.generation, switch.blob_id) == (1, 4, id_of["blob_new"])
    assert unpack_update_begin_reply(reply(27)).slot == 0
    assert unpack_update_chunk_reply(reply(28)) == len(bad)
    assert error(29) == ErrorCode.BAD_BLOB and error(30) == ErrorCode.NO_ROLLBACK
    assert unpack_update_begin_reply(reply(31)).next_offset == 32
    unpack_update_chunk_reply(reply(32))
    assert error(33) == ErrorCode.BAD_BLOB_CRC

    for k in range(2):  # INFER_FILE items: seq + 1 + k, inputs from the fake file, new parameters
        item = by_seq[8 * 34 + 1 + k]
        assert item.type == 0x82
        file_input = ((np.arange(FAKE_INPUT) + 7 * k) % 256).astype(np.uint8).view(np.int8)
        r = unpack_result(item.payload, FAKE_OUTPUT, FAKE_LAYERS)
        np.testing.assert_array_equal(r.logits, fake_logits(new_arrays, file_input))
    assert reply(34) == struct.pack("<I", 2)
    mode, record = unpack_telemetry_reply(reply(35))
    assert mode == 0 and record["count"] == 8
    r = result(reply(36), new_arrays)
    assert r.telemetry is None and len(reply(36)) == RESULT_FIXED
    info = unpack_info(reply(37))
    assert info.active_slot == 1 and info.slots[0].state == SlotStatus.INVALID
    assert unpack_label_reply(reply(38)) == LabelReply(9, top1_new, True, top1_new, 1, 1)
    assert unpack_label_reply(reply(39)) == LabelReply(1, wrong, True, top1_factory, 2, 1)
    assert unpack_label_reply(reply(40)) == LabelReply(9, top1_new, True, top1_new, 3, 2)
    assert unpack_label_reply(reply(41)) == LabelReply(1009, 0, False, None, 3, 2)
    assert unpack_label_reply(reply(42)) == LabelReply(0, 0, False, None, 3, 2)
    assert error(43) == ErrorCode.BAD_LABEL and error(44) == ErrorCode.BAD_LENGTH
    assert reply(45) == b""


def test_request_after_garbage_ending_mid_frame_is_answered(harness: Path) -> None:
    """Issue 12: noise (or a host that reconnected) leaves the device inside a half-received frame.
    The host's leading delimiter ends that frame, so the request after it is answered, not swallowed:
    here the noise is the first half of a valid frame, the worst case (its COBS state is consistent)."""
    from mcuprune.device.link import Device

    class Capture:  # what Device writes, as a port would see it
        timeout = 0.0
        written = b""

        def write(self, data: bytes) -> int:
            self.written += data
            return len(data)

    port = Capture()
    Device(port).send(MsgType.INFO, b"", seq=0x1234)  # type: ignore[arg-type]
    assert port.written.startswith(b"\x00") and port.written.endswith(b"\x00")
    half_frame = cobs_encode(wire_body(1, 0x02, 7, bytes(range(1, FAKE_INPUT + 1))))[:20]
    frames = serve(harness, half_frame + port.written)
    assert [(f.type, f.seq) for f in frames] == [(0x81, 0x1234)]
    # Without the leading delimiter the same request disappears into the half frame.
    frames = serve(harness, half_frame + port.written[1:])
    assert 0x1234 not in [f.seq for f in frames if f.type == 0x81]
