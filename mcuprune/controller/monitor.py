"""`mcuprune monitor`: the host controller on a device reached through any pyserial URL.

The firmware has no sensor: the host feeds it a stream of test images (optionally shifted by a
drift scenario from sample `shift_at` on) and the controller watches the telemetry that comes back
with every RESULT, adapting and updating the device on drift (controller.py). Models the
controller installs are saved next to the firmware (updates/<blob id>/), so a later session knows
what the device serves after an update.
"""

from __future__ import annotations

import queue
import shlex
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from rich.live import Live
from rich.table import Table

from mcuprune.codegen.signing import Signer
from mcuprune.controller import CONTROLLER_STEPS, FIRST_CAPTURE, REFINE_CAPTURE
from mcuprune.controller.accuracy import AccuracyTrigger
from mcuprune.controller.controller import (
    HostController,
    JsonlLog,
    ServingModel,
    expected_accuracy,
    factory_drift_detector,
    factory_serving,
    make_adapter,
    reflash_updater,
    stream_updater,
)
from mcuprune.controller.drift_demo import NONE
from mcuprune.controller.scenarios import SCENARIOS, make_stream
from mcuprune.device.link import Device
from mcuprune.errors import UserError
from mcuprune.model.ir import load_quant_model, save_quant_model
from mcuprune.target.compile import FirmwareDir, load_firmware_dir
from mcuprune.train.datasets import load_dataset

UPDATES_DIR = "updates"


@dataclass(frozen=True)
class MonitorConfig:
    update: str = "stream"  # stream | reflash | none
    scenario: str = "none"
    shift_at: int = 1000
    samples: int = 4000
    capture_samples: int = FIRST_CAPTURE
    refine_samples: int = REFINE_CAPTURE
    feed: str = "uart"
    seed: int = 0
    adapt_steps: tuple[str, ...] = CONTROLLER_STEPS
    labels: str | None = None  # FILE or "-" (stdin): "SAMPLE CLASS" lines


def parse_label_line(line: str, num_classes: int, where: str) -> tuple[int, int] | None:
    """'SAMPLE CLASS' (whitespace or a comma between; '#' starts a comment) -> (sample, class); None
    for a blank line. UserError naming `where` for anything else."""
    text = line.split("#", 1)[0].replace(",", " ").split()
    if not text:
        return None
    try:
        if len(text) != 2:
            raise ValueError
        sample, label = int(text[0]), int(text[1])
    except ValueError:
        raise UserError(f"{where}: expected 'SAMPLE CLASS' (two integers), got {line.strip()!r}") from None
    if sample < 0 or not 0 <= label < num_classes:
        raise UserError(f"{where}: sample must be >= 0 and class in 0..{num_classes - 1}, got {line.strip()!r}")
    return sample, label


class LabelSource:
    """Labels known on the host, as a controller LabelFeed. A file is read and checked completely
    before the stream starts; "-" reads stdin on a thread, so labels can come while the stream runs
    (an operator, or a pipe from another system); a bad stdin line is reported on stderr and
    skipped, since the stream cannot be undone. A label waits until its sample has been served."""

    def __init__(self, spec: str, num_classes: int, stdin: TextIO | None = None) -> None:
        self._pending: list[tuple[int, int]] = []
        self._queue: queue.Queue[tuple[int, int]] = queue.Queue()
        self.num_classes = num_classes
        if spec == "-":
            threading.Thread(target=self._read, args=(stdin or sys.stdin,), daemon=True).start()
            return
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"--labels {spec}: no such file (lines 'SAMPLE CLASS', or - for stdin)")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            parsed = parse_label_line(line, num_classes, f"{spec} line {number}")
            if parsed is not None:
                self._pending.append(parsed)

    def _read(self, stream: TextIO) -> None:
        for number, line in enumerate(stream, 1):
            try:
                parsed = parse_label_line(line, self.num_classes, f"stdin line {number}")
            except UserError as err:
                print(f"[monitor] {err} (skipped)", file=sys.stderr)
                continue
            if parsed is not None:
                self._queue.put(parsed)

    def __call__(self, controller: HostController, served: int) -> list[tuple[int, int]]:
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        ready = [p for p in self._pending if p[0] < served]
        self._pending = [p for p in self._pending if p[0] >= served]
        return ready


