"""The host controller: feeds a device, checks every answer, watches telemetry, adapts on drift.

One loop (HostController.run) over a stream of uint8 images:

1. **feed** a batch to the device (INFER over the UART, or INFER_FILE under an emulator) with
   TELEMETRY on, so every RESULT carries the on-device telemetry record;
2. **check** each RESULT against the numpy int8 reference of the model the device should be serving
   (logits and telemetry, bit for bit: a mismatch is logged and counted, never ignored);
3. **watch**: the drift monitor (Page-Hinkley on the QSAE reconstruction error, windowed T² tests on
   the activation histogram and the predicted class) takes each telemetry record;
4. on drift, **capture** the next N inputs from the device (CAPTURE), then **adapt** (adapt.py:
   recalibrate, re-prune by KL, retrain the monitor QSAE; unlabeled data only), build the new
   parameter blob for the deployed architecture, and **update**: stream it into the spare slot
   (update.stream_update) or re-flash a new ELF; confirm with INFO, switch the reference model and
   the drift monitor to the adapted ones.

Every step is one JSON line in the log (JsonlLog). Labels, when the stream has them, are only used
for reporting accuracy; nothing the controller decides depends on them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from mcuprune.codegen.blob import parse_header
from mcuprune.controller.adapt import STEPS, adapt
from mcuprune.controller.detectors import DriftDetector
from mcuprune.controller.drift_offline import build_detector
from mcuprune.controller.drift_qsae import device_outputs, device_telemetry
from mcuprune.device.link import Device, DeviceError, offer_dir
from mcuprune.device.update import stream_update
from mcuprune.errors import UserError
from mcuprune.model.ir import QuantModel
from mcuprune.model.telemetry import Telemetry
from mcuprune.quantize import calibration_indices
from mcuprune.target.compile import FirmwareDir, compile_model, load_firmware_dir
from mcuprune.train.datasets import to_int8

CAPTURE_INPUT = 0
FEEDS = ("uart", "semihosting")
UPDATE_MODES = ("stream", "reflash", "none")
TELEMETRY_FIELDS = ("top1", "confidence_q15", "recon_error", "histogram")


class JsonlLog:
    """One JSON object per line, each with the wall time `t` (s since the log opened) and `event`."""
    def __init__(self, sink: Path | TextIO | None, append: bool = True) -> None:
        self._own = isinstance(sink, Path)
        mode = "a" if append else "w"
        self._fh: TextIO | None = open(sink, mode) if isinstance(sink, Path) else sink  # noqa: SIM115
        self._t0 = time.monotonic()
        self.events: list[dict] = []  # kept for reports (small: only events, not per-sample records)

    def write(self, event: str, keep: bool = True, **fields: object) -> dict:
        line = {"t": round(time.monotonic() - self._t0, 3), "event": event, **fields}
        if keep:
            self.events.append(line)
        if self._fh is not None:
            self._fh.write(json.dumps(line, default=_json_default) + "\n")
            self._fh.flush()
        return line

    def close(self) -> None:
        if self._own and self._fh is not None:
            self._fh.close()


def _json_default(obj: object) -> object:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@dataclass(frozen=True, eq=False)
class ServingModel:
    """What the device is serving, as the host knows it: the int8 model, its monitor QSAE and the
    blob id the device reports for it. Its reference outputs are what every RESULT must equal."""
    model: QuantModel
    monitor: QuantModel
    blob_id: int
    label: str  # "factory", "update-1", ...

    def expected(self, x_uint8: np.ndarray) -> tuple[np.ndarray, Telemetry]:
        """Reference logits (N, K) and telemetry of a batch, as the device must produce them."""
        return device_outputs(self.model, self.monitor, x_uint8)


@dataclass
class AdaptOutcome:
    """What the adaptation step hands back to the controller."""
    model: QuantModel
    monitor: QuantModel
    drift: DriftDetector
    report: dict


@dataclass
class StreamReport:
    """Per-sample outcomes of one run of the controller over a stream."""
    predictions: list[int] = field(default_factory=list)  # the device's top-1 per sample
    serving: list[str] = field(default_factory=list)  # label of the model that answered each sample
    alarms: list[int] = field(default_factory=list)  # 0-based sample indices of drift alarms
    updates: list[dict] = field(default_factory=list)  # one per completed update
    mismatches: int = 0  # samples whose logits or telemetry differed from the reference
    samples: int = 0


class HostController:
    """See the module docstring. `adapt` maps captured uint8 inputs to an AdaptOutcome;
    `update` installs an AdaptOutcome on the device and returns (new blob id, report dict)."""
    def __init__(self, device: Device, serving: ServingModel, drift: DriftDetector, log: JsonlLog,
                 adapt: Callable[[np.ndarray], AdaptOutcome] | None,
                 update: Callable[[AdaptOutcome], tuple[int, dict]] | None,
                 capture_samples: int = 1000, feed: str = "uart", batch: int = 50,
                 max_updates: int | None = None, on_update: Callable[[ServingModel], None] | None = None) -> None:
        if feed not in FEEDS:
            raise UserError(f"unknown feed '{feed}': choose one of {', '.join(FEEDS)}")
        self.device = device
        self.serving = serving
        self.drift = drift
        self.log = log
        self.adapt = adapt
        self.update = update
        self.capture_samples = capture_samples
        self.feed = feed
        self.batch = batch
        self.max_updates = max_updates
        self.on_update = on_update  # e.g. save the installed model, so a later session knows the device's blob
        self._captured: list[np.ndarray] = []
        self.alarms_seen: list[int] = []  # sample indices of every drift alarm, across updates
        self._capturing = False
        self._capture_from = 0
        self._tmp = offer_dir()  # INFER_FILE reads only offered folders (device/link.py OFFER_PREFIX)
        self.device.telemetry(1)

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, x_uint8: np.ndarray, y: np.ndarray | None = None,
            on_sample: Callable[[int, dict], None] | None = None) -> StreamReport:
        report = StreamReport()
        for start in range(0, len(x_uint8), self.batch):
            xb = x_uint8[start : start + self.batch]
            results = self._infer(xb)
            logits, tel = self.serving.expected(xb)
            for i, res in enumerate(results):
                index = start + i
                self._check(index, res, logits[i], tel, i, report)
                report.predictions.append(int(res.predicted))
                report.serving.append(self.serving.label)
                record = {name: res.telemetry[name] for name in TELEMETRY_FIELDS}
                if self._capturing and index >= self._capture_from:
                    self._take_capture(index, res, xb[i])
                elif self.drift.update(record):
                    report.alarms.append(index)
                    self.alarms_seen.append(index)
                    self.log.write("drift", sample=index, **_drift_fields(self.drift.event()))
                    self._start_capture(index, start + len(results), report)
                if on_sample is not None:
                    on_sample(index, {"pred": int(res.predicted), "label": None if y is None else int(y[index]),
                                      **record})
            report.samples += len(results)
            if self._capturing and len(self._captured) >= self.capture_samples:
                self._adapt_and_update(report)
        return report

    def close(self) -> None:
        self._tmp.cleanup()

    # --- steps ------------------------------------------------------------------------------------

    def _infer(self, xb: np.ndarray) -> list:
        if self.feed == "uart":
            return self.device.infer_many(list(to_int8(xb)))
        path = Path(self._tmp.name) / "batch.bin"
        path.write_bytes(to_int8(xb).tobytes())
        return self.device.infer_file(path, len(xb))

    def _check(self, index: int, res: object, logits: np.ndarray, tel: Telemetry, i: int,
               report: StreamReport) -> None:
        expected = tel.record(i)
        got = res.telemetry
        bad = [name for name in TELEMETRY_FIELDS if got is None or _value(got[name]) != expected[name]]
        if not np.array_equal(np.asarray(res.logits, dtype=np.int8), logits.astype(np.int8)):
            bad.append("logits")
        if bad:
            report.mismatches += 1
            self.log.write("mismatch", sample=index, fields=bad, serving=self.serving.label)

    def _start_capture(self, index: int, next_sample: int, report: StreamReport) -> None:
        """CAPTURE applies to the device's next inferences: those of the next batch on."""
        if self.adapt is None or self.update is None:
            return
        if self.max_updates is not None and len(report.updates) >= self.max_updates:
            self.log.write("drift_ignored", sample=index, reason=f"max_updates={self.max_updates} reached")
            return
        self.device.capture(CAPTURE_INPUT, self.capture_samples)
        self._capturing = True
        self._capture_from = next_sample
        self._captured = []
        self.log.write("capture", sample=index, count=self.capture_samples)

    def _take_capture(self, index: int, res: object, sent: np.ndarray) -> None:
        if res.capture is None:
            raise UserError(f"the device stopped sending captures at sample {index}: is the firmware a blob build?")
        which, tensor = res.capture
        image = (np.asarray(tensor, dtype=np.int16).reshape(sent.shape) + 128).astype(np.uint8)
        if which != CAPTURE_INPUT or not np.array_equal(image, sent):
            self.log.write("mismatch", sample=index, fields=["capture"], serving=self.serving.label)
        self._captured.append(image)

    def _adapt_and_update(self, report: StreamReport) -> None:
        self._capturing = False
        captured = np.stack(self._captured[: self.capture_samples])
        t0 = time.monotonic()
        outcome = self.adapt(captured)
        adapt_s = time.monotonic() - t0
        self.log.write("adapted", seconds=round(adapt_s, 2), report=outcome.report)
        t0 = time.monotonic()
        blob_id, info = self.update(outcome)
        update_s = time.monotonic() - t0
        self.device = info.pop("device", self.device)  # a re-flash may have reconnected
        label = f"update-{len(report.updates) + 1}"
        self.serving = ServingModel(outcome.model, outcome.monitor, blob_id, label)
        self.drift = outcome.drift
        self.device.telemetry(1)  # a re-flashed device boots with telemetry off
        entry = {"after_sample": report.samples, "serving": label, "blob_id": blob_id,
                 "adapt_seconds": round(adapt_s, 2), "update_seconds": round(update_s, 3), **info}
        report.updates.append(entry)
        self.log.write("updated", **entry)
        if self.on_update is not None:
            self.on_update(self.serving)


