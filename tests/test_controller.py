"""The host controller end to end: drift-demo, monitor over a socket:// URL, powercut-test (CLI),
against the digits CNN's blob firmware in QEMU; and the report arithmetic in isolation."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mcuprune.cli import main
from mcuprune.codegen.blob import parse_header
from mcuprune.controller.controller import StreamReport
from mcuprune.controller.drift_demo import summarize
from mcuprune.controller.drift_qsae import build_monitor_model
from mcuprune.device.link import Device
from mcuprune.device.qemu import QemuDevice, _free_port
from mcuprune.target.compile import compile_run, load_firmware_dir

BOARD = "mps2-an386"
JSON_KEYS = {"name", "detection_delay", "false_alarms", "static_accuracy", "dynamic_accuracy", "update_bytes",
             "update_seconds"}


@pytest.fixture(scope="module")
def blob_fw(digits_run, tmp_path_factory):
    run_dir, _ = digits_run
    fw_dir = tmp_path_factory.mktemp("controller-fw")
    compile_run(run_dir, BOARD, fw_dir, params="blob", monitor_builder=build_monitor_model)
    return load_firmware_dir(fw_dir)


def test_summary_counts_delay_false_alarms_and_the_served_segment() -> None:
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    report = StreamReport(predictions=[0, 1, 2, 3, 0, 0, 0, 7, 8, 9], alarms=[1, 5],
                          updates=[{"after_sample": 7, "update_bytes": 100, "update_seconds": 0.5, "adapt_seconds": 2}])
    static = np.array([0, 1, 2, 3, 0, 0, 0, 0, 0, 9])
    s = summarize("x", report, static, y, shift_at=4)
    assert s["detection_delay"] == 2  # shifted samples 4 and 5 seen when the alarm at 5 fired
    assert s["false_alarms"] == 1  # the alarm at sample 1 came before the shift
    assert s["evaluated_from"] == 7
    assert s["static_accuracy"] == pytest.approx(1 / 3, abs=1e-4) and s["dynamic_accuracy"] == 1.0
    assert s["static_accuracy_after_shift"] == pytest.approx(1 / 6, abs=1e-4)
    assert s["dynamic_accuracy_after_shift"] == pytest.approx(3 / 6, abs=1e-4)


@pytest.mark.qemu
@pytest.mark.slow
def test_drift_demo_cli_detects_adapts_and_streams_the_update(blob_fw, tmp_path: Path, capsys) -> None:
    """Brightness/contrast drift on the digits stream: detected within 300 samples, no alarm before
    the shift, 30 labels returned for the capture (LABEL: the device knew each sample), the adapted
    blob streamed into slot B within 300 samples of the alarm, every logit and telemetry record equal
    to the int8 reference of the model the device was serving at the time. No guard: this shift
    barely hurts the digits CNN, so the guard could rightly decline (tested on its own below)."""
    out = tmp_path / "demo"
    code = main(["drift-demo", "--firmware", str(blob_fw.path), "--scenarios", "brightness_contrast",
                 "--shift-at", "300", "--length", "1000", "--capture", "200", "--labels", "30",
                 "--adapt-steps", "input", "tune", "calibrate", "monitor", "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    (s,) = result["scenarios"]
    assert JSON_KEYS <= set(s)
    assert s["mismatches"] == 0
    assert s["false_alarms"] == 0
    assert s["detection_delay"] is not None and 1 <= s["detection_delay"] <= 300
    assert s["update_bytes"] > 0 and s["update_seconds"] > 0
    assert s["first_update_after_alarm"] <= 300  # a 200-input capture from the next batch of 50 on
    # 30 labels per capture: the first one's and the refining one's (still running when the stream ends);
    # the device still knew every one of those samples
    assert s["labels_returned"] == 60 and s["labels_counted_by_device"] == 60
    (update,) = s["updates"]
    assert update["labels"] == 30 and update["captured"] == 200
    assert update["slot"] == 1 and update["generation"] == 2
    assert update["blob_id"] != parse_header(blob_fw.blob_path.read_bytes()).blob_id
    events = [json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert events.index("drift") < events.index("capture") < events.index("adapted") < events.index("updated")
    assert (out / "drift_demo.png").stat().st_size > 0


def _wait_listening(port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"QEMU did not listen on port {port}")


@pytest.mark.qemu
@pytest.mark.slow
def test_monitor_over_a_socket_url_updates_the_device_and_logs_every_step(blob_fw, tmp_path: Path, capsys) -> None:
    """`mcuprune monitor --port socket://...` against a QEMU it did not start: drift → capture →
    adapt → streamed update, confirmed by a fresh connection's INFO; the update survives a restart."""
    memory = tmp_path / "slots.mem"
    qemu = QemuDevice(blob_fw.board, blob_fw.elf, memory_file=memory)
    port = _free_port()
    proc = subprocess.Popen(qemu.command(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)  # this probe connection releases QEMU's wait=on; the guest boots
        log = tmp_path / "monitor.jsonl"
        from mcuprune.controller.scenarios import SCENARIOS, make_stream
        from mcuprune.train.datasets import load_digits

        _, y, _ = make_stream(load_digits(), SCENARIOS["brightness_contrast"], 300, 900, 0)
        labels = tmp_path / "labels.txt"  # an operator's answers for the first 150 samples, one wrong
        labels.write_text("".join(f"{i} {(y[i] + (i == 7)) % 10}\n" for i in range(150)))
        code = main(["monitor", "--port", f"socket://127.0.0.1:{port}", "--run", str(blob_fw.path),
                     "--scenario", "brightness_contrast", "--shift-at", "300", "--samples", "900",
                     "--capture", "200", "--feed", "semihosting", "--log", str(log), "--labels", str(labels),
                     "--adapt-steps", "input", "calibrate", "monitor", "--json"])  # no guard: see the demo test
        assert code == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["mismatches"] == 0 and len(summary["updates"]) == 1
        assert summary["labels"] == 150 and summary["labels_counted_by_device"] == 150
        answered = [json.loads(line) for line in log.read_text().splitlines() if '"event": "label"' in line]
        assert len(answered) == 150 and answered[-1]["device_labeled"] == 150
        assert answered[-1]["device_correct"] == sum(e["served"] == e["label"] for e in answered)
        assert summary["alarms"] and 300 <= summary["alarms"][0] < 600
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        # the refining capture starts right after the first update; the stream ends before it is full
        assert [e["event"] for e in lines if e["event"] in ("drift", "capture", "adapted", "updated")] == \
            ["drift", "capture", "adapted", "updated", "capture"]
        new_id = summary["updates"][0]["blob_id"]
        with Device(f"socket://127.0.0.1:{port}") as dev:
            info = dev.info()
        assert info.active_blob_id == new_id and info.active_slot == 1
        assert (blob_fw.path / "updates" / f"{new_id:08x}" / "model").is_dir()
    finally:
        proc.kill()
        proc.wait()
    with QemuDevice(blob_fw.board, blob_fw.elf, memory_file=memory) as again:  # power cycle: still the update
        assert again.info().active_blob_id == new_id


@pytest.mark.qemu
@pytest.mark.slow
def test_powercut_test_cli_reports_trials_and_recovered(blob_fw, capsys) -> None:
    code = main(["powercut-test", "--firmware", str(blob_fw.path), "--trials", "2", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trials"] == 2 and result["recovered"] == 2


def test_monitor_refuses_a_static_firmware_dir_with_one_line(digits_run, tmp_path: Path, capsys) -> None:
    run_dir, _ = digits_run
    code = main(["monitor", "--port", "loop://", "--run", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "not a firmware directory" in err


@pytest.mark.qemu
@pytest.mark.slow
def test_drift_demo_reflash_boots_the_adapted_firmware_on_erased_slots(blob_fw, tmp_path: Path, capsys) -> None:
    """--update reflash: the adapted model is compiled into a new ELF whose factory blob is that model;
    QEMU restarts with it on erased slots, and the results after the re-flash still match the int8
    reference of the adapted model sample for sample."""
    out = tmp_path / "demo"
    code = main(["drift-demo", "--firmware", str(blob_fw.path), "--scenarios", "brightness_contrast",
                 "--shift-at", "300", "--length", "1000", "--capture", "200", "--update", "reflash",
                 "--adapt-steps", "input", "calibrate", "monitor", "--out", str(out), "--json"])  # no guard: as above
    assert code == 0
    (s,) = json.loads(capsys.readouterr().out)["scenarios"]
    assert s["mismatches"] == 0 and s["detection_delay"] is not None
    (update,) = s["updates"]
    assert update["mode"] == "reflash"
    fw2 = load_firmware_dir(out / "reflash" / "fw-reflash-1")
    assert update["blob_id"] == parse_header(fw2.blob_path.read_bytes()).blob_id
    assert s["update_bytes"] == fw2.info["firmware_flash_bytes"]  # a re-flash sends the whole image


def test_live_view_table_shows_samples_serving_and_detector_margins() -> None:
    """The monitor's rich table (rendered off-screen) carries the counters the controller keeps."""
    from types import SimpleNamespace

    from rich.console import Console

    from mcuprune.controller.detectors import DriftDetector, PageHinkley, PageHinkleyConfig
    from mcuprune.controller.monitor import LiveView

    ph = PageHinkley(PageHinkleyConfig(field="recon_error", lam=5.0)).fit(np.random.default_rng(0).normal(10, 1, 500))
    ctl = SimpleNamespace(drift=DriftDetector({"recon_error": ph}), serving=SimpleNamespace(label="update-1"),
                          alarms_seen=[120])
    view = LiveView(ctl, every=10)
    for i in range(30):
        ctl.drift.update({"recon_error": 10.0})
        view(i, {"recon_error": 10, "pred": 1, "label": 1 if i % 2 else 0})
    console = Console(record=True, width=120)
    console.print(view._table())
    text = console.export_text()
    assert "30" in text and "update-1" in text and "50.0 %" in text and "recon_error" in text
    view.close()


def test_monitor_on_a_loop_url_fails_with_one_clear_line(blob_fw, capsys) -> None:
    """loop:// echoes our own INFO request back: the controller says so in one line (exit 2, no
    traceback) instead of hanging or taking its own frame for a reply."""
    code = main(["monitor", "--port", "loop://", "--run", str(blob_fw.path), "--samples", "10"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "echoes our INFO request back" in err


@pytest.mark.qemu
@pytest.mark.slow
def test_an_update_the_guard_predicts_no_better_is_not_sent_and_the_alarm_is_not_repeated(blob_fw, digits_run) -> None:
    """Rotated digits with only recalibration allowed: the guard finds no predicted gain, so nothing is
    streamed, the device keeps serving its factory blob, and the host takes the captured data as its
    new normal instead of raising the same alarm again."""
    from mcuprune.controller.controller import (
        HostController,
        JsonlLog,
        factory_drift_detector,
        factory_serving,
        make_adapter,
        stream_updater,
    )
    from mcuprune.controller.scenarios import Scenario, make_stream

    run_dir, ds = digits_run
    factory = factory_serving(blob_fw)
    x, y, _ = make_stream(ds, Scenario("rotation", "rotation", {"degrees": 40.0}), 300, 1400, seed=0)
    with QemuDevice(blob_fw.board, blob_fw.elf) as qemu:
        device = qemu.device
        log = JsonlLog(None)
        controller = HostController(device, factory, factory_drift_detector(factory, ds.x_train, ds.num_classes), log,
                                    make_adapter(run_dir, blob_fw, steps=("calibrate", "monitor", "guard")),
                                    stream_updater(lambda: device, blob_fw), capture_samples=200, refine_samples=0,
                                    feed="semihosting")
        try:
            report = controller.run(x, y)
        finally:
            controller.close()
        assert report.alarms and report.declined and not report.updates
        assert report.mismatches == 0
        assert report.declined[0]["guard"]["ship"] is False
        assert len(report.alarms) == 1  # after the decline, the same shift raises no new alarm
        assert device.info().active_blob_id == factory.blob_id
        assert "no_update" in [e["event"] for e in log.events]
