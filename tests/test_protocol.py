"""The host side of the frame protocol: CRC, COBS, frames, the stream reader, message payloads.
The C side is checked against these through QEMU in test_emulate.py."""

from __future__ import annotations

import re
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from host_c import host_build
from hypothesis import given, settings
from hypothesis import strategies as st

from mcuprune.device.frames import (
    MAX_BODY,
    MAX_ENCODED,
    MAX_PAYLOAD,
    Frame,
    FrameError,
    FrameReader,
    cobs_decode,
    cobs_encode,
    cobs_max_encoded,
    crc32,
    decode_body,
    decode_frame,
    encode_frame,
    printable,
)
from mcuprune.device.messages import (
    MAX_CHUNK_DATA,
    TELEMETRY_BYTES,
    CaptureReply,
    CaptureWhich,
    DeviceInfo,
    ErrorCode,
    ErrorReply,
    InferResult,
    LabelReply,
    MsgType,
    ParamsMode,
    SlotState,
    SlotStatus,
    SlotSwitch,
    UpdateBeginReply,
    pack_capture_reply,
    pack_capture_request,
    pack_error,
    pack_info,
    pack_label,
    pack_label_reply,
    pack_result,
    pack_slot_switch,
    pack_telemetry_record,
    pack_telemetry_reply,
    pack_telemetry_request,
    pack_update_begin,
    pack_update_begin_reply,
    pack_update_chunk,
    pack_update_chunk_reply,
    pack_update_commit,
    unpack_capture_reply,
    unpack_capture_request,
    unpack_error,
    unpack_info,
    unpack_label,
    unpack_label_reply,
    unpack_result,
    unpack_rollback,
    unpack_slot_switch,
    unpack_telemetry_record,
    unpack_telemetry_reply,
    unpack_telemetry_request,
    unpack_update_begin,
    unpack_update_begin_reply,
    unpack_update_chunk,
    unpack_update_chunk_reply,
    unpack_update_commit,
)
from mcuprune.model.telemetry import Telemetry
from mcuprune.resources import RUNTIME_DIR


def test_crc32_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926


def test_crc32_chains_like_one_call() -> None:
    assert crc32(b"6789", crc32(b"12345")) == crc32(b"123456789")


# Vectors from the COBS paper / common references, including the 254-byte block boundaries.
COBS_VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "encoded"), COBS_VECTORS)
def test_cobs_known_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


