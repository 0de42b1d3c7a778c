"""The host controller: feeds a device, checks every answer, watches telemetry, adapts on drift.

One loop (HostController.run) over a stream of uint8 images:

1. **feed** a batch to the device (INFER over the UART, or INFER_FILE under an emulator) with
   TELEMETRY on, so every RESULT carries the on-device telemetry record;
2. **check** each RESULT against the numpy int8 reference of the model the device should be serving
   (logits and telemetry, bit for bit: a mismatch is logged and counted, never ignored);
3. **watch**: the drift monitor (Page-Hinkley on the QSAE reconstruction error, windowed T² tests on
   the activation histogram and the predicted class) takes each telemetry record;
4. on drift (or a drop of the accuracy over labeled samples), **capture** the next 200 inputs from
   the device (CAPTURE), then **adapt** (adapt.py, with the labels the field returned for some of
   them), build the new parameter blob for the deployed architecture, and **update**: stream it
   into the spare slot (update.stream_update) or re-flash a new ELF; confirm with INFO, switch the
   reference model and the drift monitor to the adapted ones. Then capture 1,000 more and adapt
   again on all of them (refine). When the adaptation's guard predicts no gain, nothing is sent
   ("no update") and the host's detector takes the capture as its new normal;
5. **labels**: when the field returns the true class of a served sample (label_feed: a file,
   stdin, or the demo's operator), it is stored with the captured input and sent to the device
   (LABEL), whose answer (what it served for that sample) feeds the accuracy trigger.

Every step is one JSON line in the log (JsonlLog). The labels of the stream itself (`y` of run())
are only used for reporting; the controller decides on the labels the label feed returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from mcuprune.codegen.blob import parse_header
from mcuprune.codegen.signing import Signer
from mcuprune.controller import CONTROLLER_STEPS, FIRST_CAPTURE, REFINE_CAPTURE
from mcuprune.controller.accuracy import AccuracyTrigger
from mcuprune.controller.adapt import adapt
from mcuprune.controller.detectors import DriftDetector
from mcuprune.controller.drift_offline import build_detector
from mcuprune.controller.drift_qsae import device_outputs, device_telemetry
from mcuprune.device.link import Device, DeviceError, offer_dir
from mcuprune.device.update import stream_update
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_s8
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
    ship: bool = True  # False: the host predicts the adapted model to be worse; the device keeps its model


@dataclass
class StreamReport:
    """Per-sample outcomes of one run of the controller over a stream."""
    predictions: list[int] = field(default_factory=list)  # the device's top-1 per sample
    serving: list[str] = field(default_factory=list)  # label of the model that answered each sample
    alarms: list[int] = field(default_factory=list)  # 0-based sample indices of drift alarms
    accuracy_alarms: list[int] = field(default_factory=list)  # ... of alarms of the labeled-accuracy trigger
    updates: list[dict] = field(default_factory=list)  # one per completed update
    declined: list[dict] = field(default_factory=list)  # adaptations the guard did not ship
    mismatches: int = 0  # samples whose logits or telemetry differed from the reference
    samples: int = 0
    labels: int = 0  # labels the field returned (LABEL sent to the device)
    labels_counted: int = 0  # ... that the device still knew the sample of


# What the field returns: after each batch, (stream index, class) pairs that became known.
LabelFeed = Callable[["HostController", int], Iterable[tuple[int, int]]]
SAMPLE_IDS_KEPT = 4096  # stream index -> device sample id, for labels that come back late


class HostController:
    """See the module docstring. `adapt` maps captured uint8 inputs, their labels (-1: none), the
    serving model and how many captured inputs it learnt from to an AdaptOutcome; `update` installs
    an AdaptOutcome on the device and returns (new blob id, report)."""
    def __init__(self, device: Device, serving: ServingModel, drift: DriftDetector, log: JsonlLog,
                 adapt: Callable[[np.ndarray, np.ndarray, QuantModel, int], AdaptOutcome] | None,
                 update: Callable[[AdaptOutcome], tuple[int, dict]] | None,
                 capture_samples: int = FIRST_CAPTURE, refine_samples: int = REFINE_CAPTURE, feed: str = "uart",
                 batch: int = 50, max_updates: int | None = None,
                 on_update: Callable[[ServingModel], None] | None = None, label_feed: LabelFeed | None = None,
                 accuracy: AccuracyTrigger | None = None) -> None:
        if feed not in FEEDS:
            raise UserError(f"unknown feed '{feed}': choose one of {', '.join(FEEDS)}")
        self.device = device
        self.serving = serving
        self.drift = drift
        self.log = log
        self.adapt = adapt
        self.update = update
        self.capture_samples = capture_samples
        self.refine_samples = refine_samples
        self.feed = feed
        self.batch = batch
        self.max_updates = max_updates
        self.on_update = on_update  # e.g. save the installed model, so a later session knows the device's blob
        self.label_feed = label_feed
        self.accuracy = accuracy
        self.labels: dict[int, int] = {}  # stream index -> class the field returned
        self.captured_indices: list[int] = []  # stream indices of the inputs captured for the pending adaptation
        self._captured: list[np.ndarray] = []
        self._sample_ids: dict[int, int] = {}  # stream index -> the device's sample id (telemetry count)
        self.alarms_seen: list[int] = []  # sample indices of every drift alarm, across updates
        self._capturing = False
        self._capture_from = 0
        self._capture_goal = 0
        self.window_start = 0
        self._serving_seen = 0  # captured inputs (from the start of captured_indices) the serving model learnt
        self._refining = False  # the current capture refines an update made on a short first capture
        self._alarm_at: int | None = None
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
                self._remember_sample_id(index, res.telemetry["count"])
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
            if self.label_feed is not None:
                for index, label in self.label_feed(self, report.samples):
                    self.label(index, label, report)
            if self._capturing and len(self._captured) >= self._capture_goal:
                self._adapt_and_update(report)
        return report

    def close(self) -> None:
        self._tmp.cleanup()

    # --- labels -----------------------------------------------------------------------------------

    def label(self, index: int, label: int, report: StreamReport) -> None:
        """The field returned the true class of stream sample `index`: store it with the captured
        input, tell the device (LABEL: it counts it against what it served) and feed the accuracy
        trigger with the device's own record of its answer."""
        self.labels[index] = int(label)
        report.labels += 1
        sample_id = self._sample_ids.get(index)
        if sample_id is None:  # served before a re-flash, or too long ago
            self.log.write("label", keep=False, sample=index, label=int(label), counted=False)
            return
        reply = self.device.label(sample_id, label)
        self.log.write("label", keep=False, sample=index, sample_id=sample_id, label=int(label),
                       counted=reply.counted, served=reply.served_top1, device_labeled=reply.labeled,
                       device_correct=reply.correct)
        if not reply.counted:
            return
        report.labels_counted += 1
        if index < len(report.predictions) and reply.served_top1 != report.predictions[index]:
            report.mismatches += 1
            self.log.write("mismatch", sample=index, fields=["label_top1"], serving=self.serving.label)
        if self.accuracy is not None and self.accuracy.update(reply.served_top1 == label):
            report.accuracy_alarms.append(index)
            self.log.write("accuracy_drop", sample=index, **self.accuracy.state())
            if not self._capturing:
                self._start_capture(index, len(report.predictions), report)

    def _remember_sample_id(self, index: int, sample_id: int) -> None:
        self._sample_ids[index] = int(sample_id)
        self._sample_ids.pop(index - SAMPLE_IDS_KEPT, None)

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

    def _start_capture(self, index: int, next_sample: int, report: StreamReport, refine: bool = False) -> None:
        """CAPTURE applies to the device's next inferences: those of the next batch on. A first capture
        is short (capture_samples: an update soon after the alarm); a refining one adds refine_samples
        to it, and the adaptation then uses both."""
        if self.adapt is None or self.update is None:
            return
        if self.max_updates is not None and len(report.updates) >= self.max_updates:
            self.log.write("drift_ignored", sample=index, reason=f"max_updates={self.max_updates} reached")
            return
        count = self.refine_samples if refine else self.capture_samples
        self.device.capture(CAPTURE_INPUT, count)
        self._capturing = True
        self._refining = refine
        self._capture_from = next_sample
        if not refine:
            self._captured, self.captured_indices = [], []
            self._serving_seen = 0  # a new capture series: the serving model learnt none of it
            self._alarm_at = index
        self.window_start = len(self._captured)  # where this capture's inputs begin in captured_indices
        self._capture_goal = len(self._captured) + count
        self.log.write("capture", sample=index, count=count, refine=refine)

    def _take_capture(self, index: int, res: object, sent: np.ndarray) -> None:
        if res.capture is None:
            raise UserError(f"the device stopped sending captures at sample {index}: is the firmware a blob build?")
        which, tensor = res.capture
        image = (np.asarray(tensor, dtype=np.int16).reshape(sent.shape) + 128).astype(np.uint8)
        if which != CAPTURE_INPUT or not np.array_equal(image, sent):
            self.log.write("mismatch", sample=index, fields=["capture"], serving=self.serving.label)
        self._captured.append(image)
        self.captured_indices.append(index)

    def _adapt_and_update(self, report: StreamReport) -> None:
        self._capturing = False
        captured = np.stack(self._captured)
        labels = np.array([self.labels.get(i, -1) for i in self.captured_indices], dtype=np.int64)
        t0 = time.monotonic()
        outcome = self.adapt(captured, labels, self.serving.model, self._serving_seen)
        adapt_s = time.monotonic() - t0
        self.log.write("adapted", seconds=round(adapt_s, 2), ship=outcome.ship, report=outcome.report)
        common = {"after_sample": report.samples, "alarm_at": self._alarm_at,
                  "samples_after_alarm": None if self._alarm_at is None else report.samples - 1 - self._alarm_at,
                  "captured": int(len(captured)), "labels": int(np.sum(labels >= 0)), "refine": self._refining,
                  "adapt_seconds": round(adapt_s, 2), "guard": outcome.report.get("guard")}
        if not outcome.ship:
            # the device keeps its model; the host takes the captured data as its new normal so that
            # the same shift does not raise the same alarm again
            self.drift = build_detector(device_telemetry(self.serving.model, self.serving.monitor, captured),
                                        self.serving.model.num_classes)
            report.declined.append(common)
            self.log.write("no_update", **common)
        else:
            t0 = time.monotonic()
            blob_id, info = self.update(outcome)
            update_s = time.monotonic() - t0
            device = info.pop("device", self.device)  # a re-flash may have reconnected
            if device is not self.device:
                self._sample_ids.clear()  # a re-flashed device counts its samples from 1 again
            self.device = device
            label = f"update-{len(report.updates) + 1}"
            self.serving = ServingModel(outcome.model, outcome.monitor, blob_id, label)
            self._serving_seen = len(captured)  # a refining adaptation judges it by the labels after these
            self.drift = outcome.drift
            self.device.telemetry(1)  # a re-flashed device boots with telemetry off
            entry = {**common, "serving": label, "blob_id": blob_id, "update_seconds": round(update_s, 3), **info}
            report.updates.append(entry)
            self.log.write("updated", **entry)
            if self.on_update is not None:
                self.on_update(self.serving)
        if not self._refining and self.refine_samples > 0:
            self._start_capture(report.samples - 1, report.samples, report, refine=True)