def _value(v: object) -> object:
    if isinstance(v, np.ndarray):
        return [int(x) for x in v]
    if isinstance(v, list | tuple):
        return [int(x) for x in v]
    return int(v)


def _drift_fields(event: dict) -> dict:
    return {k: event[k] for k in ("fired", "statistics", "thresholds", "alarms")}


# --- wiring: the factory model, the adaptation and the two update paths ---------------------------


def reference_images(x_train: np.ndarray, samples: int = 5000, seed: int = 1) -> np.ndarray:
    """Training images for the drift detectors' reference: none of the calibration subset, on which
    the quantization and the factory monitor QSAE were fitted (its reconstruction error is lower there)."""
    n = len(x_train)
    free = np.setdiff1d(np.arange(n), calibration_indices(n))
    if len(free) == 0:  # a small dataset (digits): all of it calibrated; the reference is then optimistic
        free = np.arange(n)
    pick = np.random.default_rng(seed).choice(free, size=min(samples, len(free)), replace=False)
    return x_train[np.sort(pick)]


def factory_serving(fw: FirmwareDir) -> ServingModel:
    if fw.params != "blob" or fw.monitor is None or fw.blob_path is None:
        raise UserError(f"{fw.path} is --params static firmware: the host controller needs a blob build "
                        f"(mcuprune compile RUN --board {fw.board.name} --params blob)")
    return ServingModel(fw.model, fw.monitor, parse_header(fw.blob_path.read_bytes()).blob_id, "factory")


