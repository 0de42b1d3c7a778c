"""The firmware runtime end to end: build the stub model with build.py for each QEMU board, run
it in qemu-system-arm, and talk to it over the UART socket with pyserial."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mcuprune.device.frames import MAX_PAYLOAD, cobs_decode, cobs_encode, crc32
from mcuprune.device.link import Device, DeviceError, DeviceTimeout
from mcuprune.device.messages import ErrorCode, MsgType, unpack_error
from mcuprune.device.qemu import KeepInputSocket, QemuDevice
from mcuprune.errors import UserError
from mcuprune.target.board import Board, list_boards, load_board
from mcuprune.target.build import BuildResult, build_project, prepare_project

STUB = Path(__file__).parent / "fixtures" / "stub_model"
QEMU_BOARDS = [b.name for b in list_boards() if b.qemu_machine]  # every emulated board file


def _stub_constant(name: str) -> int:
    match = re.search(rf"#define {name} (\w+)", (STUB / "model.h").read_text())
    assert match, name
    return int(match.group(1).rstrip("u"), 0)


INPUT_SIZE = _stub_constant("MCUP_INPUT_SIZE")
OUTPUT_SIZE = _stub_constant("MCUP_OUTPUT_SIZE")
NUM_LAYERS = _stub_constant("MCUP_NUM_LAYERS")
SPIN_INSTRUCTIONS = 2 * _stub_constant("STUB_SPIN_ITERATIONS")  # subs + bne per iteration
STUB_BIAS = np.array(
    [int(v) for v in re.search(r"mcup_param_stub_bias\[\w+\] = \{([^}]*)\}",
                               (STUB / "model.c").read_text()).group(1).split(",")],
    dtype=np.int64,
)


def stub_logits(x: np.ndarray) -> np.ndarray:
    """The stub model in numpy: per-class sums of the input plus bias, wrapped to int8."""
    flat = x.reshape(-1).astype(np.int64)
    acc = STUB_BIAS + np.array([flat[k::OUTPUT_SIZE].sum() for k in range(OUTPUT_SIZE)])
    return ((acc + 128) % 256 - 128).astype(np.int8)


def input_for_logits(target: np.ndarray) -> np.ndarray:
    """An input whose stub logits are exactly `target` (the sums wrap, so one element per class does)."""
    x = np.zeros(INPUT_SIZE, np.int8)
    x[:OUTPUT_SIZE] = ((target.astype(np.int64) - STUB_BIAS + 128) % 256 - 128).astype(np.int8)
    return x


def tagged_input(tag: bytes) -> np.ndarray:
    x = np.zeros(INPUT_SIZE, np.int8)
    x[: len(tag)] = np.frombuffer(tag, np.int8)
    return x


def build_stub(fw_dir: Path, board: Board, kernels: list[Path] | None = None) -> BuildResult:
    prepare_project(fw_dir, board, kernels or [])
    for name in ("model.h", "model.c"):
        shutil.copyfile(STUB / name, fw_dir / "src" / name)
    return build_project(fw_dir, board)


@pytest.fixture(scope="module", params=QEMU_BOARDS)
def firmware(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Board, Path, BuildResult]:
    board = load_board(request.param)
    fw_dir = tmp_path_factory.mktemp(board.name)
    return board, fw_dir, build_stub(fw_dir, board)


@pytest.fixture(scope="module")
def qemu(firmware: tuple[Board, Path, BuildResult]) -> Iterator[QemuDevice]:
    board, _, result = firmware
    with QemuDevice(board, result.elf) as q:
        yield q


# --- build -------------------------------------------------------------------------------------


def test_build_reports_sizes(firmware: tuple[Board, Path, BuildResult]) -> None:
    board, _, result = firmware
    assert result.elf.is_file()
    assert result.symbol_sizes["mcup_param_stub_bias"] == 4 * OUTPUT_SIZE
    assert result.model_flash_bytes == 4 * OUTPUT_SIZE  # the only mcup_param_ symbol
    assert 1000 < result.flash_bytes < board.flash.length
    assert board.stack_size < result.ram_bytes < board.ram.length  # the stack counts as RAM


def test_project_is_self_contained(firmware: tuple[Board, Path, BuildResult], tmp_path: Path) -> None:
    """A copy of the project, away from the repo, builds with plain `make` and `make clean` works."""
    _, fw_dir, _ = firmware
    copy = tmp_path / "fw"
    shutil.copytree(fw_dir, copy, ignore=shutil.ignore_patterns("build"))
    proc = subprocess.run(["make", "-C", str(copy)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "filename" in proc.stdout  # arm-none-eabi-size ran
    assert (copy / "build" / "firmware.elf").is_file()
    subprocess.run(["make", "-C", str(copy), "clean"], capture_output=True, check=True)
    assert not (copy / "build").exists()


def test_kernel_sources_are_copied_and_stale_ones_removed(tmp_path: Path) -> None:
    board = load_board(QEMU_BOARDS[0])
    kernel = tmp_path / "kernels" / "mcup_extra_s8.c"
    kernel.parent.mkdir()
    kernel.write_text("#include <stdint.h>\nint32_t mcup_extra_s8(int32_t x);\n"
                      "int32_t mcup_extra_s8(int32_t x) { return x + 1; }\n")
    fw_dir = tmp_path / "fw"
    build_stub(fw_dir, board, [kernel])
    assert (fw_dir / "src" / "mcup_extra_s8.c").is_file()
    assert (fw_dir / "build" / "mcup_extra_s8.o").is_file()  # every src/*.c is compiled
    prepare_project(fw_dir, board, [])
    assert not (fw_dir / "src" / "mcup_extra_s8.c").exists()
    assert (fw_dir / "src" / "model.c").is_file()  # the code generator's files stay


def test_kernel_name_clash_is_user_error(tmp_path: Path) -> None:
    board = load_board(QEMU_BOARDS[0])
    twins = [tmp_path / "reference" / "fc.c", tmp_path / "dsp" / "fc.c"]
    for path in twins:
        path.parent.mkdir()
        path.write_text("")
    with pytest.raises(UserError, match="same file name"):
        prepare_project(tmp_path / "fw", board, twins)


def test_compiler_error_is_one_line_user_error(tmp_path: Path) -> None:
    board = load_board(QEMU_BOARDS[0])
    fw_dir = tmp_path / "fw"
    prepare_project(fw_dir, board, [])
    shutil.copyfile(STUB / "model.h", fw_dir / "src" / "model.h")
    (fw_dir / "src" / "model.c").write_text('#include "model.h"\nint mcup_init(void) { return 0 }\n')
    with pytest.raises(UserError) as info:
        build_project(fw_dir, board)
    message = str(info.value)
    assert "model.c:2" in message and "error:" in message and "\n" not in message


# --- talking to the device ---------------------------------------------------------------------


@pytest.mark.qemu
def test_info_round_trip(qemu: QemuDevice) -> None:
    info = qemu.info()
    assert info.protocol_version == 1 and info.fw_version == (0, 1)
    assert (info.input_size, info.output_size, info.num_layers) == (INPUT_SIZE, OUTPUT_SIZE, NUM_LAYERS)
    assert info.arch_hash == _stub_constant("MCUP_ARCH_HASH")
    assert info.clock_hz == qemu.board.clock_hz
    assert (info.board, info.model) == (qemu.board.name, "stub")


@pytest.mark.qemu
def test_infer_matches_stub_model(qemu: QemuDevice) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.integers(-128, 128, INPUT_SIZE, dtype=np.int8) for _ in range(40)]
    xs += [np.full(INPUT_SIZE, v, np.int8) for v in (127, -128, 0)]
    results = qemu.infer_many(xs)
    assert len(results) == len(xs)
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r.logits, stub_logits(x))
        assert r.predicted == int(np.argmax(stub_logits(x)))
        assert r.layer_ticks.shape == (NUM_LAYERS,)
    single = qemu.infer(xs[0].reshape(28, 28, 1))  # any shape with the right element count
    np.testing.assert_array_equal(single.logits, results[0].logits)


@pytest.mark.qemu
@pytest.mark.qemu
@pytest.mark.parametrize(
    ("logits", "predicted"),
    [([5] * 10, 0), ([0, 0, 0, 9, 0, 0, 0, 9, 0, 0], 3), ([-128] * 9 + [-127], 9)],
)
def test_predicted_class_is_first_argmax(qemu: QemuDevice, logits: list[int], predicted: int) -> None:
    target = np.array(logits, np.int8)
    result = qemu.infer(input_for_logits(target))
    np.testing.assert_array_equal(result.logits, target)
    assert result.predicted == predicted


@pytest.mark.qemu
def test_input_is_checked_before_sending(qemu: QemuDevice) -> None:
    with pytest.raises(UserError, match="int8"):
        qemu.infer(np.zeros(INPUT_SIZE, np.uint8))
    with pytest.raises(UserError, match="elements"):
        qemu.infer(np.zeros(INPUT_SIZE - 1, np.int8))


@pytest.mark.qemu
def test_crc32_agrees_with_firmware(qemu: QemuDevice) -> None:
    """zlib's CRC on the host and crc32.c on the device: every frame either way must check out."""
    device = qemu.device
    dropped = device.reader.dropped
    rng = np.random.default_rng(1)
    for _ in range(10):
        x = rng.integers(-128, 128, INPUT_SIZE, dtype=np.int8)
        np.testing.assert_array_equal(device.infer(x).logits, stub_logits(x))  # device accepted our CRC
    assert device.reader.dropped == dropped  # we accepted every one of its CRCs