def _value(v: object) -> object:
    if isinstance(v, np.ndarray):
        return [int(x) for x in v]
    if isinstance(v, list | tuple):
        return [int(x) for x in v]
    return int(v)


def _drift_fields(event: dict) -> dict:
    return {k: event[k] for k in ("fired", "statistics", "thresholds", "alarms")}


# --- wiring: the factory model, the adaptation and the two update paths ---------------------------


def reference_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """Sorted indices of up to `samples` training images outside the calibration subset, on which the
    quantization and the factory monitor QSAE were fitted (a small dataset such as digits is all
    calibrated: then any image, and what is measured on them is optimistic)."""
    free = np.setdiff1d(np.arange(n), calibration_indices(n))
    if len(free) == 0:
        free = np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(free, size=min(samples, len(free)), replace=False))


def reference_images(x_train: np.ndarray, samples: int = 5000, seed: int = 1) -> np.ndarray:
    """Training images for the drift detectors' reference (reference_indices: the monitor QSAE's
    reconstruction error is lower on the calibration subset)."""
    return x_train[reference_indices(len(x_train), samples, seed)]


def factory_serving(fw: FirmwareDir) -> ServingModel:
    if fw.params != "blob" or fw.monitor is None or fw.blob_path is None:
        raise UserError(f"{fw.path} is --params static firmware: the host controller needs a blob build "
                        f"(mcuprune compile RUN --board {fw.board.name} --params blob)")
    return ServingModel(fw.model, fw.monitor, parse_header(fw.blob_path.read_bytes()).blob_id, "factory")