@given(st.binary(max_size=3000))
def test_cobs_round_trip(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert b"\x00" not in encoded
    assert len(encoded) <= cobs_max_encoded(len(data))
    assert cobs_decode(encoded) == data


@given(st.binary(max_size=600))
def test_cobs_decode_raises_only_frame_error(data: bytes) -> None:
    try:
        cobs_decode(data)
    except FrameError:
        pass


@pytest.mark.parametrize("bad", [b"\x00", b"\x05\x11\x22", b"\x03\x11\x00"])
def test_cobs_decode_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(FrameError):
        cobs_decode(bad)


def test_frame_round_trip_and_layout() -> None:
    frame = Frame(MsgType.INFER, 0x1234, b"\x01\x00\x02")
    body = frame.body()
    assert body[:4] == b"\x01\x02\x34\x12"  # version, type, seq little-endian
    assert body[4:7] == b"\x01\x00\x02"
    assert int.from_bytes(body[7:], "little") == crc32(body[:7])
    wire = encode_frame(frame)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert decode_frame(wire[:-1]) == frame


def test_frame_rejects_oversized_payload() -> None:
    with pytest.raises(ValueError, match="MAX_PAYLOAD"):
        Frame(MsgType.INFER, 1, bytes(MAX_PAYLOAD + 1)).body()
    assert len(Frame(MsgType.INFER, 1, bytes(MAX_PAYLOAD)).body()) == MAX_BODY


def _body(version: int = 1, type_: int = 1, seq: int = 7, payload: bytes = b"") -> bytes:
    head = bytes([version, type_]) + seq.to_bytes(2, "little") + payload
    return head + crc32(head).to_bytes(4, "little")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x01\x01\x07", "shorter"),
        (_body()[:-1] + bytes([_body()[-1] ^ 1]), "CRC"),
        (_body(version=2), "version"),
        (_body(payload=bytes(MAX_PAYLOAD + 1)), "longer"),
    ],
)
def test_decode_body_rejects_malformed(body: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_body(body)


def test_reader_resyncs_after_garbage_and_keeps_it_as_noise() -> None:
    reader = FrameReader()
    a, b = Frame(0x81, 1, b"first"), Frame(0x82, 2, b"second")
    stream = b"mcuprune fw 0.1 boot\r\n\x00" + encode_frame(a) + b"\xde\xad\xbe\xef\x00" + encode_frame(b)
    assert reader.feed(stream) == [a, b]
    assert b"mcuprune fw 0.1 boot" in reader.noise and b"\xde\xad\xbe\xef" in reader.noise
    assert reader.dropped == 2
    assert reader.last_output().startswith("mcuprune fw 0.1 boot")


def test_reader_handles_every_split_of_the_stream() -> None:
    frames = [Frame(0x81, i, bytes(range(i * 7 % 300))) for i in range(5)]
    stream = b"".join(encode_frame(f) for f in frames)
    for cut in (1, 2, 3, 7, 64, 255):
        reader = FrameReader()
        got = []
        for i in range(0, len(stream), cut):
            got += reader.feed(stream[i : i + cut])
        assert got == frames, cut
        assert reader.pending == b""


def test_reader_drops_bad_crc_and_wrong_version() -> None:
    reader = FrameReader()
    good = Frame(0x81, 9, b"ok")
    corrupt = bytearray(encode_frame(Frame(0x81, 8, b"bad")))
    corrupt[3] ^= 0x40
    other_version = cobs_encode(_body(version=3)) + b"\x00"
    assert reader.feed(bytes(corrupt) + other_version + encode_frame(good)) == [good]
    assert reader.dropped == 2


def test_reader_discards_overlong_chunk_until_next_delimiter() -> None:
    reader = FrameReader(noise_limit=100)
    good = Frame(0x81, 3, b"after")
    assert reader.feed(b"\x01" * (MAX_ENCODED + 500)) == []
    assert len(reader.pending) <= MAX_ENCODED  # bounded while no delimiter arrives
    assert reader.feed(b"\x00" + encode_frame(good)) == [good]
    assert len(reader.noise) <= 100  # the ring stays bounded


def test_printable_is_one_bounded_line() -> None:
    text = printable(b"line one\r\nline\x07two\n" + b"x" * 500, limit=60)
    assert "\n" not in text and len(text) == 60 and text.startswith("...")
    assert printable(b"a\r\nb\x07") == "a | b\\x07"


@settings(max_examples=300)
@given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"\x00", b"\x01\x01\x00"])), max_size=30))
def test_reader_fuzz_never_raises(chunks: list[bytes]) -> None:
    reader = FrameReader(noise_limit=256)
    for chunk in chunks:
        for frame in reader.feed(chunk):
            assert frame.version == 1 and 0 <= frame.seq <= 0xFFFF
    assert len(reader.noise) <= 256


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_parsers_fuzz_raise_only_frame_error(data: bytes) -> None:
    for parse in (decode_frame, decode_body, unpack_info, unpack_error, unpack_label, unpack_label_reply,
                  lambda d: unpack_result(d, 10, 2)):
        try:
            parse(data)
        except FrameError:
            pass


def test_info_round_trip() -> None:
    info = DeviceInfo(1, (0, 1), 0x1234ABCD, 25_000_000, 784, 10, 7, "mps2-an386", "fashion-mnist-cnn")
    payload = pack_info(info)
    # name, params mode 0, security mode 0 (development)
    assert payload[-len(b"fashion-mnist-cnn\x00\x00\x00") :] == b"fashion-mnist-cnn\x00\x00\x00"
    assert unpack_info(payload) == info


def test_info_rejects_missing_terminator() -> None:
    info = DeviceInfo(1, (0, 1), 1, 2, 3, 4, 5, "board", "model")
    with pytest.raises(FrameError, match="NUL"):
        unpack_info(pack_info(info)[:-3])  # the model name's NUL, the params and security mode bytes gone


def test_result_round_trip() -> None:
    result = InferResult(np.array([-128, 127, 0], np.int8), 1, 123456, np.array([5, 6], np.uint32))
    payload = pack_result(result)
    assert len(payload) == 4 + 1 + 3 + 2 * 4
    back = unpack_result(payload, output_size=3, num_layers=2)
    assert back.ticks == 123456 and back.predicted == 1
    np.testing.assert_array_equal(back.logits, result.logits)
    np.testing.assert_array_equal(back.layer_ticks, result.layer_ticks)
    with pytest.raises(FrameError, match="expected"):
        unpack_result(payload, output_size=4, num_layers=2)


