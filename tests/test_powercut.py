"""Power-cut trials (mcuprune/powercut.py): QEMU killed at random moments of an update of the real
blob firmware, on a file-backed memory, must always come back serving a model it may serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mcuprune.codegen.blob import parse_header
from mcuprune.controller.drift_qsae import build_monitor_model
from mcuprune.device.powercut import perturbed_model, run_powercut_trials
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import QuantModel
from mcuprune.target.compile import compile_run, load_firmware_dir

BOARD = "mps2-an386"


@pytest.fixture(scope="module")
def blob_fw_dir(digits_run: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir, _ = digits_run
    fw_dir = tmp_path_factory.mktemp("powercut-fw")
    compile_run(run_dir, BOARD, fw_dir, params="blob", monitor_builder=build_monitor_model)
    return fw_dir


def _weighted(model: QuantModel) -> list:
    return [layer for layer in model.layers if layer.has_weights]


@pytest.mark.slow
def test_perturbed_model_keeps_the_architecture_and_changes_the_logits(blob_fw_dir: Path) -> None:
    fw = load_firmware_dir(blob_fw_dir)
    other = perturbed_model(fw.model, 0.5)
    for a, b in zip(_weighted(fw.model), _weighted(other), strict=True):
        np.testing.assert_array_equal(a.weights != 0, b.weights != 0)  # same sparsity structure
        assert np.abs(b.weights.astype(int)).sum() < np.abs(a.weights.astype(int)).sum()
    blob = fw.update_blob(other, fw.monitor)  # raises if the architecture hash differed
    assert parse_header(blob).arch_hash == fw.arch_hash
    assert parse_header(blob).blob_id != parse_header(fw.blob_path.read_bytes()).blob_id
    x = np.random.default_rng(0).integers(-128, 128, (20, *fw.model.input_shape), dtype=np.int8)
    assert not np.array_equal(run_s8(fw.model, x), run_s8(other, x))


@pytest.mark.qemu
@pytest.mark.slow
def test_powercut_trials_all_recover(blob_fw_dir: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_powercut_trials(blob_fw_dir, trials=4, seed=3, workdir=tmp_path, progress=lines.append)
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=1))
    print("\n".join(lines))
    assert result["trials"] == 4 and len(result["details"]) == 4 and len(lines) == 4
    assert result["recovered"] == 4, [d for d in result["details"] if not d["ok"]]
    for d in result["details"]:
        assert "error" not in d
        assert d["served_allowed"] and d["logits_match"]
        assert d["served_blob_id"] in (d["old_blob_id"], d["new_blob_id"])
        if not d["commit_sent"]:
            assert d["served_blob_id"] == d["old_blob_id"]
        if d["commit_acked"]:
            assert d["served_blob_id"] == d["new_blob_id"]
        if d.get("finished"):
            assert d["finish_ok"] and d["after_finish"]["served_blob_id"] == d["new_blob_id"]
    assert result["details"][0]["finished"]  # the first trial always completes its update afterwards
    assert result["timing"]["stream_s"] > 0 and result["timing"]["report"]["bytes_per_second"] > 0
    assert (tmp_path / "slots.mem").stat().st_size == load_firmware_dir(blob_fw_dir).board.slots.size


@pytest.mark.slow
def test_powercut_needs_blob_firmware(blob_fw_dir: Path, tmp_path: Path) -> None:
    static = tmp_path / "static-fw"
    shutil.copytree(blob_fw_dir, static)
    doc = json.loads((static / "firmware.json").read_text())
    doc["params"] = "static"  # what a --params static build says
    (static / "firmware.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"--params static firmware: power-cut trials need .*--params blob"):
        run_powercut_trials(static, trials=1)
    with pytest.raises(UserError, match="not a firmware directory"):
        run_powercut_trials(tmp_path / "nothing", trials=1)
    with pytest.raises(UserError, match="at least 1"):
        run_powercut_trials(blob_fw_dir, trials=0)