def _raw_frame(type_: int, seq: int, payload: bytes = b"", version: int = 1, crc_ok: bool = True) -> bytes:
    head = bytes([version, type_]) + seq.to_bytes(2, "little") + payload
    crc = crc32(head) ^ (0 if crc_ok else 0x1)
    return cobs_encode(head + crc.to_bytes(4, "little")) + b"\x00"


BAD_FRAMES = [
    ("bad crc", _raw_frame(MsgType.INFO, 0x1101, crc_ok=False), ErrorCode.BAD_CRC, MsgType.INFO),
    ("bad version", _raw_frame(MsgType.INFO, 0x1102, version=2), ErrorCode.BAD_VERSION, MsgType.INFO),
    ("unknown type", _raw_frame(0x33, 0x1103), ErrorCode.UNKNOWN_TYPE, 0x33),
    ("short infer", _raw_frame(MsgType.INFER, 0x1104, bytes(10)), ErrorCode.BAD_LENGTH, MsgType.INFER),
    ("exit without code", _raw_frame(MsgType.EXIT, 0x1105), ErrorCode.BAD_LENGTH, MsgType.EXIT),
    ("no room for crc", cobs_encode(b"\x01\x01\x06\x11\xaa") + b"\x00", ErrorCode.BAD_LENGTH, MsgType.INFO),
    ("too long", _raw_frame(MsgType.INFER, 0x1107, bytes(range(256)) * 9), ErrorCode.TOO_LONG, MsgType.INFER),
]