def expected_accuracy(serving: ServingModel, x_train: np.ndarray, y_train: np.ndarray, samples: int = 2000,
                      seed: int = 2) -> float:
    """What the labeled-accuracy trigger expects: the model's int8 accuracy on training images outside
    the calibration subset (held out from quantization, not from training: the margin of
    AccuracyTrigger covers the gap to unseen data)."""
    pick = reference_indices(len(x_train), samples, seed)
    pred = run_s8(serving.model, to_int8(x_train[pick])).argmax(axis=1)
    return float(np.mean(pred == np.asarray(y_train)[pick]))


def factory_drift_detector(serving: ServingModel, x_train: np.ndarray, num_classes: int) -> DriftDetector:
    """The default drift monitor (drift_offline.DetectorSpec) fitted on the factory model's telemetry."""
    return build_detector(device_telemetry(serving.model, serving.monitor, reference_images(x_train)), num_classes)


def make_adapter(run_dir: Path, fw: FirmwareDir, seed: int = 0,
                 steps: tuple[str, ...] = CONTROLLER_STEPS) -> Callable[[np.ndarray, np.ndarray, QuantModel, int],
                                                                   AdaptOutcome]:
    """(captured uint8 inputs, their labels (-1: none), the model serving now, how many of the captured
    inputs its adaptation learnt from) -> new parameters for
    `fw`'s architecture (adapt.adapt with `steps`, always from the factory model: every adaptation
    starts from what was trained, not from the previous adaptation)."""
    def run(captured: np.ndarray, labels: np.ndarray, serving: QuantModel, serving_seen: int = 0) -> AdaptOutcome:
        result = adapt(run_dir, fw.model, fw.formats, captured, labels=labels, seed=seed, steps=steps,
                       serving=None if serving is fw.model else serving, serving_seen=serving_seen)
        return AdaptOutcome(result.model, result.monitor_qsae.model, result.monitor, result.report, result.ship)

    return run


def stream_updater(get_device: Callable[[], Device], fw: FirmwareDir,
                   signer: Signer | None = None) -> Callable[[AdaptOutcome], tuple[int, dict]]:
    """Install an adaptation by streaming its blob into the device's spare slot (update.stream_update);
    a signed firmware's blobs are signed with `signer`, its owner's key."""
    if fw.signed and signer is None:
        raise UserError(f"{fw.path} is signed firmware: its updates need the owner's key (--signing-key)")

    def run(outcome: AdaptOutcome) -> tuple[int, dict]:
        blob = fw.update_blob(outcome.model, outcome.monitor, signer=signer)
        rep = stream_update(get_device(), blob, signer=signer)
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
