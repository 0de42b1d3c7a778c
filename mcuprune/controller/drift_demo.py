"""The drift demo: the host controller against the real firmware in QEMU, one stream per scenario.

For each scenario (scenarios.SCENARIOS, plus "none": the unshifted test set) a fresh QEMU device
boots the blob firmware on a fresh persistent memory file (so it starts from the factory model),
and the host controller (controller.py) feeds a stream of Fashion-MNIST test images whose samples
from `shift_at` on are shifted. The controller detects the drift from the device's telemetry,
captures inputs, adapts, and updates the device (streamed into the spare slot, or re-flashed).

Reported per scenario: detection delay (shifted samples seen up to and including the first alarm),
false alarms (alarms before the shift), accuracy of the static model (the factory model's int8
reference, which the device matches bit for bit) and of the dynamic device on the samples served
after the update, update size and transfer time, and logit/telemetry mismatches (must be 0).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

from mcuprune.codegen.signing import Signer
from mcuprune.controller import CONTROLLER_STEPS, FIRST_CAPTURE, REFINE_CAPTURE
from mcuprune.controller.accuracy import AccuracyTrigger
from mcuprune.controller.controller import (
    HostController,
    JsonlLog,
    LabelFeed,
    ServingModel,
    StreamReport,
    expected_accuracy,
    factory_drift_detector,
    factory_serving,
    make_adapter,
    reflash_updater,
    stream_updater,
)
from mcuprune.controller.detectors import DriftDetector
from mcuprune.controller.scenarios import Scenario, make_stream
from mcuprune.device.link import Device
from mcuprune.device.qemu import QemuDevice
from mcuprune.errors import UserError
from mcuprune.model.interpreter import BATCH, run_s8
from mcuprune.target.compile import FirmwareDir, load_firmware_dir
from mcuprune.train.datasets import Dataset, to_int8

NONE = Scenario("none", "none")


@dataclass(frozen=True)
class DemoConfig:
    shift_at: int = 1000
    length: int = 4000
    false_alarm_samples: int = 10_000
    capture_samples: int = FIRST_CAPTURE
    refine_samples: int = REFINE_CAPTURE
    labels: int = 0  # labels the field returns per capture (of the first captured samples)
    feed: str = "semihosting"
    update: str = "stream"
    seed: int = 0
    adapt_steps: tuple[str, ...] = CONTROLLER_STEPS


def capture_label_feed(y: np.ndarray, per_capture: int) -> LabelFeed:
    """The field's answer in the demo: the true classes of the first `per_capture` samples of every
    capture (an operator checks that many of the inputs the controller collects), as they arrive."""
    def feed(controller: HostController, served: int) -> list[tuple[int, int]]:
        window = controller.captured_indices[controller.window_start :]
        have = sum(1 for i in window if i in controller.labels)
        fresh = [i for i in window if i not in controller.labels][: max(0, per_capture - have)]
        return [(i, int(y[i])) for i in fresh]

    return feed


def static_predictions(model, x_uint8: np.ndarray) -> np.ndarray:
    return np.concatenate([np.argmax(run_s8(model, to_int8(x_uint8[s : s + BATCH])).astype(np.int64), axis=1)
                           for s in range(0, len(x_uint8), BATCH)])


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float | None:
    return round(float(np.mean(pred == y)), 4) if len(y) else None


def summarize(name: str, report: StreamReport, static_pred: np.ndarray, y: np.ndarray, shift_at: int) -> dict:
    """One scenario's figures from the controller's report and the static model's predictions."""
    dyn = np.asarray(report.predictions)
    n = len(dyn)
    after = [a for a in report.alarms if a >= shift_at]
    first = report.updates[0] if report.updates else None
    # no shift in the stream ("none"): the whole stream
    served_from = first["after_sample"] if first is not None else (shift_at if shift_at < n else 0)
    seg = slice(served_from, n)
    per_update = [{k: u.get(k) for k in ("after_sample", "samples_after_alarm", "captured", "labels", "refine",
                                         "update_bytes", "update_seconds", "adapt_seconds")} for u in report.updates]
    return {
        "name": name,
        "samples": n,
        "shift_at": shift_at if shift_at < n else None,
        "detection_delay": (after[0] - shift_at + 1) if after else None,
        "false_alarms": sum(a < shift_at for a in report.alarms),
        "alarms": list(report.alarms),
        "accuracy_alarms": list(report.accuracy_alarms),
        # accuracies on the samples the updated model served (after the shift if there was no update)
        "evaluated_from": served_from,
        "static_accuracy": _accuracy(static_pred[seg], y[seg]),
        "dynamic_accuracy": _accuracy(dyn[seg], y[seg]),
        "static_accuracy_after_shift": _accuracy(static_pred[shift_at:n], y[shift_at:n]),
        "dynamic_accuracy_after_shift": _accuracy(dyn[shift_at:n], y[shift_at:n]),
        "accuracy_before_shift": _accuracy(dyn[:shift_at], y[:shift_at]),
        "first_update_after_alarm": first.get("samples_after_alarm") if first is not None else None,
        "update_bytes": first["update_bytes"] if first is not None else None,
        "update_seconds": first["update_seconds"] if first is not None else None,
        "adapt_seconds": first["adapt_seconds"] if first is not None else None,
        "labels_returned": report.labels,
        "labels_counted_by_device": report.labels_counted,
        "per_update": per_update,
        "declined": [{k: d.get(k) for k in ("after_sample", "captured", "labels", "refine", "guard")}
                     for d in report.declined],
        "updates": report.updates,
        "mismatches": report.mismatches,
    }