@pytest.mark.qemu
@pytest.mark.parametrize(("wire", "code", "offending"), [b[1:] for b in BAD_FRAMES],
                         ids=[b[0] for b in BAD_FRAMES])
def test_bad_frames_get_error_replies(qemu: QemuDevice, wire: bytes, code: int, offending: int) -> None:
    device = qemu.device
    seq = int.from_bytes(cobs_decode(wire[:-1])[2:4], "little")
    device.write_raw(wire)
    reply = device.receive(seq, timeout=5)
    assert reply.type == MsgType.ERROR
    err = unpack_error(reply.payload)
    assert (err.code, err.offending_type) == (code, offending)
    assert device.info().model == "stub"  # and it keeps answering


def test_too_long_frame_is_really_over_the_limit() -> None:
    wire = BAD_FRAMES[-1][1]
    assert len(bytes(range(256)) * 9) > MAX_PAYLOAD and wire.count(0) == 1


@pytest.mark.qemu
def test_undecodable_frames_are_dropped_silently(qemu: QemuDevice) -> None:
    device = qemu.device
    stray = device.stray_frames
    device.write_raw(b"\x05\x11\x22\x00")  # COBS block cut short by the delimiter
    device.write_raw(b"\x01\x01\x00")  # decodes to 1 byte: no seq to answer
    device.write_raw(b"\x00\x00\x00")  # empty frames
    assert device.info().model == "stub"
    assert device.stray_frames == stray  # nothing came back for any of them