def test_error_round_trip_and_description() -> None:
    err = ErrorReply(ErrorCode.BAD_CRC, MsgType.INFER)
    assert unpack_error(pack_error(err)) == err
    assert err.describe() == "BAD_CRC for INFER"
    assert ErrorReply(99, 0x42).describe() == "error 99 for 0x42"


# --- the updatable-firmware messages (docs/protocol.md, second part) ----------------------------

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_message_types_and_error_codes_match_the_doc() -> None:
    types = {name: int(code, 16) for code, name in re.findall(r"^\| `(0x[0-9A-F]{2})` \| (\w+) \|", DOC, re.M)}
    assert {name: int(MsgType[name]) for name in types} == types
    assert {"TELEMETRY", "CAPTURE", "UPDATE_BEGIN", "UPDATE_CHUNK", "UPDATE_COMMIT", "ROLLBACK", "LABEL"} <= set(types)
    codes = {name: int(code) for code, name in re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", DOC, re.M)}
    assert {name: int(ErrorCode[name]) for name in codes} == codes
    assert len(codes) == 21


SLOTS = (SlotState(SlotStatus.VALID, 3, 5000, 0xDEADBEEF, 5000), SlotState(SlotStatus.WRITING, 2, 6000, 0x1234, 2080))
BLOB_INFO = DeviceInfo(1, (0, 2), 0xA1B2C3D4, 25_000_000, 64, 10, 5, "mps2-an386", "digits-cnn",
                       params_mode=ParamsMode.BLOB, active_slot=0, slots=SLOTS, slot_capacity=8_384_512)


def test_info_without_params_mode_is_static_firmware() -> None:
    old = DeviceInfo(1, (0, 1), 7, 8, 9, 10, 11, "b", "m")
    legacy = pack_info(old)[:-2]  # firmware before params modes: nothing after the names
    assert legacy.endswith(b"m\x00")
    for payload in (legacy, legacy + b"\x00", legacy + b"\x00\x00"):  # then with the mode, the security mode
        info = unpack_info(payload)
        assert info == old and info.params_mode == ParamsMode.STATIC and not info.updatable
        assert info.active_slot is None and info.slots == () and info.active_blob_id is None


def test_info_blob_mode_wire_layout() -> None:
    payload = pack_info(BLOB_INFO)
    head = struct.pack("<BBBIIHHB", 1, 0, 2, 0xA1B2C3D4, 25_000_000, 64, 10, 5) + b"mps2-an386\x00digits-cnn\x00"
    slot_a = struct.pack("<BIIII", 2, 3, 5000, 0xDEADBEEF, 5000)
    slot_b = struct.pack("<BIIII", 1, 2, 6000, 0x1234, 2080)
    assert payload == head + b"\x01\x00" + slot_a + slot_b + struct.pack("<I", 8_384_512) + b"\x00"
    assert unpack_info(payload[:-1]) == BLOB_INFO  # blob firmware from before the security section
    info = unpack_info(payload)
    assert info == BLOB_INFO and info.updatable
    assert info.active == SLOTS[0] and info.active_blob_id == 0xDEADBEEF
    assert isinstance(info.slots[1].state, SlotStatus) and info.slots[1].state is SlotStatus.WRITING


def test_info_security_section_of_a_signed_build() -> None:
    signed = replace(BLOB_INFO, signed=True, key_id=bytes(range(8)), security_counter=7, nonce=b"\x02\0\0\0\x09\0\0\0")
    payload = pack_info(signed)
    assert payload == pack_info(BLOB_INFO)[:-1] + b"\x01" + bytes(range(8)) + struct.pack("<I", 7) + signed.nonce
    assert unpack_info(payload) == signed
    for bad in (payload[:-1], payload + b"\x00", pack_info(BLOB_INFO)[:-1] + b"\x02"):
        with pytest.raises(FrameError, match="security section"):
            unpack_info(bad)


def test_info_no_active_slot_and_names_with_zero_bytes_after() -> None:
    """0xff is 'no active slot'; binary slot fields full of zero bytes do not confuse the name parsing."""
    empty = SlotState(SlotStatus.EMPTY, 0, 0, 0, 0)
    info = DeviceInfo(1, (0, 2), 0, 0, 1, 1, 0, "", "", ParamsMode.BLOB, None, (empty, empty), 0)
    assert unpack_info(pack_info(info)) == info
    assert pack_info(info)[_fixed_len() + 3] == 0xFF


def _fixed_len() -> int:
    return struct.calcsize("<BBBIIHHB")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p + b"\x00", "security section"),  # one byte too many
        (lambda p: p[:-2], "slot section"),  # capacity cut short (p[:-1] is firmware before the security section)
        (lambda p: p[: p.index(b"digits-cnn\x00") + 11] + b"\x02", "params mode 2"),
        (lambda p: p[: p.index(b"digits-cnn\x00") + 11] + b"\x00\x00\x00", "after params mode 0"),
        (lambda p: p[: p.index(b"digits-cnn\x00") + 11] + b"\x00\x01", "security section"),
        (lambda p: p.replace(b"digits-cnn\x00\x01\x00", b"digits-cnn\x00\x01\x02"), "active slot 2"),
        (lambda p: p.replace(b"digits-cnn\x00\x01\x00\x02", b"digits-cnn\x00\x01\x00\x09"), "unknown state 9"),
        (lambda p: p.replace(b"mps2", b"\xffps2"), "UTF-8"),
    ],
)
def test_info_rejects_malformed_tails(mutate, message: str) -> None:  # noqa: ANN001
    with pytest.raises(FrameError, match=message):
        unpack_info(mutate(pack_info(BLOB_INFO)))


