"""LABEL (docs/protocol.md): field ground truth for served samples, against the digits CNN's blob
firmware in QEMU. Sample ids are the RESULTs' telemetry counts; the device remembers the last 256
samples and counts the labels that name one of them. The wire format is in test_protocol.py, the
handler under ASan against a model of the device in test_protocol_c.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_emulate import build_stub

from mcuprune.controller.drift_qsae import build_monitor_model
from mcuprune.device.link import DeviceRejected
from mcuprune.device.messages import LABEL_RING, ErrorCode, LabelReply, MsgType, ParamsMode
from mcuprune.device.qemu import QemuDevice
from mcuprune.target.board import load_board
from mcuprune.target.compile import FirmwareDir, compile_run, load_firmware_dir
from mcuprune.train.datasets import to_int8

BOARD = "mps2-an386"


@pytest.fixture(scope="module")
def blob_fw(digits_run: tuple, tmp_path_factory: pytest.TempPathFactory) -> FirmwareDir:
    run_dir, _ = digits_run
    fw_dir = tmp_path_factory.mktemp("label-fw")
    compile_run(run_dir, BOARD, fw_dir, params="blob", monitor_builder=build_monitor_model)
    return load_firmware_dir(fw_dir)


@pytest.mark.qemu
@pytest.mark.slow
def test_labels_of_served_samples_count_against_what_the_device_served(blob_fw: FirmwareDir, digits_run: tuple,
                                                                       tmp_path: Path) -> None:
    _, dataset = digits_run
    x, truth = to_int8(dataset.x_test[:12]), [int(v) for v in dataset.y_test[:12]]
    with QemuDevice(blob_fw.board, blob_fw.elf, memory_file=tmp_path / "slots.mem") as q:
        device = q.device
        classes = device.info().output_size
        assert classes == 10
        assert device.label(1, 0) == LabelReply(1, 0, False, None, 0, 0)  # nothing served since boot yet

        device.telemetry(1)
        results = device.infer_many(list(x))
        ids = [r.telemetry["count"] for r in results]
        assert ids == list(range(1, len(x) + 1))  # the count after each inference: the first sample is 1

        labeled = correct = 0
        for r, sample_id, label in zip(results, ids, truth, strict=True):
            labeled, correct = labeled + 1, correct + (label == r.predicted)
            assert device.label(sample_id, label) == LabelReply(sample_id, label, True, r.predicted, labeled, correct)
        assert correct >= len(x) // 2  # real digits and their true classes: mostly right

        # The same sample again counts again; a wrong class moves `labeled` only.
        wrong = (results[0].predicted + 1) % classes
        labeled += 1
        assert device.label(ids[0], wrong) == LabelReply(ids[0], wrong, True, results[0].predicted, labeled, correct)

        # Never served, or no class of the model: nothing counted.
        assert device.label(ids[-1] + 1000, 3) == LabelReply(ids[-1] + 1000, 3, False, None, labeled, correct)
        with pytest.raises(DeviceRejected, match="BAD_LABEL") as err:
            device.label(ids[0], classes)
        assert (err.value.code, err.value.offending_type) == (ErrorCode.BAD_LABEL, MsgType.LABEL)
        assert device.label(ids[-1] + 1000, 0).labeled == labeled

        # The ring fills with telemetry off too, and on the file path: after 256 more inferences the
        # whole first batch is out of it, the oldest kept is the first of the 256.
        device.telemetry(0)
        rng = np.random.default_rng(0)
        more = q.infer_many(list(rng.integers(-128, 128, (LABEL_RING, *x.shape[1:]), dtype=np.int8)), bulk=True)
        assert all(r.telemetry is None for r in more)
        last = ids[-1] + LABEL_RING
        assert device.telemetry(0)["count"] == last
        for sample_id in (ids[0], ids[-1]):
            assert device.label(sample_id, truth[0]) == LabelReply(sample_id, truth[0], False, None, labeled, correct)
        oldest, newest = ids[-1] + 1, last
        for sample_id, r in ((oldest, more[0]), (newest, more[-1])):
            labeled, correct = labeled + 1, correct + (r.predicted == 0)
            assert device.label(sample_id, 0) == LabelReply(sample_id, 0, True, r.predicted, labeled, correct)

        # Ring and counters live in RAM: after a restart nothing served before it is known.
        q.kill()
        q.start()
        assert q.device.label(newest, 0) == LabelReply(newest, 0, False, None, 0, 0)


@pytest.mark.qemu
def test_static_firmware_answers_label_unknown_type(tmp_path: Path) -> None:
    """--params static firmware (the stub model of test_emulate.py, quick to build) has no LABEL."""
    board = load_board(BOARD)
    result = build_stub(tmp_path, board)
    with QemuDevice(board, result.elf) as q:
        assert q.info().params_mode == ParamsMode.STATIC
        q.infer(np.zeros(q.info().input_size, np.int8))
        with pytest.raises(DeviceRejected, match="UNKNOWN_TYPE") as err:
            q.device.label(1, 0)
        assert (err.value.code, err.value.offending_type) == (ErrorCode.UNKNOWN_TYPE, MsgType.LABEL)