@pytest.mark.qemu
def test_device_survives_random_garbage(qemu: QemuDevice) -> None:
    device = qemu.device
    rng = np.random.default_rng(2)
    garbage = rng.integers(0, 256, 20_000, dtype=np.uint8)
    garbage[rng.random(garbage.size) < 0.01] = 0  # some delimiters, so some chunks decode
    device.write_raw(garbage.tobytes() + b"\x00")
    x = rng.integers(-128, 128, INPUT_SIZE, dtype=np.int8)
    np.testing.assert_array_equal(device.infer(x).logits, stub_logits(x))


@pytest.mark.qemu
def test_request_after_garbage_ending_mid_frame_is_answered_promptly(qemu: QemuDevice) -> None:
    """Issue 12: garbage that ends inside a frame (no delimiter after it) used to swallow the next
    request, which then waited out the whole timeout. The host now starts every request with a
    delimiter, so the device answers at once."""
    device = qemu.device
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, INPUT_SIZE, dtype=np.int8)
    half_frame = cobs_encode(struct.pack("<BBH", 1, 0x02, 99) + x.tobytes())[: INPUT_SIZE // 2]
    for noise in (half_frame, rng.integers(1, 256, 300, dtype=np.uint8).tobytes()):
        device.write_raw(noise)
        start = time.monotonic()
        assert device.request(MsgType.INFO, b"", timeout=3.0).type == MsgType.INFO | 0x80
        assert time.monotonic() - start < 1.0
    np.testing.assert_array_equal(device.infer(x).logits, stub_logits(x))


# --- instruction counting ----------------------------------------------------------------------


@pytest.mark.qemu
def test_instruction_count_calibration(qemu: QemuDevice) -> None:
    """Layer 1 of the stub is a loop of exactly SPIN_INSTRUCTIONS instructions."""
    x = np.arange(INPUT_SIZE).astype(np.int8)
    first, second = qemu.infer(x), qemu.infer(x)
    spin = qemu.instructions(int(first.layer_ticks[1]))
    assert abs(spin - SPIN_INSTRUCTIONS) / SPIN_INSTRUCTIONS < 0.01
    # a few ticks of reads; 1e-6 absorbs float error when it is exactly 3 ticks
    assert abs(spin - SPIN_INSTRUCTIONS) <= 3 * qemu.board.instructions_per_tick + 1e-6
    assert first.ticks >= int(first.layer_ticks.sum())
    # -icount makes the counts repeatable; only where the region starts within a 40-instruction tick
    # varies (the UART busy-wait before it depends on host timing), so each count may move by one.
    assert abs(first.ticks - second.ticks) <= 1
    assert np.abs(first.layer_ticks.astype(np.int64) - second.layer_ticks.astype(np.int64)).max() <= 1


@pytest.mark.qemu
def test_uart_and_bulk_paths_agree(qemu: QemuDevice, record_property: pytest.RecordProperty) -> None:
    """INFER frames over the UART (window of 8) and INFER_FILE give the same answers."""
    rng = np.random.default_rng(3)
    xs = rng.integers(-128, 128, (64, INPUT_SIZE), dtype=np.int8)
    rates = {}
    for bulk in (False, True):
        start = time.perf_counter()
        results = qemu.infer_many(xs, window=8, bulk=bulk)
        rates[bulk] = len(xs) / (time.perf_counter() - start)
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_array_equal(r.logits, stub_logits(x))
            assert r.predicted == int(np.argmax(r.logits))
            assert abs(qemu.instructions(int(r.layer_ticks[1])) - SPIN_INSTRUCTIONS) <= 2 * 40
    record_property("uart_inferences_per_second", round(rates[False], 1))
    record_property("bulk_inferences_per_second", round(rates[True], 1))
    print(f"{qemu.board.name}: {rates[False]:.0f} inferences/s over the UART, {rates[True]:.0f} through "
          f"INFER_FILE ({INPUT_SIZE}-byte inputs, {SPIN_INSTRUCTIONS:,} instructions each)")


@pytest.mark.qemu
def test_bulk_path_missing_file_is_device_error(qemu: QemuDevice, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="IO for INFER_FILE"):
        qemu.device.infer_file(tmp_path / "missing.bin", 3)
    short = tmp_path / "short.bin"
    short.write_bytes(bytes(INPUT_SIZE + 10))  # one whole input, then not enough for a second
    with pytest.raises(DeviceError, match="IO for INFER_FILE"):
        qemu.device.infer_file(short, 2)
    assert qemu.info().model == "stub"  # still in step with the device


# --- exit, crash, hang -------------------------------------------------------------------------


@pytest.mark.qemu
def test_exit_returns_semihosting_code(firmware: tuple[Board, Path, BuildResult]) -> None:
    board, _, result = firmware
    q = QemuDevice(board, result.elf)
    q.start()
    assert q.info().model == "stub"
    assert q.close(code=42) == 42
    assert q.returncode == 42
    with QemuDevice(board, result.elf) as q2:  # leaving the block sends EXIT 0
        q2.info()
    assert q2.returncode == 0


@pytest.mark.qemu
def test_fault_exits_with_fault_code_and_shows_uart_line(firmware: tuple[Board, Path, BuildResult]) -> None:
    board, _, result = firmware
    with QemuDevice(board, result.elf) as q:
        with pytest.raises(DeviceError) as info:
            q.infer(tagged_input(b"UDF!"))  # the stub executes an undefined instruction
        message = str(info.value)
        assert "status 3 (firmware fault)" in message
        assert message.endswith("mcuprune: fault: exception 003")  # HardFault, printed by startup.c
    assert q.returncode == 3


@pytest.mark.qemu
def test_hang_times_out_with_last_uart_output(firmware: tuple[Board, Path, BuildResult]) -> None:
    board, _, result = firmware
    with QemuDevice(board, result.elf, timeout=1.5, exit_timeout=1.0) as q:
        q.info()
        with pytest.raises(DeviceTimeout) as info:
            q.infer(tagged_input(b"HANG"))  # the stub never returns from mcup_run
    message = str(info.value)
    assert "\n" not in message and "no reply within 1.5 s" in message
    assert message.endswith(f"last UART output: mcuprune fw 0.1 proto 1 board {board.name} model stub")
    assert q.returncode is None  # QEMU had to be killed


def _open_while_server_speaks(port_class: type) -> bytes:
    """Open `port_class` on a local TCP server that sends a banner as soon as it accepts, with the
    open paused (in _reconfigure_port, just before pyserial's closing flush) until the banner is in
    our socket buffer: QEMU starting the guest while pyserial is still inside open()."""
    banner = b"mcuprune fw banner\x00"
    server = socket.create_server(("127.0.0.1", 0))
    sent = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        conn.sendall(banner)
        sent.set()
        time.sleep(1.0)
        conn.close()

    class Paused(port_class):
        def _reconfigure_port(self) -> None:
            super()._reconfigure_port()
            assert sent.wait(5.0)
            time.sleep(0.2)  # loopback delivery

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ser = Paused(None, timeout=0.5)
    ser.port = f"socket://127.0.0.1:{server.getsockname()[1]}"
    ser.open()
    try:
        return ser.read(len(banner))
    finally:
        ser.close()
        thread.join()
        server.close()


def test_port_keeps_bytes_received_while_opening() -> None:
    """The boot banner can arrive before the port's open() returns; it must not be flushed away
    (the CI failure where a hang's message said 'last UART output: (none)')."""
    import serial.urlhandler.protocol_socket as stock

    assert _open_while_server_speaks(stock.Serial) == b""  # pyserial's own flush loses it: the race is real
    assert _open_while_server_speaks(KeepInputSocket) == b"mcuprune fw banner\x00"


def test_board_without_qemu_machine_is_user_error(tmp_path: Path) -> None:
    board = replace(load_board(QEMU_BOARDS[0]), qemu_machine=None)
    with pytest.raises(UserError, match="cannot be emulated"):
        QemuDevice(board, tmp_path / "firmware.elf")


def test_device_works_over_any_pyserial_url() -> None:
    """loop:// echoes our own request back: the Device must notice it is not a reply."""
    with Device("loop://", timeout=1.0) as device:
        with pytest.raises(DeviceError, match="echoes our INFO request back"):
            device.info()
