"""Run mcuprune firmware in qemu-system-arm and talk to it like a board.

``QemuDevice`` starts QEMU with our ELF for a board (its machine, memory map and UART come from the
board file) and hands out a ``Device`` (link.py) connected to the emulated UART. Under
`-icount shift=0` each guest instruction takes 1 ns of virtual time, so SysTick ticks convert to
instructions (Board.instructions_per_tick).
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import serial
from serial.urlhandler.protocol_socket import Serial as SocketSerial

from mcuprune.codegen.signing import Signer
from mcuprune.device.frames import printable
from mcuprune.device.link import (
    DEFAULT_TIMEOUT,
    FAULT_EXIT_CODE,
    MAX_FILE_BATCH,
    Device,
    DeviceError,
    InferResult,
    offer_dir,
)
from mcuprune.device.messages import DeviceInfo
from mcuprune.errors import UserError, require_tool
from mcuprune.target.board import Board


def _qemu_option_value(path: Path) -> str:
    """A path as a QEMU -object option value: commas are doubled (QEMU's escape)."""
    return str(Path(path).resolve()).replace(",", ",,")


class KeepInputSocket(SocketSerial):
    """pyserial's socket:// port without the input flush at the end of open().

    QEMU (`-serial tcp:...,wait=on`) starts the guest the moment it accepts our connection, which can
    be before pyserial's open() returns; its closing reset_input_buffer() would then throw away the
    boot banner. The banner is what a later timeout message quotes, and the proof a board that drops
    early input is up, so nothing received may be discarded."""

    _opening = False

    def open(self) -> None:
        self._opening = True
        try:
            super().open()
        finally:
            self._opening = False

    def reset_input_buffer(self) -> None:
        if not self._opening:
            super().reset_input_buffer()


def open_socket_port(port: int, timeout: float) -> serial.SerialBase:
    """The QEMU UART at 127.0.0.1:port as a serial port that keeps every byte received."""
    ser = KeepInputSocket(None, timeout=timeout)
    ser.port = f"socket://127.0.0.1:{port}"
    ser.open()
    return ser


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
        signer: Signer | None = None,
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
        self.signer = signer  # a signed firmware's owner key: EXIT and INFER_FILE need its authorization
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
                self._device = Device(ser, timeout=self.timeout, describe_failure=self._describe, signer=self.signer)
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
                return open_socket_port(port, self.timeout)
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
        with offer_dir() as tmp:  # the only place the firmware reads from (link.OFFER_PREFIX)
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
        if device is not None and self._proc.poll() is None and not device.broken:
            try:
                if not device.can_authorise:  # a signed firmware refuses EXIT without its owner's key
                    device.close()
                    self._kill()
                    self._status, self._proc = None, None
                    return None
                device.exit(code)
            except DeviceError:
                pass  # it shows as a wrong or missing exit status below
        if device is not None:
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
