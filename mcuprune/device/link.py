"""Talk to mcuprune firmware over a serial line: a real board or an emulator, the same way.

``Device`` speaks the frame protocol (frames.py, messages.py) over any pyserial URL or port: a real
board on /dev/ttyACM0, or QEMU's UART on socket://127.0.0.1:PORT (qemu.py starts QEMU and hands
out a ``Device`` connected to it).
"""

from __future__ import annotations

import struct
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import serial
from tqdm import tqdm

from mcuprune.codegen.signing import Signer, authorization
from mcuprune.device.frames import Frame, FrameError, FrameReader, encode_frame, max_request_payload
from mcuprune.device.messages import (
    CaptureReply,
    CaptureWhich,
    DeviceInfo,
    ErrorCode,
    InferResult,
    LabelReply,
    MsgType,
    SlotSwitch,
    UpdateBeginReply,
    pack_capture_request,
    pack_label,
    pack_telemetry_request,
    pack_update_begin,
    pack_update_chunk,
    pack_update_commit,
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
from mcuprune.errors import UserError

__all__ = ["Device", "DeviceError", "DeviceRejected", "DeviceTimeout", "InferResult"]

DEFAULT_TIMEOUT = 10.0  # seconds to wait for one reply
# Every request starts with a delimiter as well as ending with one: whatever half frame the device
# may hold (line noise, a host that reconnected mid-frame) ends there, instead of swallowing the
# request (docs/protocol.md, "Framing"). The device ignores the empty frame it makes otherwise.
LEAD = b"\x00"
MAX_FILE_BATCH = 30_000  # inputs per INFER_FILE: their seqs must not wrap onto the request's
# INFER_FILE reads only files the host offers: `*.bin` in a folder whose name starts with this
# (firmware/runtime/protocol.c offered_path), so a request from the line cannot name any other host file.
OFFER_PREFIX = "mcuprune-offer-"
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
    ErrorCode.UNSIGNED: "the device takes only signed blobs: sign it with the owner's key (--signing-key)",
    ErrorCode.WRONG_KEY: "the blob is signed with another key than the one the firmware trusts",
    ErrorCode.BAD_SIGNATURE: "the blob's signature does not verify: it was changed after signing, or forged",
    ErrorCode.OLD_COUNTER: "the blob's security counter is below the device's: it may not go back to it",
    ErrorCode.REPLAYED: "the authorization was made for another nonce (an old or replayed request)",
    ErrorCode.UNAUTHORISED: "this command needs the owner's authorization (--signing-key)",
    ErrorCode.BAD_LABEL: "the class is not one of the model's outputs (INFO's output size)",
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
        signer: Signer | None = None,
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
        self.signer = signer  # the owner's key: authorises commands on a signed device
        self._nonce: bytes | None = None  # the device's next nonce as far as we know (None: ask INFO)

    # --- public API -----------------------------------------------------------------------------

    def info(self) -> DeviceInfo:
        """Ask the device what it is (INFO). The answer is cached for infer()."""
        reply = self.request(MsgType.INFO, b"")
        try:
            self._info = unpack_info(reply.payload)
        except FrameError as exc:
            raise DeviceError(f"bad INFO reply: {exc}") from None
        self._nonce = self._info.nonce or None
        return self._info

    @property
    def can_authorise(self) -> bool:
        """Commands that need authority will go through: a development device, or our key is its key."""
        info = self._info or self.info()
        return not info.signed or (self.signer is not None and self.signer.key_id == info.key_id)

    def authorised(self, msg_type: int, payload: bytes) -> bytes:
        """`payload` with the authorization a signed device wants for `msg_type` appended (nothing
        for a development device). The nonce comes from INFO (asked for when not known) and then
        moves on as the device's does; a failed request makes us ask again."""
        info = self._info if self._info is not None and (self._nonce is not None or not self._info.signed) \
            else self.info()
        if not info.signed:
            return payload
        if self.signer is None:
            raise DeviceError(f"the device only takes {_type_name(msg_type)} authorised by its owner's key "
                              f"{info.key_id.hex()}: give the key folder (--signing-key)")
        if self.signer.key_id != info.key_id:
            raise DeviceError(f"the device trusts key {info.key_id.hex()}, not key {self.signer.key_id.hex()}: "
                              "give the key it was built with")
        nonce = self._nonce or info.nonce
        auth = authorization(self.signer, nonce, info.arch_hash, msg_type, payload)
        epoch, seq = struct.unpack("<II", nonce)
        self._nonce = struct.pack("<II", epoch, (seq + 1) & 0xFFFFFFFF)  # the device's, once it accepts
        return payload + auth

    def request_authorised(self, msg_type: int, payload: bytes, timeout: float | None = None) -> Frame:
        """request() of a command that needs authority (authorised()). A REPLAYED answer (the device
        restarted, or our nonce was stale) gets one more try with a fresh nonce from INFO."""
        for attempt in range(2):
            try:
                return self.request(msg_type, self.authorised(msg_type, payload), timeout)
            except DeviceRejected as exc:
                self._nonce = None  # whether the device moved its nonce on is unknown now
                if exc.code != ErrorCode.REPLAYED or attempt == 1:
                    raise
        raise AssertionError("unreachable")

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
                    burst += LEAD + encode_frame(Frame(MsgType.INFER, seq, payloads[next_index]),
                                                 max_request_payload(info.input_size))
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

    def label(self, sample_id: int, label: int) -> LabelReply:
        """LABEL: the true class `label` of the sample whose RESULT carried telemetry count
        `sample_id`. The device counts it if it still remembers the sample (the last 256 served since
        boot) and answers what it served and its counters since boot. Blob firmware only."""
        reply = self.request(MsgType.LABEL, pack_label(sample_id, label))
        answer = self._parse(unpack_label_reply, reply, "LABEL")
        if (answer.sample_id, answer.label) != (sample_id, label):
            raise DeviceError(f"device answered LABEL ({sample_id}, {label}) with ({answer.sample_id}, {answer.label})")
        return answer

    def update_begin(self, header: bytes) -> UpdateBeginReply:
        """UPDATE_BEGIN with a blob's 32-byte header: where to continue (32, or the watermark of an
        interrupted update of the same blob) and the largest chunk the device takes."""
        reply = self.request_authorised(MsgType.UPDATE_BEGIN, pack_update_begin(header))
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
        reply = self.request_authorised(MsgType.ROLLBACK, b"")
        return self._parse(unpack_slot_switch, reply, "ROLLBACK")

    def infer_file(self, path: Path, count: int, progress: bool = False) -> list[InferResult]:
        """INFER_FILE: the device reads `count` inputs of input_size bytes from host file `path`
        through semihosting (so only for emulators sharing our file system) and answers each with
        a RESULT over the UART. Much faster than INFER under QEMU, whose UART input is slow.
        The device opens only offered files: `*.bin` in a folder named OFFER_PREFIX... (offer_dir())."""
        info = self._info or self.info()
        encoded = str(Path(path).resolve()).encode()
        if not 0 < count <= MAX_FILE_BATCH or b"\x00" in encoded:
            raise ValueError(f"bad INFER_FILE request: count {count}, path {path}")
        payload = self.authorised(MsgType.INFER_FILE, count.to_bytes(4, "little") + encoded + b"\x00")
        seq = self.send(MsgType.INFER_FILE, payload)
        self._seq = (seq + count) & 0xFFFF  # the results use seq+1 .. seq+count
        results: list[InferResult] = []
        try:
            with tqdm(total=count, desc="device", unit="inf", disable=not progress, leave=False) as bar:
                for i in range(count):
                    item = (seq + 1 + i) & 0xFFFF
                    reply = self._wait_for({item, seq}, f"INFER_FILE result {i} (seq {item})")
                    self.check_reply(reply, MsgType.INFER)  # an ERROR for the request itself lands here too
                    results.append(self._result(reply, info))
                    bar.update(1)
            self.check_reply(self._wait_for({seq}, f"INFER_FILE seq {seq}"), MsgType.INFER_FILE)
        except DeviceRejected:
            self._nonce = None  # the authorization may or may not have been taken
            raise
        return results

    def exit(self, code: int = 0) -> None:
        """Ask the firmware to leave with semihosting exit status `code` (0..255); waits for the ack."""
        if not 0 <= code <= 255:
            raise ValueError(f"exit code {code} out of range 0..255")
        self.request_authorised(MsgType.EXIT, bytes([code]))

    def request(self, msg_type: int, payload: bytes, timeout: float | None = None) -> Frame:
        """Send one request and return its reply frame; an ERROR reply raises DeviceError."""
        seq = self.send(msg_type, payload)
        while True:
            reply = self.receive(seq, timeout)
            if not self._foreign_error(reply, msg_type):
                break
        self.check_reply(reply, msg_type)
        return reply

    def _foreign_error(self, reply: Frame, msg_type: int) -> bool:
        """An ERROR with our seq that names another message type answers a frame we did not send
        (noise that happened to carry our seq): counted as stray, not taken as our reply."""
        if reply.type != MsgType.ERROR:
            return False
        try:
            foreign = unpack_error(reply.payload).offending_type != msg_type
        except FrameError:
            return False
        self.stray_frames += foreign
        return foreign

    def send(self, msg_type: int, payload: bytes, seq: int | None = None) -> int:
        """Send one frame without waiting; returns its seq (the next one unless given)."""
        seq = self._next_seq() if seq is None else seq
        self._write(LEAD + encode_frame(Frame(msg_type, seq, payload)))
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


def offer_dir() -> tempfile.TemporaryDirectory:
    """A fresh folder for files INFER_FILE may read (OFFER_PREFIX); removed when cleaned up."""
    return tempfile.TemporaryDirectory(prefix=OFFER_PREFIX)


def _type_name(msg_type: int) -> str:
    try:
        return MsgType(msg_type).name
    except ValueError:
        return f"type 0x{msg_type:02x}"
