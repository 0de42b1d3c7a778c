"""Signed updates and authorised commands (issue 12) on the real --params blob firmware in QEMU,
built with `--signing-key`: only blobs signed by the owner install; a blob signed with another key,
one with a payload bit flipped and its CRCs recomputed, a replayed authorization, a lower security
counter and an unsigned blob are each refused with their own error while the previous model keeps
serving (its logits checked against the int8 reference); EXIT, ROLLBACK, UPDATE_BEGIN and INFER_FILE
without the owner's authorization are refused; the security counter survives a power cut."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mcuprune.codegen.blob import HEADER_BYTES, parse_header
from mcuprune.codegen.signing import TRAILER_BYTES, authorization, generate_keys, load_signer, sign_blob
from mcuprune.controller.drift_qsae import build_monitor_model
from mcuprune.device.link import Device, DeviceRejected, offer_dir
from mcuprune.device.messages import ErrorCode, MsgType, SlotStatus
from mcuprune.device.powercut import perturbed_model, run_powercut_trials
from mcuprune.device.qemu import QemuDevice
from mcuprune.device.update import rollback, stream_update
from mcuprune.model.interpreter import run_s8
from mcuprune.target.compile import FirmwareDir, compile_run, load_firmware_dir

BOARD = "mps2-an386"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("owner-keys")
    generate_keys(folder / "owner")
    generate_keys(folder / "other")
    return {"dir": folder / "owner", "owner": load_signer(folder / "owner"), "other": load_signer(folder / "other")}


@pytest.fixture(scope="module")
def signed_fw(digits_run: tuple, keys: dict, tmp_path_factory: pytest.TempPathFactory) -> FirmwareDir:
    run_dir, _ = digits_run
    fw_dir = tmp_path_factory.mktemp("signed-fw")
    compile_run(run_dir, BOARD, fw_dir, params="blob", monitor_builder=build_monitor_model, signing_key=keys["dir"])
    return load_firmware_dir(fw_dir)


@pytest.fixture(scope="module")
def updates(signed_fw: FirmwareDir) -> list:
    """Two models of the firmware's architecture with other parameters (unsigned blobs)."""
    return [(m, signed_fw.update_blob(m, signed_fw.monitor))
            for m in (perturbed_model(signed_fw.model, 0.75), perturbed_model(signed_fw.model, 0.5))]


@pytest.fixture()
def qemu(signed_fw: FirmwareDir, keys: dict, tmp_path: Path) -> Iterator[QemuDevice]:
    with QemuDevice(signed_fw.board, signed_fw.elf, memory_file=tmp_path / "slots.mem", signer=keys["owner"]) as q:
        yield q


def _serves(device: Device, model, fw: FirmwareDir, blob_id: int) -> bool:
    """The device's active blob is `blob_id` and its logits are the model's int8 reference exactly."""
    x = np.random.default_rng(0).integers(-128, 128, (4, *fw.model.input_shape), dtype=np.int8)
    got = np.stack([r.logits for r in device.infer_many(list(x))])
    return device.info().active_blob_id == blob_id and np.array_equal(got, run_s8(model, x))


def _recrc(blob: bytearray) -> bytes:
    """Both CRCs made right again after an edit: what an attacker who knows the format does."""
    struct.pack_into("<I", blob, 24, zlib.crc32(bytes(blob[HEADER_BYTES:])))
    struct.pack_into("<I", blob, 28, zlib.crc32(bytes(blob[:28])))
    return bytes(blob)


@pytest.mark.qemu
@pytest.mark.slow
def test_boot_banner_and_info_say_signed(qemu: QemuDevice, keys: dict, signed_fw: FirmwareDir) -> None:
    info = qemu.info()
    assert info.signed and info.key_id == keys["owner"].key_id and info.security_counter == 1
    assert f"signed updates, key {keys['owner'].key_id.hex()}" in qemu.device.last_output()
    factory = parse_header(signed_fw.blob_path.read_bytes()).blob_id
    assert _serves(qemu.device, signed_fw.model, signed_fw, factory)


