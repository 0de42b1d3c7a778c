"""Power-cut trials: kill QEMU at random moments of a model update and check the device recovers.

Each trial boots the blob firmware of a firmware directory on a memory file (the board's `[slots]`
region, file-backed, so it survives the kill like flash would), streams an update blob (a model
of the same architecture with other parameters), SIGKILLs QEMU at a random point, boots again on
the same file and checks:

* INFO answers;
* the served blob is the old one unless the UPDATE_COMMIT had been sent (then old or new), and the
  new one if the commit's reply had arrived;
* a few inputs give exactly the logits of that model's int8 reference (reference.run_s8);
* optionally the update is finished by beginning it again, which resumes from the device's
  watermark when the kill came mid-stream, and then the new model serves, bit-exact.

The memory file carries over from trial to trial (slot generations keep growing, half-written
slots are met again); the two update models alternate so every update is a real change.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from mcuprune.codegen.blob import parse_header
from mcuprune.codegen.signing import Signer
from mcuprune.device.link import DeviceError
from mcuprune.device.qemu import QemuDevice
from mcuprune.device.update import Updater
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import QuantModel
from mcuprune.target.compile import FirmwareDir, load_firmware_dir

__all__ = ["perturbed_model", "run_powercut_trials", "write_report"]

CHECK_INPUTS = 4  # inputs whose logits are compared after every restart
UPDATE_FACTORS = (0.75, 0.5)  # weight scalings of the two update models
COMMIT_SHARE = 0.3  # fraction of trials whose kill is aimed at the commit
FINISH_SHARE = 0.5  # fraction of trials that finish the interrupted update after the restart


def perturbed_model(model: QuantModel, factor: float, name_suffix: str = "") -> QuantModel:
    """The model with every weight scaled by `factor` (rounded away from zero, so the non-zero
    pattern, hence the sparse formats' structure, stays) and biases scaled alike: same
    architecture, other parameters, other logits."""
    layers = []
    for layer in model.layers:
        if not layer.has_weights:
            layers.append(layer)
            continue
        w = layer.weights.astype(np.int32)
        scaled = np.sign(w) * np.maximum(1, np.rint(np.abs(w) * factor)).astype(np.int32)
        weights = np.where(w == 0, 0, scaled).astype(np.int8)
        bias = np.rint(layer.bias.astype(np.float64) * factor).astype(np.int32)
        layers.append(replace(layer, weights=weights, bias=bias))
    return replace(model, layers=tuple(layers), name=model.name + name_suffix)


def _blob_firmware(fw_dir: Path) -> FirmwareDir:
    fw = load_firmware_dir(Path(fw_dir))
    if fw.params != "blob" or fw.monitor is None:
        raise UserError(f"{fw_dir} is --params {fw.params} firmware: power-cut trials need an updatable build "
                        f"(`mcuprune compile RUN --board {fw.board.name} --params blob`)")
    if fw.board.slots is None or fw.board.qemu_machine is None:
        raise UserError(f"board {fw.board.name} has no emulated [slots] memory: power-cut trials run in QEMU")
    return fw


def _hex(value: int | None) -> str | None:
    return None if value is None else f"0x{value:08x}"


class _Trials:
    def __init__(self, fw: FirmwareDir, workdir: Path, rng: np.random.Generator,
                 progress: Callable[[str], None] | None, signer: Signer | None = None) -> None:
        self.fw, self.rng, self.progress, self.signer = fw, rng, progress, signer
        self.memory = workdir / "slots.mem"
        factory = fw.blob_path.read_bytes()
        self.models: dict[int, QuantModel] = {parse_header(factory).blob_id: fw.model}
        self.blobs: list[bytes] = []
        for i, factor in enumerate(UPDATE_FACTORS):
            model = perturbed_model(fw.model, factor, f"-update{i}")
            blob = fw.update_blob(model, fw.monitor, signer=signer)
            self.models[parse_header(blob).blob_id] = model
            self.blobs.append(blob)
        if len(self.models) != len(UPDATE_FACTORS) + 1:
            raise UserError("the update models' blobs are not all different: cannot tell them apart on the device")
        self.inputs = self.rng.integers(-128, 128, (CHECK_INPUTS, *fw.model.input_shape), dtype=np.int8)
        self.expected = {blob_id: run_s8(model, self.inputs) for blob_id, model in self.models.items()}

    def qemu(self) -> QemuDevice:
        return QemuDevice(self.fw.board, self.fw.elf, memory_file=self.memory, signer=self.signer)

    def served(self, qemu: QemuDevice) -> dict:
        """INFO and the check inputs on a freshly booted device."""
        info = qemu.info()
        active = info.active_blob_id
        out = {"served_blob_id": _hex(active), "served_generation": None if info.active is None
               else info.active.generation, "slots": [s.state.name for s in info.slots]}
        if active not in self.expected:
            return {**out, "logits_match": False, "why": f"serves unknown blob {_hex(active)}"}
        results = qemu.infer_many(list(self.inputs))
        got = np.stack([r.logits for r in results])
        return {**out, "logits_match": bool(np.array_equal(got, self.expected[active]))}

    def measure(self) -> dict:
        """One whole update on a scratch memory file: how long streaming and committing take."""
        scratch = self.memory.with_name("measure.mem")
        scratch.unlink(missing_ok=True)
        with QemuDevice(self.fw.board, self.fw.elf, memory_file=scratch, signer=self.signer) as qemu:
            updater = Updater(qemu.device, self.blobs[0])
            report = updater.run()
        scratch.unlink(missing_ok=True)
        t = updater.times
        return {"stream_s": t["commit_sent"] - t["begin"], "commit_ack_s": t["commit_acked"] - t["commit_sent"],
                "report": report.as_dict()}

    def trial(self, index: int, timing: dict, fresh: bool) -> dict:
        if fresh:
            self.memory.unlink(missing_ok=True)
        record: dict = {"trial": index, "fresh_memory": fresh}
        try:
            with self.qemu() as qemu:
                self._trial(qemu, index, timing, record)
        except (DeviceError, UserError) as exc:
            record.update(ok=False, error=str(exc))
        return record

    def _trial(self, qemu: QemuDevice, index: int, timing: dict, record: dict) -> None:
        before = qemu.info()
        old = before.active_blob_id
        if old is None or before.active is None:
            raise DeviceError("the device boots with no active slot")
        candidates = [b for b in self.blobs if parse_header(b).blob_id != old]
        blob = candidates[index % len(candidates)]
        new = parse_header(blob).blob_id
        record.update(old_blob_id=_hex(old), new_blob_id=_hex(new), old_generation=before.active.generation)
        at_commit = bool(self.rng.random() < COMMIT_SHARE)
        if at_commit:  # aimed at the commit: between writing the COMMIT frame and a little after its reply
            delay = float(self.rng.uniform(0.0, 1.2 * timing["commit_ack_s"]))
        else:  # anywhere in the stream
            delay = float(self.rng.uniform(0.0, timing["stream_s"]))
        record.update(kill_aim="commit" if at_commit else "stream", kill_delay_s=round(delay, 5))
        fired = threading.Event()

        def power_cut() -> None:
            fired.set()
            qemu.signal_kill()

        timer = threading.Timer(delay, power_cut)
        updater = Updater(qemu.device, blob, on_commit=timer.start if at_commit else None)
        if not at_commit:
            timer.start()
        completed = False
        try:
            updater.run()
            completed = True  # the update beat the timer: the power goes off right after it
        except DeviceError as exc:
            if not fired.is_set():
                raise DeviceError(f"the update failed before the power cut: {exc}") from None
        if timer.is_alive():
            timer.cancel()
            timer.join()
        qemu.kill()
        record.update(killed_during_update=not completed, begun_at=updater.resumed_from if updater.begun else None,
                      watermark_at_kill=updater.watermark, commit_sent=updater.commit_sent,
                      commit_acked=updater.commit_acked)
        qemu.start()  # power back on, same memory file
        served = self.served(qemu)
        record.update(served)
        allowed = {new} if updater.commit_acked else {old, new} if updater.commit_sent else {old}
        record["served_allowed"] = served["served_blob_id"] in {_hex(b) for b in allowed}
        if index == 0 or self.rng.random() < FINISH_SHARE:
            record.update(self.finish(qemu, blob, new))
        record["ok"] = bool(record["served_allowed"] and record["logits_match"] and record.get("finish_ok", True))

    def finish(self, qemu: QemuDevice, blob: bytes, new: int) -> dict:
        """Complete the interrupted update: BEGIN again (resuming if the device kept a partial slot)."""
        report = Updater(qemu.device, blob).run()
        after = self.served(qemu)
        ok = after["served_blob_id"] == _hex(new) and after["logits_match"]
        return {"finished": True, "finish_resumed_from": None if report.already_active else report.resumed_from,
                "already_active": report.already_active, "finish_ok": bool(ok), "after_finish": after}


def run_powercut_trials(fw_dir: Path, trials: int, seed: int = 0, workdir: Path | None = None,
                        progress: Callable[[str], None] | None = None, signer: Signer | None = None) -> dict:
    """Run `trials` power-cut trials on the blob firmware in `fw_dir` (see the module docstring).

    Returns {"trials", "recovered", "seed", "timing", "commit_sent", "commit_acked", "resumed",
    "details": [per trial]}; a trial is recovered when every check passed; "resumed" counts BEGINs
    (the trial's own or the finishing one) that continued past the header. `workdir` holds the
    memory file (a temporary directory if None); `progress(line)` gets one line per trial.
    A signed firmware needs `signer`, its owner's key: the update blobs are signed with it and it
    authorises each UPDATE_BEGIN (and EXIT).
    """
    if trials < 1:
        raise UserError(f"trials must be at least 1, got {trials}")
    fw = _blob_firmware(fw_dir)
    if fw.signed and signer is None:
        raise UserError(f"{fw_dir} is signed firmware: its updates need the owner's key (--signing-key)")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="mcuprune-powercut-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runner = _Trials(fw, work, rng, progress, signer)
        timing = runner.measure()
        details = []
        for i in range(trials):
            fresh = i == 0 or rng.random() < 0.1
            record = runner.trial(i, timing, fresh)
            details.append(record)
            if progress is not None:
                progress(_summary(record))
    recovered = sum(1 for d in details if d["ok"])
    return {
        "trials": trials,
        "recovered": recovered,
        "seed": seed,
        "firmware": str(Path(fw_dir)),
        "signed": fw.signed,
        "blob_bytes": [len(b) for b in runner.blobs],
        "timing": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timing.items()},
        "commit_sent": sum(1 for d in details if d.get("commit_sent")),
        "commit_acked": sum(1 for d in details if d.get("commit_acked")),
        "resumed": sum(1 for d in details for key in ("begun_at", "finish_resumed_from") if (d.get(key) or 0) > 32),
        "details": details,
    }


def _summary(record: dict) -> str:
    state = "ok" if record["ok"] else "FAILED"
    if "error" in record:
        return f"trial {record['trial']}: {state}: {record['error']}"
    commit = "acked" if record["commit_acked"] else "sent" if record["commit_sent"] else "not sent"
    begun = record["begun_at"]
    start = f"began at {begun}" if begun is not None else "not begun"
    if not record.get("finished"):
        finish = ""
    elif record["already_active"]:
        finish = "; finish: already active"
    else:
        finish = f"; finish: resumed at {record['finish_resumed_from']}"
    return (f"trial {record['trial']}: {state}: {record['old_blob_id']} -> {record['new_blob_id']}, {start}, "
            f"killed after {record['kill_delay_s'] * 1000:.1f} ms (aim {record['kill_aim']}, watermark "
            f"{record['watermark_at_kill']}, commit {commit}); serves {record['served_blob_id']}{finish}")


def write_report(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")