def test_pack_info_blob_mode_needs_two_slots() -> None:
    with pytest.raises(ValueError, match="2 slots"):
        pack_info(DeviceInfo(1, (0, 2), 0, 0, 1, 1, 0, "b", "m", ParamsMode.BLOB, 0, SLOTS[:1], 0))


def _telemetry_batch() -> Telemetry:
    hist = np.arange(32, dtype=np.int64).reshape(2, 16)
    return Telemetry(count=np.array([7, 2**32 - 1]), top1=np.array([3, 9]), confidence_q15=np.array([32768, 123]),
                     recon_error=np.array([0, 2**32 - 1]), histogram=hist)


def test_telemetry_record_wire_layout_and_telemetry_py_keys() -> None:
    record = _telemetry_batch().record(1)
    raw = pack_telemetry_record(record)
    assert len(raw) == TELEMETRY_BYTES == 43
    assert raw == (struct.pack("<IBHI", 2**32 - 1, 9, 123, 2**32 - 1) + struct.pack("<16H", *range(16, 32)))
    assert unpack_telemetry_record(raw) == record  # same keys and values as Telemetry.record()
    with pytest.raises(FrameError, match="43"):
        unpack_telemetry_record(raw[:-1])
    with pytest.raises(ValueError, match="15 bins, expected 16"):
        pack_telemetry_record({**record, "histogram": [0] * 15})


def test_telemetry_request_and_reply() -> None:
    assert pack_telemetry_request(1) == b"\x01" and unpack_telemetry_request(b"\x00") == 0
    record = _telemetry_batch().record(0)
    assert unpack_telemetry_reply(pack_telemetry_reply(1, record)) == (1, record)
    with pytest.raises(ValueError):
        pack_telemetry_request(2)
    for bad in (b"", b"\x02", b"\x01\x01"):
        with pytest.raises(FrameError):
            unpack_telemetry_request(bad)
    with pytest.raises(FrameError, match="mode 5"):
        unpack_telemetry_reply(b"\x05" + pack_telemetry_record(record))


def test_capture_messages() -> None:
    assert pack_capture_request(CaptureWhich.PENULTIMATE, 1000) == b"\x01\xe8\x03"
    assert unpack_capture_request(b"\x00\xff\xff") == (0, 65535)
    reply = CaptureReply(CaptureWhich.INPUT, 50, 784)
    assert pack_capture_reply(reply) == b"\x00\x32\x00\x10\x03"
    assert unpack_capture_reply(pack_capture_reply(reply)) == reply
    with pytest.raises(ValueError):
        pack_capture_request(2, 1)
    with pytest.raises(FrameError, match="capture target 3"):
        unpack_capture_request(b"\x03\x01\x00")
    with pytest.raises(FrameError, match="expected 5"):
        unpack_capture_reply(b"\x00\x01\x00\x10")