def resolve_firmware(run: Path, firmware: Path | None) -> tuple[FirmwareDir, Path]:
    """(firmware dir, training run) from `--run` (a firmware dir or a run) and `--firmware`."""
    if firmware is None:
        if not (run / "firmware.json").exists():
            raise UserError(f"{run} is not a firmware directory: pass --firmware FWDIR (made with "
                            "`mcuprune compile RUN --params blob`) or give the firmware directory as --run")
        firmware = run
    fw = load_firmware_dir(firmware)
    run_dir = Path(fw.model.meta.get("run_dir", run)) if firmware == run else run
    return fw, run_dir


def save_installed(fw: FirmwareDir, serving: ServingModel) -> None:
    out = fw.path / UPDATES_DIR / f"{serving.blob_id:08x}"
    save_quant_model(serving.model, out / "model")
    save_quant_model(serving.monitor, out / "monitor")


def serving_for(fw: FirmwareDir, blob_id: int | None) -> ServingModel:
    """The model the device reports serving: the factory blob, or one this tool installed earlier."""
    factory = factory_serving(fw)
    if blob_id is None or blob_id == factory.blob_id:
        return factory
    saved = fw.path / UPDATES_DIR / f"{blob_id:08x}"
    if not saved.is_dir():
        raise UserError(f"the device serves blob 0x{blob_id:08x}, which is neither {fw.path}'s factory blob nor an "
                        "update this tool installed: re-flash it, or point --firmware at the firmware it runs")
    return ServingModel(load_quant_model(saved / "model"), load_quant_model(saved / "monitor"), blob_id,
                        f"blob-{blob_id:08x}")


def board_flasher(port: str, fw: FirmwareDir, connect: Callable[[str], Device]) -> Callable[[FirmwareDir], Device]:
    """Program a real board with its board file's flash command (pyocd, openocd, ...), then reconnect."""
    if fw.board.flash_command is None:
        raise UserError(f"board {fw.board.name} has no flash_command in its board file: use --update stream "
                        "(under QEMU, `mcuprune drift-demo --update reflash` restarts QEMU with the new ELF)")

    def flash(new_fw: FirmwareDir) -> Device:
        cmd = fw.board.flash_command_for(new_fw.elf)
        done = subprocess.run(shlex.split(cmd), capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"flashing failed ({cmd} exited with {done.returncode}): {done.stderr.strip()[-300:]}")
        return connect(port)

    return flash


class LiveView:
    """A live table (rich) of what the controller sees; plain lines when stdout is not a terminal."""

    def __init__(self, controller: HostController, every: int = 50) -> None:
        self.controller = controller
        self.every = every
        self.recon: deque[int] = deque(maxlen=200)
        self.correct: deque[int] = deque(maxlen=200)
        self.samples = 0
        self._live = None
        if sys.stdout.isatty():
            self._live = Live(self._table(), refresh_per_second=4)
            self._live.start()

    def __call__(self, index: int, sample: dict) -> None:
        self.samples = index + 1
        self.recon.append(sample["recon_error"])
        if sample["label"] is not None:
            self.correct.append(int(sample["pred"] == sample["label"]))
        if self.samples % self.every == 0:
            if self._live is not None:
                self._live.update(self._table())
            elif self.samples % (self.every * 20) == 0:
                print(" | ".join(f"{k} {v}" for k, v in self._rows()), file=sys.stderr, flush=True)  # stdout: --json

    def _rows(self) -> list[tuple[str, str]]:
        c = self.controller
        ev = c.drift.event()
        stats = ", ".join(f"{k} {v:.2f}/{ev['thresholds'][k]:.2f}" for k, v in ev["statistics"].items())
        acc = f"{100 * np.mean(self.correct):.1f} %" if self.correct else "—"
        return [("samples", str(self.samples)), ("serving", c.serving.label), ("accuracy (last 200)", acc),
                ("recon error (mean, last 200)", f"{np.mean(self.recon):.0f}" if self.recon else "—"),
                ("detector / threshold", stats or "—"), ("alarms", str(len(c.alarms_seen)))]

    def _table(self) -> Table:
        table = Table(title="mcuprune monitor")
        table.add_column("")
        table.add_column("")
        for k, v in self._rows():
            table.add_row(k, v)
        return table

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()


