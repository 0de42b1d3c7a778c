"""Talk to mcuprune firmware over a serial line, and run it in qemu-system-arm.

``Device`` speaks the frame protocol (mcuprune/protocol.py) over any pyserial URL or port: a real
board on /dev/ttyACM0, or QEMU's UART on socket://127.0.0.1:PORT. ``QemuDevice`` starts QEMU with
our ELF and hands out a ``Device`` connected to it. Under `-icount shift=0` each guest instruction
takes 1 ns of virtual time, so SysTick ticks convert to instructions (Board.instructions_per_tick).
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import serial
from tqdm import tqdm

from mcuprune.device.protocol import (
    CaptureReply,
    CaptureWhich,
    DeviceInfo,
    ErrorCode,
    Frame,
    FrameError,
    FrameReader,
    InferResult,
    MsgType,
    SlotSwitch,
    UpdateBeginReply,
    encode_frame,
    pack_capture_request,
    pack_telemetry_request,
    pack_update_begin,
    pack_update_chunk,
    pack_update_commit,
    printable,
    unpack_capture_reply,
    unpack_error,
    unpack_info,
    unpack_result,
    unpack_slot_switch,
    unpack_telemetry_reply,
    unpack_update_begin_reply,
    unpack_update_chunk_reply,
)
from mcuprune.errors import UserError, require_tool
from mcuprune.target.board import Board

__all__ = ["Device", "DeviceError", "DeviceRejected", "DeviceTimeout", "InferResult", "QemuDevice"]

DEFAULT_TIMEOUT = 10.0  # seconds to wait for one reply
MAX_FILE_BATCH = 30_000  # inputs per INFER_FILE: their seqs must not wrap onto the request's
FAULT_EXIT_CODE = 3  # firmware/runtime/semihost.h MCUP_EXIT_FAULT: the device crashed


class DeviceError(UserError):
    """The device answered with an ERROR, answered nonsense, or went away."""


class DeviceTimeout(DeviceError):
    """No reply in time. The message ends with the last UART output."""


class DeviceRejected(DeviceError):
    """The device answered a request with an ERROR frame; `code` is its ErrorCode (an int)."""

    def __init__(self, message: str, code: int, offending_type: int) -> None:
        super().__init__(message)
        self.code = code
        self.offending_type = offending_type


REFLASH_HINT = "re-flash the device with firmware built for the new model (`--update reflash`)"

# What an ERROR means for the user, appended to DeviceRejected messages.
ERROR_HINTS: dict[int, str] = {
    ErrorCode.UNKNOWN_TYPE: "the firmware does not know this message (a --params static build, or older firmware)",
    ErrorCode.MODEL_FAILED: "the model failed to initialize or run on the device",
    ErrorCode.ARCH_MISMATCH: "the blob is for another architecture than the firmware on the device, so it cannot be "
                             f"loaded as a parameter update: {REFLASH_HINT}",
    ErrorCode.BAD_BLOB: "the blob is malformed (header, array table or array contents); the old model keeps serving",
    ErrorCode.BAD_BLOB_CRC: "the blob's data does not match its CRC; the old model keeps serving",
    ErrorCode.NO_UPDATE: "no update of this blob is open on the device (did it restart?): begin the update again",
    ErrorCode.INCOMPLETE: "the device has not received the whole blob yet",
    ErrorCode.NO_ROLLBACK: "there is no other valid model on the device to roll back to",
}


class Device:
    """A device running mcuprune firmware, reached through pyserial.

    `port` is a pyserial URL or device name (opened with serial.serial_for_url) or an open
    serial port object. `describe_failure`, if given, adds context (e.g. QEMU's exit status) to
    error messages.
    """

    def __init__(
        self,
        port: str | serial.SerialBase,
        timeout: float = DEFAULT_TIMEOUT,
        baudrate: int = 115200,
        describe_failure: Callable[[], str] | None = None,
    ) -> None:
        if isinstance(port, str):
            try:
                port = serial.serial_for_url(port, baudrate=baudrate, timeout=timeout)
            except (serial.SerialException, ValueError) as exc:
                raise UserError(f"cannot open serial port {port}: {exc}") from None
        self._ser = port
        self.timeout = timeout
        self.reader = FrameReader()
        self._describe_failure = describe_failure
        self._inbox: deque[Frame] = deque()
        self._seq = 0
        self._info: DeviceInfo | None = None
        self.broken = False  # a timeout or disconnect happened: the state of the line is unknown
        self.stray_frames = 0  # frames whose seq matched nothing we were waiting for
        self._capture_bytes: dict[int, int] = {}  # CaptureWhich -> bytes per capture, from CAPTURE replies

    # --- public API -----------------------------------------------------------------------------

    def info(self) -> DeviceInfo:
        """Ask the device what it is (INFO). The answer is cached for infer()."""
        reply = self.request(MsgType.INFO, b"")
        try:
            self._info = unpack_info(reply.payload)
        except FrameError as exc:
            raise DeviceError(f"bad INFO reply: {exc}") from None
        return self._info

    def infer(self, x: np.ndarray) -> InferResult:
        """Run one inference on int8 input `x` (HWC, any shape with input_size elements)."""
        return self.infer_many([x], window=1)[0]

    def infer_many(
        self, xs: Iterable[np.ndarray], window: int = 8, progress: bool = False
    ) -> list[InferResult]:
        """Run inferences on every input, keeping up to `window` requests in flight so the line
        never idles between them. Results come back in input order."""
        info = self._info or self.info()
        payloads = [self._input_payload(x, info) for x in xs]
        results: list[InferResult | None] = [None] * len(payloads)
        in_flight: dict[int, int] = {}  # seq -> index into payloads
        next_index = 0
        with tqdm(total=len(payloads), desc="device", unit="inf", disable=not progress, leave=False) as bar:
            while next_index < len(payloads) or in_flight:
                burst = bytearray()
                while next_index < len(payloads) and len(in_flight) < max(1, window):
                    seq = self._next_seq()
                    burst += encode_frame(Frame(MsgType.INFER, seq, payloads[next_index]))
                    in_flight[seq] = next_index
                    next_index += 1
                if burst:
                    self._write(bytes(burst))
                oldest = next(iter(in_flight))
                reply = self._wait_for(set(in_flight), f"INFER seq {oldest}")
                index = in_flight.pop(reply.seq)
                self.check_reply(reply, MsgType.INFER)
                results[index] = self._result(reply, info)
                bar.update(1)
        return [r for r in results if r is not None]

    def telemetry(self, mode: int) -> dict:
        """TELEMETRY: switch per-RESULT telemetry on (1) or off (0); returns the record of the last
        inference (Telemetry.record()'s keys). Blob firmware only."""
        reply = self.request(MsgType.TELEMETRY, pack_telemetry_request(int(mode)))
        got_mode, record = self._parse(unpack_telemetry_reply, reply, "TELEMETRY")
        if got_mode != int(mode):
            raise DeviceError(f"device answered TELEMETRY mode {mode} with mode {got_mode}")
        return record

    def capture(self, which: int, count: int) -> CaptureReply:
        """CAPTURE: the next `count` RESULTs carry the input (which=0) or the penultimate
        activations (which=1) in their capture section. Blob firmware only."""
        reply = self.request(MsgType.CAPTURE, pack_capture_request(which, count))
        answer = self._parse(unpack_capture_reply, reply, "CAPTURE")
        if (answer.which, answer.count) != (which, count):
            raise DeviceError(f"device answered CAPTURE ({which}, {count}) with ({answer.which}, {answer.count})")
        if which == CaptureWhich.INPUT and self._info is not None and answer.bytes_per_capture != self._info.input_size:
            raise DeviceError(f"device captures {answer.bytes_per_capture}-byte inputs, INFO says "
                              f"{self._info.input_size}")
        self._capture_bytes[answer.which] = answer.bytes_per_capture
        return answer

    def update_begin(self, header: bytes) -> UpdateBeginReply:
        """UPDATE_BEGIN with a blob's 32-byte header: where to continue (32, or the watermark of an
        interrupted update of the same blob) and the largest chunk the device takes."""
        reply = self.request(MsgType.UPDATE_BEGIN, pack_update_begin(header))
        return self._parse(unpack_update_begin_reply, reply, "UPDATE_BEGIN")

    def update_chunk(self, offset: int, data: bytes) -> int:
        """UPDATE_CHUNK: `data` at blob offset `offset`; returns the device's watermark."""
        reply = self.request(MsgType.UPDATE_CHUNK, pack_update_chunk(offset, data))
        return self._parse(unpack_update_chunk_reply, reply, "UPDATE_CHUNK")

    def update_commit(self, blob_id: int) -> SlotSwitch:
        """UPDATE_COMMIT: verify the received blob and switch to it."""
        reply = self.request(MsgType.UPDATE_COMMIT, pack_update_commit(blob_id))
        return self._parse(unpack_slot_switch, reply, "UPDATE_COMMIT")

    def rollback(self) -> SlotSwitch:
        """ROLLBACK: serve the other slot's blob again (if it is valid)."""
        reply = self.request(MsgType.ROLLBACK, b"")
        return self._parse(unpack_slot_switch, reply, "ROLLBACK")

    def infer_file(self, path: Path, count: int, progress: bool = False) -> list[InferResult]:
        """INFER_FILE: the device reads `count` inputs of input_size bytes from host file `path`
        through semihosting (so only for emulators sharing our file system) and answers each with
        a RESULT over the UART. Much faster than INFER under QEMU, whose UART input is slow."""
        info = self._info or self.info()
        encoded = str(Path(path).resolve()).encode()
        if not 0 < count <= MAX_FILE_BATCH or b"\x00" in encoded:
            raise ValueError(f"bad INFER_FILE request: count {count}, path {path}")
        seq = self.send(MsgType.INFER_FILE, count.to_bytes(4, "little") + encoded + b"\x00")
        self._seq = (seq + count) & 0xFFFF  # the results use seq+1 .. seq+count
        results: list[InferResult] = []
        with tqdm(total=count, desc="device", unit="inf", disable=not progress, leave=False) as bar:
            for i in range(count):
                item = (seq + 1 + i) & 0xFFFF
                reply = self._wait_for({item, seq}, f"INFER_FILE result {i} (seq {item})")
                self.check_reply(reply, MsgType.INFER)  # an ERROR for the request itself lands here too
                results.append(self._result(reply, info))
                bar.update(1)
        self.check_reply(self._wait_for({seq}, f"INFER_FILE seq {seq}"), MsgType.INFER_FILE)
        return results

    def exit(self, code: int = 0) -> None:
        """Ask the firmware to leave with semihosting exit status `code` (0..255); waits for the ack."""
        if not 0 <= code <= 255:
            raise ValueError(f"exit code {code} out of range 0..255")
        self.request(MsgType.EXIT, bytes([code]))

    def request(self, msg_type: int, payload: bytes, timeout: float | None = None) -> Frame:
        """Send one request and return its reply frame; an ERROR reply raises DeviceError."""
        seq = self.send(msg_type, payload)
        reply = self.receive(seq, timeout)
        self.check_reply(reply, msg_type)
        return reply

    def send(self, msg_type: int, payload: bytes, seq: int | None = None) -> int:
        """Send one frame without waiting; returns its seq (the next one unless given)."""
        seq = self._next_seq() if seq is None else seq
        self._write(encode_frame(Frame(msg_type, seq, payload)))
        return seq

    def receive(self, seq: int, timeout: float | None = None) -> Frame:
        """The next frame carrying `seq`, whatever its type (ERROR included)."""
        return self._wait_for({seq}, f"reply to seq {seq}", timeout)

    def receive_any(self, seqs: set[int], what: str, timeout: float | None = None) -> Frame:
        """The next frame whose seq is in `seqs` (for pipelined requests); frames for other seqs are
        counted in stray_frames and dropped. `what` names the wait in a timeout message."""
        return self._wait_for(set(seqs), what, timeout)

    def write_raw(self, data: bytes) -> None:
        """Send bytes as they are (tests use this to put garbage on the line)."""
        self._write(data)

    @property
    def port(self) -> serial.SerialBase:
        """The open serial port this Device talks through."""
        return self._ser

    def last_output(self, limit: int = 200) -> str:
        """Recent UART output that was not a frame (banner, fault lines), printable and bounded."""
        return self.reader.last_output(limit)

    def close(self) -> None:
        self._ser.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    @staticmethod
    def _input_payload(x: np.ndarray, info: DeviceInfo) -> bytes:
        x = np.asarray(x)
        if x.dtype != np.int8:
            raise UserError(f"device input must be int8, got {x.dtype}")
        if x.size != info.input_size:
            raise UserError(f"device input has {x.size} elements, model {info.model!r} takes "
                            f"{info.input_size}")
        return np.ascontiguousarray(x).tobytes()

    def check_reply(self, reply: Frame, msg_type: int) -> None:
        """DeviceRejected if `reply` is an ERROR, DeviceError if it is not `msg_type`'s reply."""
        if reply.type == MsgType.ERROR:
            try:
                err = unpack_error(reply.payload)
            except FrameError:
                raise DeviceError(f"device rejected {_type_name(msg_type)} seq {reply.seq}: "
                                  f"malformed ERROR {reply.payload.hex()}") from None
            hint = ERROR_HINTS.get(err.code)
            raise DeviceRejected(f"device rejected {_type_name(msg_type)} seq {reply.seq}: {err.describe()}"
                                 + (f" ({hint})" if hint else ""), err.code, err.offending_type)
        if reply.type == msg_type:  # our own request came back: a loopback, or an echoing terminal
            raise DeviceError(f"the line echoes our {_type_name(msg_type)} request back instead of answering it: "
                              "is this port a loopback or an echoing terminal rather than the board's UART?")
        if reply.type != msg_type | 0x80:
            raise DeviceError(f"device answered {_type_name(msg_type)} seq {reply.seq} "
                              f"with type 0x{reply.type:02x}")

    @staticmethod
    def _parse(unpack: Callable, reply: Frame, what: str):  # noqa: ANN205 - returns what `unpack` returns
        try:
            return unpack(reply.payload)
        except FrameError as exc:
            raise DeviceError(f"bad {what} reply: {exc}") from None

    def _result(self, reply: Frame, info: DeviceInfo) -> InferResult:
        try:
            result = unpack_result(reply.payload, info.output_size, info.num_layers)
        except FrameError as exc:
            raise DeviceError(f"bad RESULT reply: {exc}") from None
        if result.capture is not None:
            which, tensor = result.capture
            expected = info.input_size if which == CaptureWhich.INPUT else self._capture_bytes.get(which)
            if expected is not None and tensor.size != expected:
                raise DeviceError(f"RESULT seq {reply.seq} captured {tensor.size} bytes of "
                                  f"{CaptureWhich(which).name.lower()}, expected {expected}")
        return result

    def _write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
        except (serial.SerialException, OSError) as exc:
            self.broken = True
            raise DeviceError(f"cannot write to device: {exc}{self._context()}") from None

    def _wait_for(self, seqs: set[int], what: str, timeout: float | None = None) -> Frame:
        """The next received frame whose seq is in `seqs`; other frames are counted as stray."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            while self._inbox:
                frame = self._inbox.popleft()
                if frame.seq in seqs:
                    return frame
                self.stray_frames += 1
            self._inbox.extend(self.reader.feed(self._read_some(deadline, what, limit)))

    def _read_some(self, deadline: float, what: str, limit: float) -> bytes:
        remaining = deadline - time.monotonic()
        try:
            if remaining > 0:
                self._ser.timeout = remaining
                data = self._ser.read(1)  # block for the first byte ...
                if data:
                    self._ser.timeout = 0
                    data += self._ser.read(65536)  # ... then take whatever else is there
                    return data
        except (serial.SerialException, OSError) as exc:
            self.broken = True
            raise DeviceError(f"lost the device while waiting for {what} ({exc}){self._context()}; "
                              f"last UART output: {self.last_output()}") from None
        self.broken = True
        raise DeviceTimeout(f"no reply within {limit:.1f} s to {what}{self._context()}; "
                            f"last UART output: {self.last_output()}")

    def _context(self) -> str:
        return f"; {self._describe_failure()}" if self._describe_failure else ""


def _type_name(msg_type: int) -> str:
    try:
        return MsgType(msg_type).name
    except ValueError:
        return f"type 0x{msg_type:02x}"


def _qemu_option_value(path: Path) -> str:
    """A path as a QEMU -object option value: commas are doubled (QEMU's escape)."""
    return str(Path(path).resolve()).replace(",", ",,")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QemuDevice:
    """qemu-system-arm running `elf` on `board`, its UART0 on a local TCP socket.

        with QemuDevice(board, elf) as qemu:
            print(qemu.info())          # or qemu.device.info(): the same Device

    QEMU starts with `-serial tcp:...,server=on,wait=on`, so the guest only runs once we are
    connected and no output is lost. close() (also on leaving the `with`) sends EXIT and waits for
    QEMU's exit status (killing it after `exit_timeout`); an unexpected status raises DeviceError
    with QEMU's stderr.

    With `memory_file`, the machine's RAM (the memory holding the board's
    `[slots]`) is that file, mapped shared: every guest store lands in it, so it survives kill(),
    the power cut, and a later start() on the same file boots from what was stored. QEMU creates
    the file (zero-filled: no valid slots) if it does not exist.
    """

    def __init__(
        self,
        board: Board,
        elf: Path,
        timeout: float = DEFAULT_TIMEOUT,
        exit_timeout: float = 5.0,
        extra_args: Sequence[str] = (),
        memory_file: Path | None = None,
    ) -> None:
        if board.qemu_machine is None:
            raise UserError(f"board {board.name} has no [qemu] machine: it cannot be emulated")
        self.memory_file = None if memory_file is None else Path(memory_file)
        if self.memory_file is not None and getattr(board, "slots", None) is None:
            raise UserError(f"board {board.name} has no [slots] table: it has no persistent memory to put in a file")
        self.elf = Path(elf)
        if not self.elf.is_file():
            raise UserError(f"firmware {self.elf} does not exist: build it first")
        self.board = board
        self.timeout = timeout
        self.exit_timeout = exit_timeout
        self.extra_args = tuple(extra_args)
        self._qemu = require_tool("qemu-system-arm", "qemu-system-arm")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # QEMU's stdout+stderr; a file, so QEMU never blocks on it
        self._device: Device | None = None
        self._status: int | None = None  # QEMU's exit status once it has exited
        self.port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        machine = [str(self.board.qemu_machine)]
        if self.memory_file is not None:
            machine = [f"{self.board.qemu_machine},memory-backend=mem", "-object",
                       f"memory-backend-file,id=mem,size={self.board.slots.size},"
                       f"mem-path={_qemu_option_value(self.memory_file)},share=on"]
        return [
            self._qemu, "-M", *machine, "-display", "none", "-monitor", "none",
            "-kernel", str(self.elf), "-semihosting-config", "enable=on,target=native",
            "-icount", "shift=0", "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> Device:
        """Launch QEMU and connect to its UART; returns the Device."""
        if self._device is not None:
            return self._device
        for _attempt in range(3):  # the free port can be taken between our probe and QEMU's bind
            self.port = _free_port()
            self._proc = subprocess.Popen(self.command(self.port), stdin=subprocess.DEVNULL,
                                          stdout=self._log, stderr=subprocess.STDOUT)
            ser = self._connect(self.port)
            if ser is not None:
                self._device = Device(ser, timeout=self.timeout, describe_failure=self._describe)
                if self.board.qemu_wait_for_banner:
                    self._await_banner(self._device)
                return self._device
            if "in use" not in self.stderr():
                break
        code = self._proc.returncode if self._proc else None
        raise UserError(f"qemu-system-arm exited with code {code} before accepting the UART connection: "
                        f"{printable(self.stderr().encode(), 300)}")

    def _await_banner(self, device: Device) -> None:
        """Read until the firmware's first UART chunk (the boot banner, ended by 0x00) has arrived.

        For boards whose file says `[qemu] wait_for_banner = true`: some QEMU UART models accept and
        drop bytes that arrive before the firmware has enabled the receiver (QEMU's STM32 USART),
        so nothing may be sent before the firmware has said it is up. The banner stays available
        through last_output()."""
        deadline = time.monotonic() + self.timeout
        chunks_before = device.reader.dropped  # the banner is not a frame: it counts as dropped
        while device.reader.dropped == chunks_before:
            device._inbox.extend(device.reader.feed(device._read_some(deadline, "the boot banner", self.timeout)))

    def _connect(self, port: int, limit: float = 10.0) -> serial.SerialBase | None:
        """Open socket://127.0.0.1:port once QEMU listens; None if QEMU exited first."""
        assert self._proc is not None
        deadline = time.monotonic() + limit
        while True:
            if self._proc.poll() is not None:
                return None
            try:
                # pyserial's open() drops input already waiting; the guest has not run yet then.
                return serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=self.timeout)
            except serial.SerialException:
                if time.monotonic() > deadline:
                    self._kill()
                    err = printable(self.stderr().encode(), 300)
                    raise UserError(f"qemu-system-arm did not open its UART socket on port {port} "
                                    f"within {limit:.0f} s: {err}") from None
                time.sleep(0.02)

    # The Device's API, so a QemuDevice can be used where a Device is expected.
    def info(self) -> DeviceInfo:
        return self.device.info()

    def infer(self, x: np.ndarray) -> InferResult:
        return self.device.infer(x)

    def infer_many(
        self, xs: Iterable[np.ndarray], window: int = 8, progress: bool = False, bulk: bool = False
    ) -> list[InferResult]:
        """Like Device.infer_many (inputs over the UART). With `bulk`, inputs travel through a
        temporary file and semihosting (INFER_FILE) instead: same firmware, same results, and not
        limited by QEMU's one-byte-per-main-loop UART model (~25 kB/s). Emulator/debugger only."""
        if not bulk:
            return self.device.infer_many(xs, window=window, progress=progress)
        device = self.device
        info = device._info or device.info()
        payloads = [device._input_payload(x, info) for x in xs]
        results: list[InferResult] = []
        with tempfile.TemporaryDirectory(prefix="mcuprune-inputs-") as tmp:
            path = Path(tmp) / "inputs.bin"
            for start in range(0, len(payloads), MAX_FILE_BATCH):
                batch = payloads[start : start + MAX_FILE_BATCH]
                path.write_bytes(b"".join(batch))
                results += device.infer_file(path, len(batch), progress=progress)
        return results

    @property
    def device(self) -> Device:
        if self._device is None:
            raise RuntimeError("QemuDevice not started: use it as a context manager or call start()")
        return self._device

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status; None while it runs or if it had to be killed."""
        return self._status if self._proc is None else self._proc.poll()

    def close(self, code: int = 0, check: bool = True) -> int | None:
        """Ask the firmware to exit with `code`, wait for QEMU, kill it if it hangs.

        Returns QEMU's exit status (None if it had to be killed). With `check`, a status other than
        `code` raises DeviceError, unless the device had already failed (timeout, disconnect).
        """
        if self._proc is None:
            return None
        device, self._device = self._device, None
        failed_before = device is None or device.broken
        if device is not None:
            if self._proc.poll() is None and not device.broken:
                try:
                    device.exit(code)
                except DeviceError:
                    pass  # it shows as a wrong or missing exit status below
            device.close()
        killed = False
        try:
            self._proc.wait(timeout=self.exit_timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            killed = True
        status = None if killed else self._proc.returncode
        self._status, self._proc = status, None
        if check and not failed_before and status != code:
            how = f"had to be killed after {self.exit_timeout:.0f} s" if killed else f"exited with {status}"
            raise DeviceError(f"qemu-system-arm {how}, expected exit status {code}: "
                              f"{printable(self.stderr().encode(), 300) or 'no stderr'}")
        return status

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def kill(self) -> None:
        """Power cut: SIGKILL QEMU at once (the guest stops between two instructions), drop the
        connection. start() afterwards boots the same ELF again, on the same memory file if any."""
        if self._proc is not None:
            self._kill()
        device, self._device = self._device, None
        if device is not None:
            device.broken = True
            device.close()
        self._status, self._proc = None, None

    def signal_kill(self) -> None:
        """Only the SIGKILL of kill(), safe to call from another thread (a power-cut timer) while this
        one talks to the device: that thread then sees the connection drop (DeviceError) and should
        call kill() to clean up before start()."""
        proc = self._proc
        if proc is not None:
            proc.kill()  # SIGKILL; Popen skips it if the process has already been reaped

    def __enter__(self) -> QemuDevice:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # With an exception already on its way, just clean up: don't mask it with a second error.
        self.close(check=exc_type is None)
        self._log.close()

    # --- diagnostics ----------------------------------------------------------------------------

    def stderr(self) -> str:
        """QEMU's output so far, without its 'waiting for connection' notice."""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace")
        self._log.seek(0, 2)
        return "\n".join(line for line in text.splitlines() if "QEMU waiting for connection" not in line)

    def _describe(self) -> str:
        """QEMU's status for Device error messages."""
        if self._proc is None:
            return "QEMU not running"
        try:
            code = self._proc.wait(timeout=0.5)  # a dropped socket usually means QEMU is exiting
        except subprocess.TimeoutExpired:
            return "QEMU still running"
        meaning = " (firmware fault)" if code == FAULT_EXIT_CODE else ""
        err = printable(self.stderr().encode(), 200)
        return f"QEMU exited with status {code}{meaning}" + (f", stderr: {err}" if err else "")

    def instructions(self, ticks: int | np.ndarray) -> float | np.ndarray:
        """SysTick ticks -> guest instructions (exact under -icount shift=0, up to one tick)."""
        return ticks * self.board.instructions_per_tick
