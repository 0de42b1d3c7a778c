"""Stream a model blob into an updatable (`--params blob`) firmware: UPDATE_BEGIN, pipelined
UPDATE_CHUNKs, UPDATE_COMMIT, then INFO to confirm (docs/protocol.md, "Update").

The device writes the inactive slot and switches only at the commit, so an interrupted update
(lost line, power cut) leaves the old model serving; beginning the same blob again resumes from the
device's watermark. Chunks are offset-addressed and idempotent, so the host keeps `window` of them
in flight and, when a reply shows the watermark behind what was sent (a chunk was lost or
rejected) or the replies stop coming (once), goes back to the watermark and sends on from there.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mcuprune.codegen.blob import HEADER_BYTES, BlobError, BlobHeader, parse_blob, parse_header
from mcuprune.codegen.signing import Signer, sign_blob, signature_of
from mcuprune.device.frames import Frame, FrameError
from mcuprune.device.link import REFLASH_HINT, Device, DeviceError, DeviceRejected, DeviceTimeout
from mcuprune.device.messages import (
    MAX_CHUNK_DATA,
    DeviceInfo,
    ErrorCode,
    MsgType,
    SlotSwitch,
    pack_update_chunk,
    unpack_update_chunk_reply,
)
from mcuprune.errors import UserError

__all__ = ["Progress", "UpdateReport", "Updater", "check_blob_for", "rollback", "stream_update"]

DEFAULT_WINDOW = 4
Progress = Callable[[int, int], None]  # (bytes the device holds, blob length)


@dataclass(frozen=True)
class UpdateReport:
    blob_id: int
    blob_bytes: int  # the blob's length
    bytes_sent: int  # chunk data bytes put on the line, re-sends included
    frames: int  # request frames sent: BEGIN, chunks, COMMIT, INFO
    seconds: float  # BEGIN to confirming INFO
    resumed_from: int  # where BEGIN said to continue: 32 for a fresh update
    resends: int  # times the host went back to the device's watermark
    slot: int  # the slot now serving
    generation: int
    already_active: bool = False  # the blob was serving already: nothing was sent

    @property
    def resumed(self) -> bool:
        return self.resumed_from > HEADER_BYTES

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_sent / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "blob_id": f"0x{self.blob_id:08x}", "blob_bytes": self.blob_bytes, "bytes_sent": self.bytes_sent,
            "frames": self.frames, "seconds": round(self.seconds, 4), "resumed_from": self.resumed_from,
            "resends": self.resends, "slot": self.slot, "generation": self.generation,
            "already_active": self.already_active, "bytes_per_second": round(self.bytes_per_second, 1),
        }  # fmt: skip


def _header(blob: bytes, check_data: bool) -> BlobHeader:
    try:
        if check_data:
            return parse_blob(blob)[0]
        header = parse_header(blob)
    except BlobError as exc:
        raise UserError(f"not a valid model blob: {exc}") from None
    if len(blob) != header.length:
        raise UserError(f"not a valid model blob: it is {len(blob)} bytes, its header says {header.length}")
    return header


def check_blob_for(info: DeviceInfo, header: BlobHeader) -> None:
    """UserError unless the device described by `info` can take the blob as a parameter update."""
    if not info.updatable:
        raise UserError(f"the firmware on the device (model {info.model!r}) was built with --params static and "
                        f"takes no parameter updates: {REFLASH_HINT}, or compile with --params blob")
    if header.arch_hash != info.arch_hash:
        raise UserError(f"the blob is for architecture 0x{header.arch_hash:08x}, the firmware on the device is "
                        f"0x{info.arch_hash:08x}: a parameter update cannot change the architecture, {REFLASH_HINT}")
    if header.length > info.slot_capacity:
        raise UserError(f"the blob ({header.length:,} B) does not fit the device's {info.slot_capacity:,}-byte slots")


class Updater:
    """One update of `blob` on `device`; run() does it. The attributes say how far it got, also after
    run() raised (the power-cut trials read them): `commit_sent` is set just before the COMMIT frame
    is written, `commit_acked` once its reply is in."""

    def __init__(self, device: Device, blob: bytes, window: int = DEFAULT_WINDOW, chunk: int | None = None,
                 progress: Progress | None = None, check_data: bool = True,
                 on_commit: Callable[[], None] | None = None, signer: Signer | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if chunk is not None and not 1 <= chunk <= MAX_CHUNK_DATA:
            raise ValueError(f"chunk must be 1..{MAX_CHUNK_DATA} bytes, got {chunk}")
        self.device = device
        if signer is not None and device.signer is None:
            device.signer = signer  # UPDATE_BEGIN needs the owner's authorization on a signed device
        self.signer = signer or device.signer
        self.check_data = check_data
        self.blob = bytes(blob)
        self.header = _header(self.blob, check_data)
        self.window = window
        self.chunk = chunk
        self.progress = progress
        self.on_commit = on_commit
        self.watermark = 0  # the device's, as last reported
        self.resumed_from = 0
        self.bytes_sent = 0
        self.frames = 0
        self.resends = 0
        self.begun = False
        self.commit_sent = False
        self.commit_acked = False
        self._stuck, self._last_go_back = 0, -1
        self.times: dict[str, float] = {}  # time.monotonic() at "begin", "commit_sent", "commit_acked", "done"

    def run(self) -> UpdateReport:
        device, header = self.device, self.header
        info = device.info()
        check_blob_for(info, header)
        if info.signed:
            self._signed_for(info)
            header = self.header
        # A signed device serves only blobs whose signature by its key it verified, so its blob id
        # can be believed; a development build believes anything, and so does this check there.
        if info.active_blob_id == header.blob_id and (not info.signed or self.signer is not None):
            active = info.active
            assert active is not None and info.active_slot is not None
            return UpdateReport(header.blob_id, header.length, 0, 1, 0.0, header.length, 0, info.active_slot,
                                active.generation, already_active=True)
        start = self.times["begin"] = time.monotonic()
        begin = device.update_begin(self.blob[:HEADER_BYTES])
        self.begun = True
        self.frames += 1
        if begin.next_offset > header.length:
            raise DeviceError(f"device resumes the {header.length}-byte blob at offset {begin.next_offset}")
        self.resumed_from = self.watermark = begin.next_offset
        size = min(self.chunk or begin.max_chunk, begin.max_chunk)
        self._stream(size)
        self.commit_sent = True
        self.times["commit_sent"] = time.monotonic()
        if self.on_commit is not None:
            self.on_commit()
        switch = device.update_commit(header.blob_id)
        self.frames += 1
        self.commit_acked = True
        self.times["commit_acked"] = time.monotonic()
        self._confirm(switch)
        self.times["done"] = time.monotonic()
        seconds = self.times["done"] - start
        return UpdateReport(header.blob_id, header.length, self.bytes_sent, self.frames, seconds,
                            self.resumed_from, self.resends, switch.slot, switch.generation)

    def _signed_for(self, info: DeviceInfo) -> None:
        """A signed device takes only blobs signed with its key, at or above its security counter:
        sign an unsigned blob with our key, refuse what the device would refuse before sending it
        (unless check_data is off: tests send such blobs as they are, to see the device refuse them)."""
        sig = signature_of(self.blob)
        if sig is None and self.signer is not None and self.check_data:
            self.blob = sign_blob(self.blob, self.signer, max(self.signer.counter, info.security_counter))
            self.header, sig = _header(self.blob, False), signature_of(self.blob)
        if not self.check_data:
            return
        if sig is None:
            raise UserError(f"the device only takes blobs signed with key {info.key_id.hex()}: give the key "
                            "folder (--signing-key)")
        if sig.key_id != info.key_id:
            raise UserError(f"the blob is signed with key {sig.key_id.hex()}, the device trusts "
                            f"{info.key_id.hex()}")
        if sig.counter < info.security_counter:
            raise UserError(f"the blob's security counter {sig.counter} is below the device's "
                            f"{info.security_counter}: it would be refused")

    def _stream(self, size: int) -> None:
        """UPDATE_CHUNKs from the watermark to the end, up to `window` in flight (go-back-N)."""
        device, length = self.device, self.header.length
        in_flight: OrderedDict[int, tuple[int, bool]] = OrderedDict()  # seq -> (chunk end, stale)
        next_offset = self.watermark
        timed_out = False
        while self.watermark < length:
            while next_offset < length and len(in_flight) < self.window:
                end = min(next_offset + size, length)
                seq = device.send(MsgType.UPDATE_CHUNK, pack_update_chunk(next_offset, self.blob[next_offset:end]))
                in_flight[seq] = (end, False)
                self.bytes_sent += end - next_offset
                self.frames += 1
                next_offset = end
            if not in_flight:  # all sent and answered, yet the watermark is short: another round
                next_offset = self._go_back()
                continue
            try:
                reply = device.receive_any(set(in_flight), f"UPDATE_CHUNK replies ({len(in_flight)} in flight)")
            except DeviceTimeout:
                # The frames still in flight were lost (a chunk damaged beyond its seq, a dropped
                # reply): send again from the watermark, once; a second silence in a row is fatal.
                if timed_out:
                    raise
                timed_out = True
                in_flight.clear()
                device.broken = False  # the retry tells whether the line still works
                next_offset = self._go_back()
                continue
            timed_out = False
            for seq in list(in_flight):  # the device answers in order: earlier seqs were lost on the line
                if seq == reply.seq:
                    break
                del in_flight[seq]
            end, stale = in_flight.pop(reply.seq)
            watermark = self._chunk_watermark(reply)
            if watermark is not None:
                if watermark > length:
                    raise DeviceError(f"device reports watermark {watermark} beyond the {length}-byte blob")
                self.watermark = max(self.watermark, watermark)
                if self.progress is not None:
                    self.progress(self.watermark, length)
            if (watermark is None or watermark < end) and not stale and next_offset > self.watermark:
                # A gap (a chunk lost or damaged on the way): go back to the watermark. Replies to the
                # chunks still in flight are stale: they may move the watermark but cause no second go-back.
                next_offset = self._go_back()
                for seq, (e, _) in in_flight.items():
                    in_flight[seq] = (e, True)

    def _go_back(self) -> int:
        """Count a re-send from the watermark; give up if the watermark has not moved in 4 of them."""
        self._stuck = self._stuck + 1 if self.watermark == self._last_go_back else 0
        if self._stuck > 3:
            raise DeviceError(f"the device's watermark stays at {self.watermark} of {self.header.length} bytes "
                              "however often the data is sent")
        self._last_go_back = self.watermark
        self.resends += 1
        return self.watermark

    def _chunk_watermark(self, reply: Frame) -> int | None:
        """The watermark from a chunk reply; None for an ERROR that a re-send can fix (the line
        corrupted the chunk); other errors raise."""
        if reply.type == MsgType.ERROR:
            try:
                self.device.check_reply(reply, MsgType.UPDATE_CHUNK)
            except DeviceRejected as exc:
                if exc.code in (ErrorCode.BAD_CRC, ErrorCode.BAD_LENGTH, ErrorCode.TOO_LONG):  # damaged on the way
                    return None
                raise
        self.device.check_reply(reply, MsgType.UPDATE_CHUNK)
        try:
            return unpack_update_chunk_reply(reply.payload)
        except FrameError as exc:
            raise DeviceError(f"bad UPDATE_CHUNK reply: {exc}") from None

    def _confirm(self, switch: SlotSwitch) -> None:
        if switch.blob_id != self.header.blob_id:
            raise DeviceError(f"device committed blob 0x{switch.blob_id:08x}, expected 0x{self.header.blob_id:08x}")
        info = self.device.info()
        self.frames += 1
        if info.active_slot != switch.slot or info.active_blob_id != self.header.blob_id:
            served = "none" if info.active_blob_id is None else f"0x{info.active_blob_id:08x}"
            raise DeviceError(f"after the commit INFO says slot {info.active_slot} with blob {served} is active, "
                              f"expected slot {switch.slot} with blob 0x{self.header.blob_id:08x}")


def stream_update(device: Device, blob: bytes, window: int = DEFAULT_WINDOW, chunk: int | None = None,
                  progress: Progress | None = None, check_data: bool = True,
                  signer: Signer | None = None) -> UpdateReport:
    """Send `blob` to `device` and switch to it; see the module docstring.

    Before anything is sent: the blob is checked (header, and with `check_data` its data CRC and
    array table) and compared with INFO (params mode, architecture hash, slot capacity), each
    failure a UserError. `chunk` defaults to the largest the device takes (from the BEGIN reply);
    `progress(done, total)` is called as the device's watermark moves. Tests pass
    `check_data=False` to exercise the device's own checks with a corrupted blob.
    A signed device (INFO) needs `signer` (or device.signer), the owner's key: it authorises the
    UPDATE_BEGIN and signs an unsigned blob.
    """
    return Updater(device, blob, window, chunk, progress, check_data, signer=signer).run()


def rollback(device: Device, signer: Signer | None = None) -> SlotSwitch:
    """Make the device serve its other slot's blob again (ROLLBACK), confirmed with INFO. A signed
    device needs `signer` (or device.signer) to authorise it."""
    if signer is not None:
        device.signer = signer
    info = device.info()
    if not info.updatable:
        raise UserError(f"the firmware on the device (model {info.model!r}) was built with --params static: "
                        "it has no second slot to roll back to")
    switch = device.rollback()
    after = device.info()
    if after.active_slot != switch.slot or after.active_blob_id != switch.blob_id:
        raise DeviceError(f"after ROLLBACK INFO says slot {after.active_slot} is active, expected {switch.slot}")
    return switch
