"""Model updates of --params blob firmware (mcuprune/update.py) against the real firmware in QEMU:
A/B slots on a file-backed memory, streamed and resumed updates, rollback, refusals, and the
RESULT sections (telemetry, capture) on both inference paths."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serial

from mcuprune.codegen.blob import HEADER_BYTES, pack_blob, parse_blob, parse_header
from mcuprune.controller.drift_qsae import build_monitor_model, device_telemetry
from mcuprune.device.frames import FrameReader
from mcuprune.device.link import Device, DeviceError, DeviceRejected
from mcuprune.device.messages import CaptureWhich, DeviceInfo, ErrorCode, MsgType, ParamsMode, SlotState, SlotStatus
from mcuprune.device.powercut import perturbed_model
from mcuprune.device.qemu import QemuDevice
from mcuprune.device.update import check_blob_for, rollback, stream_update
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_s8
from mcuprune.target.compile import FirmwareDir, compile_run, load_firmware_dir

BOARD = "mps2-an386"


# --- host-side checks, no device ---------------------------------------------------------------

def _info(**changes: object) -> DeviceInfo:
    empty = SlotState(SlotStatus.EMPTY, 0, 0, 0, 0)
    base = dict(protocol_version=1, fw_version=(0, 1), arch_hash=0x1234, clock_hz=25_000_000, input_size=64,
                output_size=10, num_layers=6, board=BOARD, model="digits-cnn", params_mode=ParamsMode.BLOB,
                active_slot=0, slots=(SlotState(SlotStatus.VALID, 1, 100, 7, 100), empty), slot_capacity=1 << 20)
    return DeviceInfo(**{**base, **changes})


def _blob(arch: int = 0x1234) -> bytes:
    return pack_blob([np.arange(10, dtype=np.int8), np.arange(4, dtype=np.int32)], arch)


def test_host_refuses_wrong_arch_static_firmware_and_oversized_blob() -> None:
    header = parse_header(_blob())
    check_blob_for(_info(), header)  # fits
    with pytest.raises(UserError, match=r"architecture 0x00004321.*re-flash.*--update reflash"):
        check_blob_for(_info(), parse_header(_blob(arch=0x4321)))
    with pytest.raises(UserError, match=r"--params static.*--update reflash"):
        check_blob_for(_info(params_mode=ParamsMode.STATIC, slots=(), active_slot=None), header)
    with pytest.raises(UserError, match="does not fit"):
        check_blob_for(_info(slot_capacity=header.length - 1), header)


def test_malformed_blob_is_user_error_before_any_io() -> None:
    """Device(loop://) would echo requests back; the errors come before anything is written."""
    good = _blob()
    with Device("loop://", timeout=0.5) as device:
        for bad, message in [(good[:20], "shorter than"), (b"XXXX" + good[4:], "magic"),
                             (good + b"\x00", "header says"), (good[:-1] + bytes([good[-1] ^ 1]), "data CRC")]:
            with pytest.raises(UserError, match=message):
                stream_update(device, bad)
        assert device.port.in_waiting == 0  # nothing was sent


# --- the real firmware -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob_fw(digits_run: tuple, tmp_path_factory: pytest.TempPathFactory) -> FirmwareDir:
    run_dir, _ = digits_run
    fw_dir = tmp_path_factory.mktemp("blob-fw")
    compile_run(run_dir, BOARD, fw_dir, params="blob", monitor_builder=build_monitor_model)
    return load_firmware_dir(fw_dir)


@pytest.fixture(scope="module")
def models(blob_fw: FirmwareDir) -> dict:
    """blob id -> (model, blob) for the factory model and two updates of the same architecture."""
    factory = blob_fw.blob_path.read_bytes()
    out = {parse_header(factory).blob_id: (blob_fw.model, factory)}
    for factor in (0.75, 0.5):
        model = perturbed_model(blob_fw.model, factor)
        blob = blob_fw.update_blob(model, blob_fw.monitor)
        out[parse_header(blob).blob_id] = (model, blob)
    assert len(out) == 3
    return out


@pytest.fixture()
def qemu(blob_fw: FirmwareDir, tmp_path: Path) -> Iterator[QemuDevice]:
    """The blob firmware on a fresh memory file (tmp_path/slots.mem)."""
    with QemuDevice(blob_fw.board, blob_fw.elf, memory_file=tmp_path / "slots.mem") as q:
        yield q


def _inputs(fw: FirmwareDir, n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (n, *fw.model.input_shape), dtype=np.int8)


def _serves(device: Device, model_and_blob: tuple, fw: FirmwareDir) -> bool:
    """The device's active blob is this one and its logits equal the model's int8 reference exactly."""
    model, blob = model_and_blob
    x = _inputs(fw)
    got = np.stack([r.logits for r in device.infer_many(list(x))])
    return device.info().active_blob_id == parse_header(blob).blob_id and np.array_equal(got, run_s8(model, x))


def _updates(models: dict) -> list[tuple]:
    return list(models.values())[1:]


@pytest.mark.qemu
@pytest.mark.slow
def test_fresh_memory_boots_the_factory_blob_into_slot_a(qemu: QemuDevice, blob_fw: FirmwareDir,
                                                         models: dict) -> None:
    info = qemu.info()
    factory = list(models.values())[0]
    header = parse_header(factory[1])
    assert info.params_mode == ParamsMode.BLOB and info.arch_hash == blob_fw.arch_hash == header.arch_hash
    assert info.active_slot == 0 and info.slot_capacity == blob_fw.board.slots.capacity
    a, b = info.slots
    assert (a.state, a.generation, a.length, a.blob_id) == (SlotStatus.VALID, 1, header.length, header.blob_id)
    assert b.state == SlotStatus.EMPTY
    assert _serves(qemu.device, factory, blob_fw)
    assert (qemu.memory_file.stat().st_size) == blob_fw.board.slots.size  # QEMU made the file


@pytest.mark.qemu
@pytest.mark.slow
def test_stream_update_switches_bit_exact_and_survives_power_cut(qemu: QemuDevice, blob_fw: FirmwareDir,
                                                                  models: dict,
                                                                  record_property: pytest.RecordProperty) -> None:
    new = _updates(models)[0]
    seen: list[int] = []
    report = stream_update(qemu.device, new[1], progress=lambda done, total: seen.append(done))
    length = len(new[1])
    assert (report.blob_id, report.slot, report.generation) == (parse_header(new[1]).blob_id, 1, 2)
    assert report.resumed_from == HEADER_BYTES and not report.resumed and report.resends == 0
    assert report.bytes_sent == length - HEADER_BYTES and seen[-1] == length and seen == sorted(seen)
    assert _serves(qemu.device, new, blob_fw)
    assert not _serves(qemu.device, list(models.values())[0], blob_fw)
    record_property("update_bytes_per_second", round(report.bytes_per_second))
    print(f"update of {length} B in {report.seconds:.2f} s: {report.bytes_per_second:.0f} B/s over the QEMU UART, "
          f"{report.frames} frames")
    again = stream_update(qemu.device, new[1])  # already serving: nothing to send
    assert again.already_active and again.bytes_sent == 0
    qemu.kill()  # power cut after the update: the new model must come back
    qemu.start()
    assert _serves(qemu.device, new, blob_fw)
    assert qemu.info().slots[1].generation == 2


@pytest.mark.qemu
@pytest.mark.slow
def test_rollback_switches_slots_and_persists(qemu: QemuDevice, blob_fw: FirmwareDir, models: dict) -> None:
    factory, new = list(models.values())[0], _updates(models)[0]
    with pytest.raises(DeviceRejected, match="NO_ROLLBACK.*no other valid model") as info:
        rollback(qemu.device)  # only slot A holds a model
    assert info.value.code == ErrorCode.NO_ROLLBACK
    stream_update(qemu.device, new[1])
    switch = rollback(qemu.device)
    assert (switch.slot, switch.generation, switch.blob_id) == (0, 3, parse_header(factory[1]).blob_id)
    assert _serves(qemu.device, factory, blob_fw)
    qemu.kill()
    qemu.start()
    assert _serves(qemu.device, factory, blob_fw)  # the rollback survived the power cut
    assert rollback(qemu.device).generation == 4
    assert _serves(qemu.device, new, blob_fw)


@pytest.mark.qemu
@pytest.mark.slow
def test_killed_update_resumes_from_the_watermark(qemu: QemuDevice, blob_fw: FirmwareDir, models: dict) -> None:
    factory, new = list(models.values())[0], _updates(models)[0]
    length = len(new[1])

    def cut_power_halfway(done: int, total: int) -> None:
        if done > total // 2:
            qemu.signal_kill()

    with pytest.raises(DeviceError, match="lost the device|cannot write"):
        stream_update(qemu.device, new[1], progress=cut_power_halfway)
    qemu.kill()
    qemu.start()
    info = qemu.info()
    partial = info.slots[1]
    assert info.active_slot == 0 and partial.state == SlotStatus.WRITING
    assert length // 2 < partial.watermark < length and partial.blob_id == parse_header(new[1]).blob_id
    assert _serves(qemu.device, factory, blob_fw)  # the old model serves meanwhile
    report = stream_update(qemu.device, new[1])
    assert report.resumed and report.resumed_from == partial.watermark
    assert report.bytes_sent == length - partial.watermark
    assert _serves(qemu.device, new, blob_fw)


@pytest.mark.qemu
@pytest.mark.slow
def test_duplicated_reordered_and_misplaced_chunks(qemu: QemuDevice, blob_fw: FirmwareDir, models: dict) -> None:
    factory, new = list(models.values())[0], _updates(models)[0]
    blob, device = new[1], qemu.device
    length = len(blob)
    begin = device.update_begin(blob[:HEADER_BYTES])
    assert (begin.slot, begin.next_offset) == (1, HEADER_BYTES) and 1 <= begin.max_chunk <= 2044
    size = 1000
    c1, c2, c3 = (HEADER_BYTES + i * size for i in range(3))

    def chunk(offset: int, end: int | None = None) -> int:
        return device.update_chunk(offset, blob[offset : end or offset + size])

    assert chunk(c2) == HEADER_BYTES  # ahead of the watermark: written, the prefix does not grow
    assert chunk(c1) == c2  # fills the gap up to its own end
    assert chunk(c1) == c2  # duplicate: same bytes again, nothing moves
    assert chunk(c2) == c3  # re-sent from the watermark
    assert chunk(c2 + 500, c3 + 300) == c3 + 300  # overlapping the watermark moves it to the chunk's end
    for code, offset, data in [(ErrorCode.BAD_LENGTH, 0, blob[:10]), (ErrorCode.BAD_LENGTH, length - 5, bytes(10))]:
        with pytest.raises(DeviceRejected) as err:
            device.update_chunk(offset, data)
        assert err.value.code == code
    with pytest.raises(DeviceRejected, match="INCOMPLETE") as err:
        device.update_commit(parse_header(blob).blob_id)
    assert err.value.code == ErrorCode.INCOMPLETE
    assert _serves(device, factory, blob_fw)
    watermark = c3 + 300
    offsets = list(range(watermark, length, size))
    for offset in reversed(offsets):  # the rest, last chunk first: none moves the watermark but the first
        reply = chunk(offset, min(offset + size, length))
    assert reply == watermark + size  # the prefix only: the device keeps no map of what lies beyond
    for offset in offsets[1:]:  # so the host re-sends from the watermark, as stream_update does
        reply = chunk(offset, min(offset + size, length))
    assert reply == length
    with pytest.raises(DeviceRejected, match="NO_UPDATE"):
        device.update_commit(parse_header(blob).blob_id ^ 1)  # another blob id
    switch = device.update_commit(parse_header(blob).blob_id)
    assert (switch.slot, switch.generation) == (1, 2)
    assert _serves(device, new, blob_fw)
    with pytest.raises(DeviceRejected, match="NO_UPDATE"):
        chunk(c1)  # the update is closed


LAST_CHUNK = -1  # stands for the write number of the last chunk


class FaultyLine:
    """A real serial port (the QEMU socket) with a fault injector on the host's writes: chosen writes
    (one frame each) are dropped or get one byte changed, as a noisy line would."""

    def __init__(self, port: serial.SerialBase, drop: set[int], corrupt: set[int]) -> None:
        self._port, self._drop, self._corrupt, self.writes = port, drop, corrupt, 0
        self.timeout: float | None = port.timeout

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes in self._drop:
            return len(data)
        if self.writes in self._corrupt:
            data = bytearray(data)
            data[len(data) // 2] = (data[len(data) // 2] % 255) + 1  # still non-zero, different
        return self._port.write(bytes(data))

    def read(self, size: int = 1) -> bytes:
        self._port.timeout = self.timeout
        return self._port.read(size)

    def close(self) -> None:
        pass  # the QEMU device's own Device owns the socket


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize(("drop", "corrupt"), [({3}, set()), (set(), {4}), ({3, 9}, {6}), ({LAST_CHUNK}, set())],
                         ids=["drop", "corrupt", "both", "drop-last"])
def test_pipelined_update_goes_back_to_the_watermark_on_a_faulty_line(
        qemu: QemuDevice, blob_fw: FirmwareDir, models: dict, drop: set[int], corrupt: set[int]) -> None:
    """Writes: 1 INFO, 2 BEGIN, 3.. chunks. A lost or damaged chunk leaves a gap the device reports;
    a lost last chunk leaves silence (a timeout), after which the host sends again from the watermark."""
    new = _updates(models)[1]
    chunks = -(-(len(new[1]) - HEADER_BYTES) // 700)
    drop = {chunks + 2 if w == LAST_CHUNK else w for w in drop}
    line = FaultyLine(qemu.device.port, drop, corrupt)
    report = stream_update(Device(line, timeout=2.0), new[1], window=4, chunk=700)
    assert report.resends >= 1 and report.bytes_sent > len(new[1]) - HEADER_BYTES
    assert _serves(qemu.device, new, blob_fw)


@pytest.mark.qemu
@pytest.mark.slow
def test_wrong_architecture_blob_is_refused_with_reflash_message(qemu: QemuDevice, blob_fw: FirmwareDir,
                                                                 models: dict) -> None:
    factory = list(models.values())[0]
    _, arrays = parse_blob(factory[1])
    foreign = pack_blob([np.frombuffer(a, np.uint8) for a in arrays], blob_fw.arch_hash ^ 0x5A5A5A5A)
    with pytest.raises(UserError, match=r"another architecture|cannot change the architecture") as err:
        stream_update(qemu.device, foreign)
    assert "--update reflash" in str(err.value) and "\n" not in str(err.value)
    assert qemu.info().slots[1].state == SlotStatus.EMPTY  # refused on the host: no BEGIN reached the device
    with pytest.raises(DeviceRejected) as rejected:  # and the device refuses it too
        qemu.device.update_begin(foreign[:HEADER_BYTES])
    assert rejected.value.code == ErrorCode.ARCH_MISMATCH
    message = str(rejected.value)
    assert "another architecture" in message and "re-flash" in message and "--update reflash" in message
    assert _serves(qemu.device, factory, blob_fw)


@pytest.mark.qemu
@pytest.mark.slow
def test_corrupted_blob_is_refused_at_commit_and_old_model_serves(qemu: QemuDevice, blob_fw: FirmwareDir,
                                                                  models: dict) -> None:
    factory, new = list(models.values())[0], _updates(models)[0]
    damaged = bytearray(new[1])
    damaged[len(damaged) - 7] ^= 0x10  # a data byte: header and its CRC stay valid
    with pytest.raises(UserError, match="data CRC"):
        stream_update(qemu.device, bytes(damaged))  # the host checks first
    with pytest.raises(DeviceRejected, match="BAD_BLOB_CRC.*old model keeps serving") as err:
        stream_update(qemu.device, bytes(damaged), check_data=False)
    assert err.value.code == ErrorCode.BAD_BLOB_CRC
    info = qemu.info()
    assert info.active_slot == 0 and info.slots[1].state != SlotStatus.VALID
    assert _serves(qemu.device, factory, blob_fw)
    qemu.kill()
    qemu.start()
    assert _serves(qemu.device, factory, blob_fw)
    assert stream_update(qemu.device, new[1]).slot == 1  # the good blob still goes in
    assert _serves(qemu.device, new, blob_fw)


@pytest.mark.qemu
@pytest.mark.slow
def test_telemetry_and_capture_sections_on_both_inference_paths(qemu: QemuDevice, blob_fw: FirmwareDir) -> None:
    x = _inputs(blob_fw, n=6, seed=3)
    x_uint8 = (x.astype(np.int16) + 128).astype(np.uint8)
    expected = device_telemetry(blob_fw.model, blob_fw.monitor, x_uint8)
    device = qemu.device
    assert device.infer_many(list(x))[0].telemetry is None  # off after boot
    device.telemetry(1)
    reply = device.capture(CaptureWhich.INPUT, 4)
    assert (reply.which, reply.count, reply.bytes_per_capture) == (0, 4, x[0].size)
    for bulk in (False, True):
        results = qemu.infer_many(list(x), bulk=bulk)
        counts = [r.telemetry["count"] for r in results]
        assert counts == list(range(counts[0], counts[0] + len(x)))
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r.logits, run_s8(blob_fw.model, x[i : i + 1])[0])
            want = expected.record(i)
            assert {k: r.telemetry[k] for k in want if k != "count"} == {k: v for k, v in want.items() if k != "count"}
            if not bulk and i < 4:
                assert r.capture[0] == CaptureWhich.INPUT
                np.testing.assert_array_equal(r.capture[1], x[i].ravel())
            else:
                assert r.capture is None  # the capture covered the first 4 RESULTs only
    last = device.telemetry(0)
    assert last["count"] == counts[-1] and last["top1"] == results[-1].predicted
    assert device.infer_many(list(x[:1]))[0].telemetry is None


@pytest.mark.qemu
@pytest.mark.slow
def test_static_firmware_reports_mode_0_and_update_is_user_error(digits_run: tuple,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir, _ = digits_run
    fw_dir = tmp_path_factory.mktemp("static-fw")
    compile_run(run_dir, BOARD, fw_dir)
    fw = load_firmware_dir(fw_dir)
    with QemuDevice(fw.board, fw.elf) as q:
        info = q.info()
        assert info.params_mode == ParamsMode.STATIC and info.slots == () and not info.updatable
        with pytest.raises(UserError, match="--params static"):
            stream_update(q.device, _blob(arch=info.arch_hash))
        with pytest.raises(DeviceRejected, match="UNKNOWN_TYPE.*params static") as err:
            q.device.telemetry(1)
        assert err.value.offending_type == MsgType.TELEMETRY


def test_faulty_line_injector_really_damages_frames() -> None:
    """The injector's corruption makes a frame invalid (so the device-side test exercises a real fault)."""
    from mcuprune.device.frames import Frame, encode_frame

    wire = bytearray(encode_frame(Frame(MsgType.UPDATE_CHUNK, 5, struct.pack("<I", 32) + bytes(range(1, 200)))))
    wire[len(wire) // 2] = (wire[len(wire) // 2] % 255) + 1
    assert FrameReader().feed(bytes(wire)) == []