def test_label_messages_wire_layout() -> None:
    assert pack_label(0x01020304, 7) == b"\x04\x03\x02\x01\x07"
    assert unpack_label(pack_label(2**32 - 1, 255)) == (2**32 - 1, 255)
    counted = LabelReply(sample_id=300, label=3, counted=True, served_top1=5, labeled=9, correct=4)
    assert pack_label_reply(counted) == struct.pack("<IBBBII", 300, 3, 0, 5, 9, 4)
    assert len(pack_label_reply(counted)) == 15
    assert unpack_label_reply(pack_label_reply(counted)) == counted
    unknown = LabelReply(sample_id=1, label=0, counted=False, served_top1=None, labeled=9, correct=4)
    assert pack_label_reply(unknown) == struct.pack("<IBBBII", 1, 0, 1, 0xFF, 9, 4)
    assert unpack_label_reply(pack_label_reply(unknown)) == unknown
    for sample_id, label in ((-1, 0), (2**32, 0), (0, 256), (0, -1)):
        with pytest.raises(ValueError):
            pack_label(sample_id, label)
    for reply in (replace(counted, served_top1=None), replace(unknown, served_top1=2)):
        with pytest.raises(ValueError, match="served top1"):
            pack_label_reply(reply)


@pytest.mark.parametrize(
    ("parse", "payload", "message"),
    [
        (unpack_label, b"\x01\x00\x00\x00", "expected 5"),
        (unpack_label, bytes(6), "expected 5"),
        (unpack_label_reply, bytes(14), "expected 15"),
        (unpack_label_reply, bytes(16), "expected 15"),
        (unpack_label_reply, struct.pack("<IBBBII", 1, 0, 2, 0xFF, 0, 0), "status 2"),
        (unpack_label_reply, struct.pack("<IBBBII", 1, 0, 1, 3, 0, 0), "top1 3"),
    ],
)
def test_label_messages_reject_malformed(parse, payload: bytes, message: str) -> None:  # noqa: ANN001
    with pytest.raises(FrameError, match=message):
        parse(payload)


def test_update_messages_wire_layout() -> None:
    header = bytes(range(32))
    assert pack_update_begin(header) == header and unpack_update_begin(header) == header
    begin = UpdateBeginReply(slot=1, next_offset=4128, max_chunk=2044)
    assert pack_update_begin_reply(begin) == b"\x01" + struct.pack("<IH", 4128, 2044)
    assert unpack_update_begin_reply(pack_update_begin_reply(begin)) == begin
    chunk = pack_update_chunk(0x12345678, b"abc")
    assert chunk == b"\x78\x56\x34\x12abc" and unpack_update_chunk(chunk) == (0x12345678, b"abc")
    assert unpack_update_chunk_reply(pack_update_chunk_reply(96)) == 96
    assert pack_update_commit(0xCAFEF00D) == b"\x0d\xf0\xfe\xca"
    assert unpack_update_commit(b"\x0d\xf0\xfe\xca") == 0xCAFEF00D
    switch = SlotSwitch(slot=0, generation=9, blob_id=0xCAFEF00D)
    assert pack_slot_switch(switch) == b"\x00" + struct.pack("<II", 9, 0xCAFEF00D)
    assert unpack_slot_switch(pack_slot_switch(switch)) == switch
    unpack_rollback(b"")
    assert len(pack_update_chunk(32, bytes(MAX_CHUNK_DATA))) == MAX_PAYLOAD  # the largest chunk fills a frame


@pytest.mark.parametrize(
    ("parse", "payload", "message"),
    [
        (unpack_update_begin, bytes(31), "expected 32"),
        (unpack_update_begin_reply, b"\x02" + struct.pack("<IH", 32, 100), "slot 2"),
        (unpack_update_begin_reply, b"\x00" + struct.pack("<IH", 32, 0), "chunks of 0"),
        (unpack_update_begin_reply, b"\x00" + struct.pack("<IH", 32, MAX_CHUNK_DATA + 1), "chunks of"),
        (unpack_update_begin_reply, b"\x00" + struct.pack("<IH", 31, 64), "inside the header"),
        (unpack_update_chunk, b"\x20\x00\x00\x00", "expected 5"),
        (unpack_update_chunk, bytes(4 + MAX_CHUNK_DATA + 1), "expected 5"),
        (unpack_update_chunk_reply, b"\x20\x00\x00", "expected 4"),
        (unpack_update_commit, b"", "expected 4"),
        (unpack_rollback, b"\x00", "expected none"),
        (unpack_slot_switch, b"\x07" + bytes(8), "slot 7"),
        (unpack_slot_switch, bytes(8), "expected 9"),
    ],
)
def test_update_messages_reject_malformed(parse, payload: bytes, message: str) -> None:  # noqa: ANN001
    with pytest.raises(FrameError, match=message):
        parse(payload)


