"""Fuzzing the host side of the frame protocol (hypothesis).

Properties (also driven by bench/fuzz/host_fuzz.py with a seeded generator and 10^5+ inputs):

* ``FrameReader.feed``, fed a stream of valid frames, duplicated frames, garbage, frames with a
  flipped bit or byte, truncated frames, over-long frames and runs of bytes longer than any frame,
  split into arbitrary pieces, never raises and yields exactly the valid frames, in order; its
  buffers stay bounded.
* every ``unpack_*`` (and ``decode_frame``, ``decode_body``, ``cobs_decode``) raises nothing but
  ``FrameError`` on any bytes, and what it accepts packs back to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcuprune.device.frames import (
    MAX_ENCODED,
    MAX_PAYLOAD,
    Frame,
    FrameError,
    FrameReader,
    cobs_decode,
    cobs_encode,
    crc32,
    decode_body,
    decode_frame,
    encode_frame,
)
from mcuprune.device.messages import (
    CaptureReply,
    DeviceInfo,
    ErrorReply,
    InferResult,
    LabelReply,
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

# --- the stream property -------------------------------------------------------------------------
#
# A stream is a list of items; `build_stream` turns them into wire bytes and the frames a correct
# reader must yield. Every item except "frame" is invalid by construction (not by asking the code
# under test): a flipped bit or a changed data byte is an error burst CRC-32 always detects, a cut
# inside a COBS block cannot decode, an over-long body breaks the length rule. Integer fields are
# taken modulo what fits, so any integers make a valid item.

Item = tuple  # ("frame", Frame) | ("garbage", bytes) | ("flip_bit", Frame, int) | ...


def _code_positions(encoded: bytes) -> set[int]:
    """Offsets of the COBS code bytes (block starts) of a well-formed encoding."""
    positions, i = set(), 0
    while i < len(encoded):
        positions.add(i)
        i += encoded[i]
    return positions


def _is_garbage(data: bytes) -> bool:
    """True if no 0x00-terminated chunk of `data` is a frame (random bytes almost never are; the
    check keeps the expectation exact even then)."""
    for chunk in data.split(b"\x00")[:-1]:
        try:
            if chunk:
                decode_frame(chunk)
                return False
        except FrameError:
            pass
    return True


def item_bytes(item: Item) -> tuple[bytes, list[Frame]]:
    """Wire bytes of one item and the frames it must produce."""
    kind = item[0]
    if kind == "frame":
        return encode_frame(item[1]), [item[1]]
    if kind == "duplicate":  # the same frame twice in a row
        wire = encode_frame(item[1])
        return wire + wire, [item[1], item[1]]
    if kind == "garbage":  # arbitrary bytes closed by a delimiter
        data = bytes(item[1]) + b"\x00"
        return (data if _is_garbage(data) else b""), []
    if kind == "flip_bit":  # one bit of the body flipped, then encoded properly
        body = bytearray(item[1].body())
        bit = item[2] % (8 * len(body))
        body[bit // 8] ^= 1 << (bit % 8)
        return cobs_encode(bytes(body)) + b"\x00", []
    if kind == "flip_byte":  # one data byte of the encoding changed to another non-zero value
        wire = bytearray(encode_frame(item[1])[:-1])
        data_positions = sorted(set(range(len(wire))) - _code_positions(bytes(wire)))
        pos = data_positions[item[2] % len(data_positions)]
        wire[pos] = 1 + (wire[pos] - 1 + 1 + item[3] % 254) % 255  # never 0, never the old value
        return bytes(wire) + b"\x00", []
    if kind == "truncate":  # the encoding cut inside a block, then the delimiter
        wire = encode_frame(item[1])[:-1]
        inside = sorted(set(range(1, len(wire))) - _code_positions(wire))
        return wire[: inside[item[2] % len(inside)]] + b"\x00", []
    if kind == "oversize":  # a well-formed body, CRC and all, with a payload over the limit
        payload = bytes([item[2] % 256]) * (MAX_PAYLOAD + 1 + item[3] % 1000)
        head = bytes([1, item[1] % 256, 0, 0]) + payload
        return cobs_encode(head + crc32(head).to_bytes(4, "little")) + b"\x00", []
    if kind == "long":  # non-zero bytes longer than any frame, then the delimiter
        fill = bytes(1 + b % 255 for b in item[1]) or b"\x01"
        return (fill * (1 + (MAX_ENCODED + 1) // len(fill)))[: MAX_ENCODED + 1 + item[2] % 3000] + b"\x00", []
    raise AssertionError(kind)


def build_stream(items: Sequence[Item]) -> tuple[bytes, list[Frame]]:
    wire, frames = bytearray(), []
    for item in items:
        data, expected = item_bytes(item)
        wire += data
        frames += expected
    return bytes(wire), frames


def check_reader(items: Sequence[Item], cuts: Sequence[int], noise_limit: int = 512) -> int:
    """Feed the stream in pieces cut at `cuts` (any ints); the reader must yield exactly the valid
    frames and keep bounded buffers. Returns the stream length."""
    wire, expected = build_stream(items)
    bounds = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    reader = FrameReader(noise_limit=noise_limit)
    got: list[Frame] = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        got += reader.feed(wire[lo:hi])
        assert len(reader.pending) <= MAX_ENCODED
        assert len(reader.noise) <= noise_limit
    assert got == expected
    assert reader.pending == b""  # every item ends with a delimiter
    return len(wire)


# --- the parser property -------------------------------------------------------------------------

_SLOTS = (SlotState(SlotStatus.VALID, 1, 4000, 0xABCDEF01, 4000), SlotState(SlotStatus.WRITING, 0, 5000, 7, 2080))
_RECORD = {"count": 5, "top1": 2, "confidence_q15": 30000, "recon_error": 1234, "histogram": list(range(16))}
OUTPUT_SIZE, NUM_LAYERS = 10, 5


def _info_repack(info: DeviceInfo, payload: bytes) -> bool:
    """pack_info always writes the params and security mode bytes; older firmware sends no security
    byte, and the oldest static firmware not even the params mode."""
    packed = pack_info(info)
    legacy = [packed[:-1]] + ([packed[:-2]] if info.params_mode == ParamsMode.STATIC else [])
    return packed == payload or (not info.signed and payload in legacy)


def _frame_repack(frame: Frame, payload: bytes) -> bool:
    return decode_frame(encode_frame(frame)[:-1]) == frame  # COBS accepts a few non-canonical forms


def _result_repack(result: InferResult, payload: bytes) -> bool:
    return pack_result(result) == payload


# name -> (parser, re-packer or None, valid payloads to mutate)
PARSERS: dict[str, tuple[Callable[[bytes], Any], Callable[[Any, bytes], bool] | None, list[bytes]]] = {
    "cobs_decode": (cobs_decode, lambda out, p: cobs_decode(cobs_encode(out)) == out, [cobs_encode(bytes(300))]),
    "decode_body": (decode_body, _frame_repack, [Frame(0x82, 9, bytes(range(40))).body()]),
    "decode_frame": (decode_frame, _frame_repack, [encode_frame(Frame(0x81, 1, bytes(300)))[:-1]]),
    "unpack_info": (unpack_info, _info_repack, [
        pack_info(DeviceInfo(1, (0, 2), 0x1234, 25_000_000, 64, 10, 5, "mps2-an386", "digits", ParamsMode.BLOB, 0,
                             _SLOTS, 8 << 20)),
        pack_info(DeviceInfo(1, (0, 1), 0x1234, 25_000_000, 64, 10, 5, "mps2-an386", "digits")),
    ]),
    "unpack_result": (lambda p: unpack_result(p, OUTPUT_SIZE, NUM_LAYERS), _result_repack, [
        pack_result(InferResult(np.arange(10, dtype=np.int8), 9, 1000, np.arange(5, dtype=np.uint32), _RECORD,
                                (1, np.arange(20, dtype=np.int8)))),
        pack_result(InferResult(np.zeros(10, np.int8), 0, 1, np.zeros(5, np.uint32), None, (0, np.ones(64, np.int8)))),
    ]),
    "unpack_error": (unpack_error, lambda out, p: pack_error(out) == p, [pack_error(ErrorReply(8, 5))]),
    "unpack_telemetry_record": (unpack_telemetry_record, lambda out, p: pack_telemetry_record(out) == p,
                                [pack_telemetry_record(_RECORD)]),
    "unpack_telemetry_request": (unpack_telemetry_request, lambda out, p: pack_telemetry_request(out) == p, [b"\x01"]),
    "unpack_telemetry_reply": (unpack_telemetry_reply, lambda out, p: pack_telemetry_reply(*out) == p,
                               [pack_telemetry_reply(1, _RECORD)]),
    "unpack_capture_request": (unpack_capture_request, lambda out, p: pack_capture_request(*out) == p,
                               [pack_capture_request(1, 1000)]),
    "unpack_capture_reply": (unpack_capture_reply, lambda out, p: pack_capture_reply(out) == p,
                             [pack_capture_reply(CaptureReply(0, 50, 784))]),
    "unpack_label": (unpack_label, lambda out, p: pack_label(*out) == p, [pack_label(300, 7)]),
    "unpack_label_reply": (unpack_label_reply, lambda out, p: pack_label_reply(out) == p, [
        pack_label_reply(LabelReply(300, 7, True, 7, 12, 9)),
        pack_label_reply(LabelReply(2, 1, False, None, 12, 9)),
    ]),
    "unpack_update_begin": (unpack_update_begin, lambda out, p: pack_update_begin(out) == p, [bytes(range(32))]),
    "unpack_update_begin_reply": (unpack_update_begin_reply, lambda out, p: pack_update_begin_reply(out) == p,
                                  [pack_update_begin_reply(UpdateBeginReply(1, 32, 2044))]),
    "unpack_update_chunk": (unpack_update_chunk, lambda out, p: pack_update_chunk(*out) == p,
                            [pack_update_chunk(32, bytes(range(200)))]),
    "unpack_update_chunk_reply": (unpack_update_chunk_reply, lambda out, p: pack_update_chunk_reply(out) == p,
                                  [pack_update_chunk_reply(4096)]),
    "unpack_update_commit": (unpack_update_commit, lambda out, p: pack_update_commit(out) == p,
                             [pack_update_commit(0xABCDEF01)]),
    "unpack_rollback": (unpack_rollback, lambda out, p: p == b"", [b""]),
    "unpack_slot_switch": (unpack_slot_switch, lambda out, p: pack_slot_switch(out) == p,
                           [pack_slot_switch(SlotSwitch(1, 3, 0xABCDEF01))]),
}


def mutate(payload: bytes, ops: Sequence[tuple[int, int, int]]) -> bytes:
    """Apply edits to a valid payload: (kind, position, value) with kind 0 truncate, 1 overwrite a
    byte, 2 insert a byte, 3 delete a byte, 4 append a byte (positions taken modulo the length)."""
    data = bytearray(payload)
    for kind, pos, value in ops:
        n = len(data)
        if kind % 5 == 0:
            del data[pos % (n + 1) :]
        elif kind % 5 == 1 and n:
            data[pos % n] = value % 256
        elif kind % 5 == 2:
            data.insert(pos % (n + 1), value % 256)
        elif kind % 5 == 3 and n:
            del data[pos % n]
        elif kind % 5 == 4:
            data.append(value % 256)
    return bytes(data)


def check_parser(name: str, payload: bytes) -> bool:
    """The parser raises only FrameError; what it accepts re-packs to the same bytes. True if accepted."""
    parse, repack, _ = PARSERS[name]
    try:
        out = parse(payload)
    except FrameError:
        return False
    assert repack is None or repack(out, payload), (name, payload.hex())
    return True


# --- hypothesis drivers --------------------------------------------------------------------------

frames = st.builds(
    Frame,
    type=st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    payload=st.one_of(st.binary(max_size=64), st.binary(min_size=240, max_size=520),
                      st.binary(min_size=MAX_PAYLOAD - 8, max_size=MAX_PAYLOAD)),
)
ints = st.integers(0, 2**32)
items = st.one_of(
    st.tuples(st.just("frame"), frames),
    st.tuples(st.just("duplicate"), frames),
    st.tuples(st.just("garbage"), st.binary(max_size=200)),
    st.tuples(st.just("flip_bit"), frames, ints),
    st.tuples(st.just("flip_byte"), frames, ints, ints),
    st.tuples(st.just("truncate"), frames, ints),
    st.tuples(st.just("oversize"), ints, ints, ints),
    st.tuples(st.just("long"), st.binary(max_size=8), ints),
)
FAST = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=1500, **FAST)
@given(st.lists(items, max_size=12), st.lists(st.integers(0, 2**20), max_size=40))
def test_reader_yields_exactly_the_valid_frames(stream_items: list[Item], cuts: list[int]) -> None:
    check_reader(stream_items, cuts)


@settings(max_examples=500, **FAST)
@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=20))
def test_reader_on_raw_bytes_agrees_with_one_feed(data: bytes, cuts: list[int]) -> None:
    """Any bytes, any split: the reader never raises and yields what one feed of the whole stream yields."""
    whole = FrameReader().feed(data)
    reader = FrameReader(noise_limit=64)
    got: list[Frame] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        got += reader.feed(data[lo:hi])
    assert got == whole and len(reader.noise) <= 64


@settings(max_examples=150, **FAST)
@given(st.sampled_from(sorted(PARSERS)), st.binary(max_size=120))
def test_parsers_raise_only_frame_error_on_any_bytes(name: str, payload: bytes) -> None:
    check_parser(name, payload)


@settings(max_examples=2500, **FAST)
@given(st.sampled_from(sorted(PARSERS)), st.integers(0, 7),
       st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2**16), st.integers(0, 255)), max_size=6))
def test_parsers_raise_only_frame_error_on_mutated_payloads(name: str, which: int,
                                                            ops: list[tuple[int, int, int]]) -> None:
    seeds = PARSERS[name][2]
    check_parser(name, mutate(seeds[which % len(seeds)], ops))


def test_parser_seeds_are_accepted() -> None:
    """The unmutated seeds parse (so mutation starts from deep inside each parser)."""
    for name, (_, _, seeds) in PARSERS.items():
        for seed in seeds:
            assert check_parser(name, seed), name


def test_invalid_items_are_really_invalid() -> None:
    """Spot check of the construction the stream property relies on."""
    frame = Frame(0x82, 77, bytes(range(1, 255)) * 2)
    for item in [("flip_bit", frame, 5), ("flip_byte", frame, 3, 9), ("truncate", frame, 100),
                 ("oversize", 1, 2, 3), ("long", b"ab", 4)]:
        wire, expected = item_bytes(item)
        assert expected == [] and wire.endswith(b"\x00") and FrameReader().feed(wire) == []
    assert FrameReader().feed(item_bytes(("duplicate", frame))[0]) == [frame, frame]