def factory_drift_detector(serving: ServingModel, x_train: np.ndarray, num_classes: int) -> DriftDetector:
    """The default drift monitor (drift_offline.DetectorSpec) fitted on the factory model's telemetry."""
    return build_detector(device_telemetry(serving.model, serving.monitor, reference_images(x_train)), num_classes)


ADAPT_STEPS = STEPS  # every step, re-pruning included (the issue asks for it; --adapt-steps to choose)


def make_adapter(run_dir: Path, fw: FirmwareDir, seed: int = 0,
                 steps: tuple[str, ...] = ADAPT_STEPS) -> Callable[[np.ndarray], AdaptOutcome]:
    """Captured uint8 inputs -> new parameters for `fw`'s architecture (adapt.adapt with `steps`)."""
    def run(captured: np.ndarray) -> AdaptOutcome:
        result = adapt(run_dir, fw.model, fw.formats, captured, seed=seed, steps=steps)
        return AdaptOutcome(result.model, result.monitor_qsae.model, result.monitor, result.report)

    return run


def stream_updater(get_device: Callable[[], Device], fw: FirmwareDir) -> Callable[[AdaptOutcome], tuple[int, dict]]:
    """Install an adaptation by streaming its blob into the device's spare slot (update.stream_update)."""
    def run(outcome: AdaptOutcome) -> tuple[int, dict]:
        blob = fw.update_blob(outcome.model, outcome.monitor)
        rep = stream_update(get_device(), blob)
        return rep.blob_id, {"mode": "stream", "update_bytes": len(blob), "update_seconds": round(rep.seconds, 3),
                             "slot": rep.slot, "generation": rep.generation, "resends": rep.resends}

    return run


def reflash_updater(fw: FirmwareDir, workdir: Path,
                    flash: Callable[[FirmwareDir], Device]) -> Callable[[AdaptOutcome], tuple[int, dict]]:
    """Install an adaptation by re-flashing: compile a new blob firmware whose factory blob is the
    adapted model (into workdir/fw-reflash-N), let `flash` put it on the board and return the
    reconnected Device, then confirm with INFO that the new factory blob is serving."""
    count = 0

    def run(outcome: AdaptOutcome) -> tuple[int, dict]:
        nonlocal count
        count += 1
        t0 = time.monotonic()
        result = compile_model(outcome.model, fw.board, workdir / f"fw-reflash-{count}", fw.variant, params="blob",
                               monitor=outcome.monitor)
        compile_s = time.monotonic() - t0
        new_fw = load_firmware_dir(result.fw_dir)
        t0 = time.monotonic()
        device = flash(new_fw)
        serving = factory_serving(new_fw)
        served = device.info().active_blob_id
        if served != serving.blob_id:
            raise DeviceError(f"after the re-flash the device serves blob {served}, expected the new factory blob "
                              f"0x{serving.blob_id:08x}")
        return serving.blob_id, {"mode": "reflash", "update_bytes": result.build.flash_bytes,
                                 "update_seconds": round(time.monotonic() - t0, 3),
                                 "compile_seconds": round(compile_s, 1), "device": device}

    return run