def run_monitor(port: str, fw: FirmwareDir, run_dir: Path, cfg: MonitorConfig, log_path: Path,
                connect: Callable[[str], Device] | None = None, signer: Signer | None = None) -> dict:
    """Connect, check the device runs this firmware, feed the stream and control; returns a summary.
    A signed firmware needs `signer`, its owner's key (streamed updates and INFER_FILE)."""
    if connect is None:
        def connect(url: str) -> Device:
            return Device(url, signer=signer)
    if fw.signed and signer is None and cfg.update != "none":
        raise UserError(f"{fw.path} is signed firmware: updating it needs the owner's key (--signing-key)")
    dataset = load_dataset(fw.model.meta.get("dataset", "fashion-mnist"))
    labels = None if cfg.labels is None else LabelSource(cfg.labels, fw.model.num_classes)  # checked before connecting
    device = connect(port)
    info = device.info()
    if not info.updatable:
        raise UserError(f"the device at {port} runs --params static firmware: build it with --params blob")
    if info.arch_hash != fw.arch_hash:
        raise UserError(f"the device at {port} runs architecture 0x{info.arch_hash:08x}, {fw.path} is "
                        f"0x{fw.arch_hash:08x}: flash that firmware or pass the one the device runs")
    serving = serving_for(fw, info.active_blob_id)
    drift = factory_drift_detector(serving, dataset.x_train, dataset.num_classes)
    if cfg.update == "stream":
        updater = stream_updater(lambda: controller.device, fw, signer)
    elif cfg.update == "reflash":
        updater = reflash_updater(fw, log_path.parent / "reflash", board_flasher(port, fw, connect))
    else:
        updater = None
    scenario = NONE if cfg.scenario == "none" else SCENARIOS.get(cfg.scenario)
    if scenario is None:
        raise UserError(f"unknown scenario '{cfg.scenario}': choose none or one of {', '.join(SCENARIOS)}")
    x, y, _ = make_stream(dataset, scenario, min(cfg.shift_at, cfg.samples), cfg.samples, cfg.seed)
    log = JsonlLog(log_path)
    log.write("start", port=port, firmware=str(fw.path), serving=serving.label, blob_id=serving.blob_id,
              scenario=scenario.name, shift_at=cfg.shift_at, samples=cfg.samples, update=cfg.update)
    adapter = make_adapter(run_dir, fw, cfg.seed, cfg.adapt_steps) if updater else None
    accuracy = None
    if labels is not None:
        accuracy = AccuracyTrigger(expected_accuracy(factory_serving(fw), dataset.x_train, dataset.y_train))
    controller = HostController(device, serving, drift, log, adapter,
                                updater, capture_samples=cfg.capture_samples, refine_samples=cfg.refine_samples,
                                feed=cfg.feed, on_update=lambda s: save_installed(fw, s), label_feed=labels,
                                accuracy=accuracy)
    view = LiveView(controller)
    try:
        report = controller.run(x, y, on_sample=view)
    finally:
        view.close()
        controller.close()
        controller.device.close()  # frees the line: QEMU's TCP serial serves one client at a time
    pred = np.asarray(report.predictions)
    summary = {"samples": report.samples, "alarms": report.alarms, "accuracy_alarms": report.accuracy_alarms,
               "labels": report.labels, "labels_counted_by_device": report.labels_counted,
               "declined": report.declined, "updates": report.updates,
               "mismatches": report.mismatches, "accuracy": round(float(np.mean(pred == y[: len(pred)])), 4),
               "serving": controller.serving.label, "blob_id": f"0x{controller.serving.blob_id:08x}"}
    log.write("done", **summary)
    log.close()
    return summary