def test_pack_update_chunk_checks_its_arguments() -> None:
    for offset, data in ((32, b""), (32, bytes(MAX_CHUNK_DATA + 1)), (-1, b"x"), (2**32, b"x")):
        with pytest.raises(ValueError):
            pack_update_chunk(offset, data)
    with pytest.raises(ValueError, match="32-byte"):
        pack_update_begin(bytes(33))


def _plain_result() -> InferResult:
    return InferResult(np.array([-128, 127, 0], np.int8), 1, 99, np.array([5, 6], np.uint32))


def test_result_sections_wire_layout_and_round_trip() -> None:
    record = _telemetry_batch().record(0)
    tensor = np.arange(-3, 61, dtype=np.int8)
    full = InferResult(np.array([-128, 127, 0], np.int8), 1, 99, np.array([5, 6], np.uint32), record,
                       (CaptureWhich.INPUT, tensor))
    payload = pack_result(full)
    plain = pack_result(_plain_result())
    assert payload == (plain + b"\x01" + struct.pack("<H", 43) + pack_telemetry_record(record)
                       + b"\x02" + struct.pack("<H", 65) + b"\x00" + tensor.tobytes())
    back = unpack_result(payload, 3, 2)
    assert back.telemetry == record
    assert back.capture is not None and back.capture[0] == CaptureWhich.INPUT
    np.testing.assert_array_equal(back.capture[1], tensor)
    assert back.capture[1].dtype == np.int8
    only_capture = unpack_result(plain + b"\x02\x02\x00\x01\x7f", 3, 2)
    assert only_capture.telemetry is None and only_capture.capture[0] == CaptureWhich.PENULTIMATE
    assert unpack_result(plain, 3, 2).telemetry is None and unpack_result(plain, 3, 2).capture is None


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (b"\x02\x02\x00\x00\x01" + b"\x01\x2b\x00" + bytes(43), "out of order"),  # capture before telemetry
        (b"\x01\x2b\x00" + bytes(43) + b"\x01\x2b\x00" + bytes(43), "out of order or repeated"),
        (b"\x01\x2a\x00" + bytes(42), "43"),  # telemetry of the wrong size
        (b"\x03\x01\x00\x00", "unknown section tag 3"),
        (b"\x02\x05\x00\x00\x01", "runs past the end"),
        (b"\x02\x01\x00\x00", "no tensor"),
        (b"\x02\x02\x00\x04\x01", "capture target 4"),
        (b"\x01\x2b", "stray bytes"),
    ],
)
def test_result_rejects_malformed_sections(tail: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        unpack_result(pack_result(_plain_result()) + tail, 3, 2)


# --- the C side, compiled for the host under AddressSanitizer -----------------------------------

RUNTIME = RUNTIME_DIR
C_BODY_CAP = MAX_BODY + 1  # main.c's receive buffer: one byte more than the largest body

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cobs.h"
#include "crc32.h"

static void put(const void *data, uint32_t len) { fwrite(data, 1, len, stdout); }

int main(int argc, char **argv)
{
    static uint8_t in[1 << 22];
    size_t n = fread(in, 1, sizeof in, stdin);
    if (argc > 1 && strcmp(argv[1], "encode") == 0) {
        /* records: u32 length, data; each written in pieces of 1..7 bytes */
        static mcup_cobs_writer w;
        for (size_t i = 0; i + 4 <= n;) {
            uint32_t len;
            memcpy(&len, in + i, 4);
            i += 4;
            mcup_cobs_writer_begin(&w, put);
            for (uint32_t done = 0; done < len;) {
                uint32_t piece = 1u + (done % 7u);
                if (piece > len - done) piece = len - done;
                mcup_cobs_writer_push(&w, in + i + done, piece);
                done += piece;
            }
            mcup_cobs_writer_end(&w);
            i += len;
        }
        return 0;
    }
    uint8_t *buf = malloc(CAP); /* exactly CAP bytes: ASan catches any write past it */
    mcup_cobs_decoder d;
    mcup_cobs_decoder_init(&d, buf, CAP);
    for (size_t i = 0; i < n; i++) {
        int r = mcup_cobs_decoder_push(&d, in[i]);
        if (r == MCUP_COBS_MORE) continue;
        if (r == MCUP_COBS_FRAME) {
            printf("F %u %08x ", (unsigned)d.total, (unsigned)mcup_crc32(0u, buf, d.len));
            for (uint32_t k = 0; k < d.len; k++) printf("%02x", buf[k]);
            printf("\n");
        } else {
            printf(r == MCUP_COBS_EMPTY ? "E\n" : "B\n");
        }
        mcup_cobs_decoder_reset(&d);
    }
    free(buf);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return host_build(tmp_path_factory.mktemp("c-harness") / "harness", [RUNTIME / "cobs.c", RUNTIME / "crc32.c"],
                      [RUNTIME], [f"CAP={C_BODY_CAP}u"], text=HARNESS)


def _run_harness(exe: Path, data: bytes, *args: str) -> bytes:
    proc = subprocess.run([str(exe), *args], input=data, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]  # ASan/UBSan reports land here
    return proc.stdout


def _python_view(stream: bytes) -> list[str]:
    """What the C decoder must report for `stream`, computed with the Python decoder."""
    lines = []
    for chunk in stream.split(b"\x00")[:-1]:  # the part after the last 0x00 is not finished
        if not chunk:
            lines.append("E")
            continue
        try:
            body = cobs_decode(chunk)
        except FrameError:
            lines.append("B")
            continue
        kept = body[:C_BODY_CAP]
        lines.append(f"F {len(body)} {crc32(kept):08x} {kept.hex()}")
    return lines


def _random_stream(rng: np.random.Generator, pieces: int) -> bytes:
    out = bytearray()
    for _ in range(pieces):
        kind = rng.integers(0, 4)
        if kind == 0:  # a valid frame, sometimes far over the size limit
            size = int(rng.choice([0, 1, 253, 254, 255, 800, MAX_PAYLOAD, MAX_PAYLOAD + 1, 3000]))
            payload = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            body = bytes([1, 2, 0, 0]) + payload
            out += cobs_encode(body + crc32(body).to_bytes(4, "little")) + b"\x00"
        elif kind == 1:  # non-zero garbage, maybe longer than any frame
            out += rng.integers(1, 256, int(rng.choice([3, 300, 5000])), dtype=np.uint8).tobytes()
        elif kind == 2:  # garbage with delimiters
            chunk = rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8)
            chunk[rng.random(chunk.size) < 0.05] = 0
            out += chunk.tobytes()
        else:
            out += b"\x00" * int(rng.integers(1, 3))
    return bytes(out)


def test_c_decoder_agrees_with_python_and_never_overruns(c_harness: Path) -> None:
    stream = _random_stream(np.random.default_rng(7), 600)
    got = _run_harness(c_harness, stream).decode().splitlines()
    assert got == _python_view(stream)
    assert any(line.startswith("F") and int(line.split()[1]) > C_BODY_CAP for line in got)  # overflow seen


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300), st.just(b"\x00"), st.just(b"\xff" * 260)), max_size=20))
def test_c_decoder_fuzz(c_harness: Path, chunks: list[bytes]) -> None:
    stream = b"".join(chunks) + b"\x00"
    assert _run_harness(c_harness, stream).decode().splitlines() == _python_view(stream)


def test_c_encoder_matches_python_canonical_cobs(c_harness: Path) -> None:
    rng = np.random.default_rng(8)
    records = [b"", b"\x00", bytes(range(1, 255)), bytes(range(1, 256)), bytes(254) + b"\x01"]
    for size in (1, 253, 254, 255, 508, 509, 2056):
        data = rng.integers(0, 256, size, dtype=np.uint8)
        records += [data.tobytes(), np.where(data == 0, 1, data).astype(np.uint8).tobytes()]
    stdin = b"".join(len(r).to_bytes(4, "little") + r for r in records)
    assert _run_harness(c_harness, stdin, "encode") == b"".join(cobs_encode(r) + b"\x00" for r in records)
