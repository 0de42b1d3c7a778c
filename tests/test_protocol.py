"""The host side of the frame protocol: CRC, COBS, frames, the stream reader, message payloads.
The C side is checked against these through QEMU in test_emulate.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcuprune.protocol import (
    MAX_BODY,
    MAX_ENCODED,
    MAX_PAYLOAD,
    DeviceInfo,
    ErrorCode,
    ErrorReply,
    Frame,
    FrameError,
    FrameReader,
    InferResult,
    MsgType,
    cobs_decode,
    cobs_encode,
    cobs_max_encoded,
    crc32,
    decode_body,
    decode_frame,
    encode_frame,
    pack_error,
    pack_info,
    pack_result,
    printable,
    unpack_error,
    unpack_info,
    unpack_result,
)


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
    for parse in (decode_frame, decode_body, unpack_info, unpack_error,
                  lambda d: unpack_result(d, 10, 2)):
        try:
            parse(data)
        except FrameError:
            pass


def test_info_round_trip() -> None:
    info = DeviceInfo(1, (0, 1), 0x1234ABCD, 25_000_000, 784, 10, 7, "mps2-an386", "fashion-mnist-cnn")
    payload = pack_info(info)
    assert payload[-len(b"fashion-mnist-cnn\x00") :] == b"fashion-mnist-cnn\x00"
    assert unpack_info(payload) == info


def test_info_rejects_missing_terminator() -> None:
    info = DeviceInfo(1, (0, 1), 1, 2, 3, 4, 5, "board", "model")
    with pytest.raises(FrameError, match="NUL"):
        unpack_info(pack_info(info)[:-1])


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


# --- the C side, compiled for the host under AddressSanitizer -----------------------------------

RUNTIME = Path(__file__).resolve().parent.parent / "firmware" / "runtime"
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
    folder = tmp_path_factory.mktemp("c-harness")
    (folder / "harness.c").write_text(HARNESS)
    exe = folder / "harness"
    cmd = ["gcc", "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", f"-DCAP={C_BODY_CAP}u", f"-I{RUNTIME}", str(folder / "harness.c"),
           str(RUNTIME / "cobs.c"), str(RUNTIME / "crc32.c"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True)
    return exe


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