def run_scenario(scenario: Scenario, dataset: Dataset, cfg: DemoConfig,
                 make_controller: Callable[[JsonlLog, LabelFeed | None], HostController], factory: ServingModel,
                 log: JsonlLog) -> tuple[dict, dict]:
    """Stream one scenario through a fresh controller; (summary, timeline arrays)."""
    if scenario.kind == "none":
        length, shift_at = min(cfg.false_alarm_samples, len(dataset.x_test)), cfg.false_alarm_samples
        order = np.random.default_rng(cfg.seed).permutation(len(dataset.x_test))[:length]
        x, y = dataset.x_test[order], dataset.y_test[order]
    else:
        x, y, _ = make_stream(dataset, scenario, cfg.shift_at, cfg.length, cfg.seed)
        shift_at = cfg.shift_at
    log.write("scenario", name=scenario.name, samples=len(x), shift_at=shift_at if shift_at < len(x) else None)
    t0 = time.monotonic()
    controller = make_controller(log, capture_label_feed(y, cfg.labels) if cfg.labels else None)
    try:
        report = controller.run(x, y)
    finally:
        controller.close()
    static_pred = static_predictions(factory.model, x)
    summary = summarize(scenario.name, report, static_pred, y, shift_at)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    log.write("scenario_done", **{k: v for k, v in summary.items() if k not in ("alarms", "updates")})
    timeline = {"static": (static_pred == y).astype(np.int8), "dynamic": (np.asarray(report.predictions) == y)
                .astype(np.int8), "alarms": report.alarms, "updates": [u["after_sample"] for u in report.updates],
                "declined": [d["after_sample"] for d in report.declined],
                "shift_at": shift_at if shift_at < len(x) else None}
    return summary, timeline