@pytest.mark.qemu
@pytest.mark.slow
def test_bad_blobs_are_refused_each_with_its_error_and_the_old_model_serves(
        qemu: QemuDevice, signed_fw: FirmwareDir, keys: dict, updates: list) -> None:
    owner, other = keys["owner"], keys["other"]
    device = qemu.device
    (model_a, blob_a), (model_b, blob_b) = updates
    installed = stream_update(device, sign_blob(blob_a, owner, counter=5))  # raises the counter to 5
    assert _serves(device, model_a, signed_fw, installed.blob_id) and device.info().security_counter == 5
    flipped = bytearray(sign_blob(blob_b, owner, counter=6))
    flipped[HEADER_BYTES + 200] ^= 0x10  # in the payload; then both CRCs recomputed
    bad = {
        ErrorCode.WRONG_KEY: sign_blob(blob_b, other, counter=6),
        ErrorCode.BAD_SIGNATURE: _recrc(flipped),
        ErrorCode.OLD_COUNTER: sign_blob(blob_b, owner, counter=4),
        ErrorCode.UNSIGNED: blob_b,
    }
    for code, blob in bad.items():
        with pytest.raises(DeviceRejected) as err:
            stream_update(device, blob, check_data=False)  # sent as it is: the host would refuse these itself
        assert err.value.code == code and err.value.offending_type == MsgType.UPDATE_COMMIT, err.value
        assert _serves(device, model_a, signed_fw, installed.blob_id)
        assert device.info().slots[0].state == SlotStatus.INVALID  # marked, so a retry starts afresh
    # The host refuses them before sending anything, one line each.
    with pytest.raises(Exception, match="signed with key"):
        stream_update(device, sign_blob(blob_b, other, counter=6))
    with pytest.raises(Exception, match="below the device's"):
        stream_update(device, sign_blob(blob_b, owner, counter=4))
    # The previous, lower-counter factory blob cannot come back through ROLLBACK either.
    with pytest.raises(DeviceRejected) as err:
        device.rollback()
    assert err.value.code in (ErrorCode.OLD_COUNTER, ErrorCode.NO_ROLLBACK)
    report = stream_update(device, sign_blob(blob_b, owner, counter=6))
    assert _serves(device, model_b, signed_fw, report.blob_id)


@pytest.mark.qemu
@pytest.mark.slow
def test_replayed_authorizations_are_refused_also_after_a_restart(qemu: QemuDevice, signed_fw: FirmwareDir,
                                                                   keys: dict, updates: list) -> None:
    owner = keys["owner"]
    device = qemu.device
    model_a, blob_a = updates[0]
    signed = sign_blob(blob_a, owner)
    info = device.info()
    begin = signed[:HEADER_BYTES]
    recorded = begin + authorization(owner, info.nonce, info.arch_hash, MsgType.UPDATE_BEGIN, begin)
    assert device.request(MsgType.UPDATE_BEGIN, recorded).type == MsgType.UPDATE_BEGIN | 0x80  # used once
    with pytest.raises(DeviceRejected) as err:
        device.request(MsgType.UPDATE_BEGIN, recorded)  # the same frame again
    assert err.value.code == ErrorCode.REPLAYED
    report = stream_update(device, signed)
    assert _serves(device, model_a, signed_fw, report.blob_id)
    qemu.kill()
    qemu.start()  # power cycle: a new epoch
    with pytest.raises(DeviceRejected) as err:
        qemu.device.request(MsgType.ROLLBACK, recorded[HEADER_BYTES:])
    assert err.value.code == ErrorCode.REPLAYED
    assert _serves(qemu.device, model_a, signed_fw, report.blob_id)