def plot_timelines(timelines: dict[str, dict], out: Path, window: int = 200) -> None:
    """Rolling accuracy of the static and the dynamic model per scenario, with shift/alarm/update marks."""
    fig = Figure(figsize=(9, 2.3 * len(timelines)))
    axes = fig.subplots(len(timelines), 1, squeeze=False)
    kernel = np.ones(window) / window
    for ax, (name, tl) in zip(axes[:, 0], timelines.items(), strict=True):
        for key, style in (("static", "C0"), ("dynamic", "C1")):
            acc = np.convolve(tl[key].astype(np.float64), kernel, mode="valid")
            ax.plot(np.arange(window - 1, window - 1 + len(acc)), acc, style, lw=1.2, label=f"{key} model")
        if tl["shift_at"] is not None:
            ax.axvline(tl["shift_at"], color="k", ls="--", lw=1, label="shift")
        for i, a in enumerate(tl["alarms"]):
            ax.axvline(a, color="r", ls=":", lw=1, label="drift alarm" if i == 0 else None)
        for i, u in enumerate(tl["updates"]):
            ax.axvline(u, color="g", lw=1.5, label="update installed" if i == 0 else None)
        for i, d in enumerate(tl.get("declined", [])):
            ax.axvline(d, color="0.5", ls="-.", lw=1, label="no update (guard)" if i == 0 else None)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(f"acc ({window})")
        ax.set_ylim(0.4, 1.0)
        ax.legend(fontsize=7, loc="lower left", ncol=6)
    axes[-1, 0].set_xlabel("sample")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def write_report(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "drift_demo.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| scenario | static acc | dynamic acc | delay | false alarms | 1st update after alarm | updates "
             "| declined | update B | update s | adapt s | labels | mismatches |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["scenarios"]:
        lines.append(f"| {s['name']} | {_pct(s['static_accuracy'])} | {_pct(s['dynamic_accuracy'])} | "
                     f"{s['detection_delay']} | {s['false_alarms']} | {s['first_update_after_alarm']} | "
                     f"{len(s['per_update'])} | {len(s['declined'])} | {s['update_bytes']} | {s['update_seconds']} | "
                     f"{s['adapt_seconds']} | {s['labels_returned']} | {s['mismatches']} |")
    (out_dir / "drift_demo.md").write_text("\n".join(lines) + "\n")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def reference_monitor(drift: DriftDetector) -> Callable[[], DriftDetector]:
    """A factory of fresh copies of a fitted monitor (one per scenario)."""
    state = drift.state()
    return lambda: DriftDetector.from_state(state)


class QemuSession:
    """One emulated board: the blob firmware in QEMU on a persistent memory file (its slots)."""
    def __init__(self, fw: FirmwareDir, memory_file: Path, signer: Signer | None = None) -> None:
        self.fw = fw
        self.memory_file = memory_file
        self.signer = signer  # a signed firmware's owner key: authorises INFER_FILE, UPDATE_BEGIN, EXIT
        self.qemu: QemuDevice | None = None

    def start(self) -> Device:
        self.qemu = QemuDevice(self.fw.board, self.fw.elf, memory_file=self.memory_file, signer=self.signer)
        return self.qemu.start()

    @property
    def device(self) -> Device:
        if self.qemu is None:
            raise RuntimeError("QEMU session not started")
        return self.qemu.device

    def reflash(self, fw: FirmwareDir) -> Device:
        """Stop the board, erase its slots and boot a new ELF (QEMU's version of flashing a board:
        a full chip erase, so the new firmware installs its own factory blob)."""
        self.close(kill=True)
        self.memory_file.unlink(missing_ok=True)
        self.fw = fw
        return self.start()

    def close(self, kill: bool = False) -> None:
        if self.qemu is not None:
            if kill:
                self.qemu.kill()
            else:
                self.qemu.close(check=False)
            self.qemu = None


def run_drift_demo(run_dir: Path, fw_dir: Path, dataset: Dataset, cfg: DemoConfig, out_dir: Path,
                   scenarios: list[Scenario], progress: Callable[[str], None] = print,
                   signer: Signer | None = None) -> dict:
    """Every scenario on a fresh emulated board; writes drift_demo.{json,md,png} and events.jsonl.
    A signed firmware needs `signer`, its owner's key (updates by streaming only)."""
    fw = load_firmware_dir(fw_dir)
    if fw.signed and (signer is None or cfg.update != "stream"):
        raise UserError(f"{fw_dir} is signed firmware: the drift demo needs its owner's key (--signing-key) and "
                        "--update stream")
    factory = factory_serving(fw)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"[drift-demo] fitting the drift detectors on {fw.model.name}'s telemetry of held-out training images")
    monitor_state = factory_drift_detector(factory, dataset.x_train, dataset.num_classes).state()
    expected = expected_accuracy(factory, dataset.x_train, dataset.y_train)
    log = JsonlLog(out_dir / "events.jsonl", append=False)
    adapter = make_adapter(run_dir, fw, seed=cfg.seed, steps=cfg.adapt_steps)
    progress(f"[drift-demo] {cfg.labels} labels per capture; first update after {cfg.capture_samples} captured "
             f"inputs, a refined one after {cfg.refine_samples} more")
    summaries, timelines = [], {}
    scratch = tempfile.TemporaryDirectory(prefix="mcuprune-slots-")  # 16 MB memory files, one per board
    try:
        for scenario in scenarios:
            memory = Path(scratch.name) / f"slots-{scenario.name}.mem"  # a fresh board: it installs the factory blob
            session = QemuSession(fw, memory, signer)
            device = session.start()
            updater = (stream_updater(lambda s=session: s.device, fw, signer) if cfg.update == "stream"
                       else reflash_updater(fw, out_dir / "reflash", session.reflash))

            def make(lg: JsonlLog, label_feed: LabelFeed | None, device: Device = device,
                     updater=updater) -> HostController:
                return HostController(device, factory, DriftDetector.from_state(monitor_state), lg, adapter, updater,
                                      capture_samples=cfg.capture_samples, refine_samples=cfg.refine_samples,
                                      feed=cfg.feed, label_feed=label_feed,
                                      accuracy=None if label_feed is None else AccuracyTrigger(expected))

            progress(f"[drift-demo] scenario {scenario.name}")
            try:
                summary, timeline = run_scenario(scenario, dataset, cfg, make, factory, log)
            finally:
                session.close()
                memory.unlink(missing_ok=True)
            progress(f"[drift-demo]   delay {summary['detection_delay']}, false alarms {summary['false_alarms']}, "
                     f"static {_pct(summary['static_accuracy'])}, dynamic {_pct(summary['dynamic_accuracy'])}, "
                     f"{len(summary['per_update'])} update(s), {len(summary['declined'])} declined, first "
                     f"{summary['first_update_after_alarm']} samples after the alarm, {summary['update_bytes']} B in "
                     f"{summary['update_seconds']} s, mismatches {summary['mismatches']}")
            summaries.append(summary)
            timelines[scenario.name] = timeline
    finally:
        log.close()
        scratch.cleanup()
    results = {"run": str(run_dir), "firmware": str(fw_dir), "board": fw.board.name, "config": asdict(cfg),
               "scenarios": summaries}
    write_report(results, out_dir)
    plot_timelines(timelines, out_dir / "drift_demo.png")
    return results