@pytest.mark.qemu
@pytest.mark.slow
def test_commands_without_authority_are_refused(signed_fw: FirmwareDir, keys: dict, updates: list,
                                                tmp_path: Path) -> None:
    """A device reached by someone without the owner's key: EXIT, ROLLBACK, UPDATE_BEGIN and INFER_FILE
    are refused, the device keeps serving, nothing in the slots changes."""
    factory = parse_header(signed_fw.blob_path.read_bytes()).blob_id
    with QemuDevice(signed_fw.board, signed_fw.elf, memory_file=tmp_path / "slots.mem") as q:
        device = q.device
        before = device.info()
        forged = before.nonce + bytes(64)
        for msg_type, payload in [(MsgType.EXIT, b"\x07"), (MsgType.EXIT, b"\x07" + forged),
                                  (MsgType.ROLLBACK, b""), (MsgType.ROLLBACK, forged),
                                  (MsgType.UPDATE_BEGIN, sign_blob(updates[0][1], keys["owner"])[:HEADER_BYTES])]:
            with pytest.raises(DeviceRejected) as err:
                device.request(msg_type, payload)
            assert err.value.code == ErrorCode.UNAUTHORISED, (msg_type, err.value)
        with offer_dir() as folder:
            path = Path(folder) / "inputs.bin"
            path.write_bytes(bytes(signed_fw.model.input_size))
            with pytest.raises(DeviceRejected, match="UNAUTHORISED"):
                device.request(MsgType.INFER_FILE, struct.pack("<I", 1) + str(path).encode() + b"\x00")
        after = device.info()
        assert after.slots == before.slots and after.active_blob_id == factory
        assert _serves(device, signed_fw.model, signed_fw, factory)
        assert q.close() is None  # no key, no EXIT: QEMU is killed instead


@pytest.mark.qemu
@pytest.mark.slow
def test_security_counter_survives_power_cut_and_rollback_cannot_go_below(
        qemu: QemuDevice, signed_fw: FirmwareDir, keys: dict, updates: list) -> None:
    owner = keys["owner"]
    (model_a, blob_a), (model_b, blob_b) = updates
    stream_update(qemu.device, sign_blob(blob_a, owner, counter=2))
    stream_update(qemu.device, sign_blob(blob_b, owner, counter=2))
    assert rollback(qemu.device).blob_id == parse_header(blob_a).blob_id  # same counter: allowed
    report = stream_update(qemu.device, sign_blob(blob_b, owner, counter=3))
    qemu.kill()
    qemu.start()
    info = qemu.info()
    assert info.security_counter == 3 and info.active_blob_id == report.blob_id
    with pytest.raises(DeviceRejected) as err:
        qemu.device.rollback()  # to the counter-2 blob
    assert err.value.code == ErrorCode.OLD_COUNTER
    assert _serves(qemu.device, model_b, signed_fw, report.blob_id)


@pytest.mark.qemu
@pytest.mark.slow
def test_powercut_trials_with_signing_recover(signed_fw: FirmwareDir, keys: dict, tmp_path: Path) -> None:
    result = run_powercut_trials(signed_fw.path, trials=4, seed=5, workdir=tmp_path, signer=keys["owner"])
    assert result["signed"] and result["recovered"] == 4, [d for d in result["details"] if not d["ok"]]


def test_signed_blob_layout_on_the_host(signed_fw: FirmwareDir, keys: dict) -> None:
    factory = signed_fw.blob_path.read_bytes()
    assert parse_header(factory).reserved & 1 and factory[-TRAILER_BYTES:-TRAILER_BYTES + 4] == b"MCSG"
    assert signed_fw.signed and signed_fw.info["security"]["key_id"] == keys["owner"].key_id.hex()


@pytest.mark.qemu
@pytest.mark.slow
def test_drift_demo_on_signed_firmware_streams_an_update_signed_by_the_owner(signed_fw: FirmwareDir, keys: dict,
                                                                           tmp_path: Path, capsys) -> None:
    """The host controller against a signed device: INFER_FILE and UPDATE_BEGIN authorised with the
    owner's key, the adapted blob signed by it and installed; without the key, one line and exit 2."""
    from mcuprune.cli import main

    common = ["drift-demo", "--firmware", str(signed_fw.path), "--scenarios", "brightness_contrast", "--shift-at",
              "300", "--length", "800", "--capture", "200", "--refine", "0", "--adapt-steps", "input", "calibrate",
              "monitor", "--out", str(tmp_path / "demo"), "--json"]
    assert main(common) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--signing-key" in err
    assert main(common + ["--signing-key", str(keys["dir"])]) == 0
    (s,) = json.loads(capsys.readouterr().out)["scenarios"]
    assert s["mismatches"] == 0
    (update,) = s["updates"]
    assert update["slot"] == 1 and update["update_bytes"] > TRAILER_BYTES
