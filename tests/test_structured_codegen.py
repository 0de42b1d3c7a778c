"""Structured removal shrinks the shapes in the emitted C, and the shrunken model stays bit-exact."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def shrunken(digits_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(original run, run with 3 channels of conv2d2 and 20 neurons of dense4 removed)."""
    from mcuprune.compress.structured import channel_groups, remove_channels
    from mcuprune.train.runs import write_imported_run
    from mcuprune.train.training import load_run_model

    run_dir, _ = digits_run
    model, meta = load_run_model(run_dir)
    group = {g.tensors[0]: i for i, g in enumerate(channel_groups(model))}
    small = remove_channels(model, {group["conv2d2"]: np.array([0, 7, 9]), group["dense4"]: np.arange(20)})
    out = tmp_path_factory.mktemp("shrunken") / "run"
    write_imported_run(out, small, {"dataset": meta["dataset"]})
    return run_dir, out


def _emitted_shapes(model_c: str) -> dict[str, dict[str, int]]:
    """Layer variable -> its integer fields, read from the generated initializers."""
    shapes = {}
    for var, body in re.findall(r"mcup_layer_(\w+) = \{(.*?)\.q = ", model_c):
        shapes[var] = {k: int(v) for k, v in re.findall(r"\.(\w+) = (-?\d+)", body)}
    return shapes


def test_generated_layers_shrink(shrunken: tuple[Path, Path], tmp_path: Path) -> None:
    from mcuprune.codegen.emit import generate_model_sources
    from mcuprune.target.compile import quantize_run

    original, pruned = shrunken
    generate_model_sources(quantize_run(original), "dsp", tmp_path / "a")
    before = _emitted_shapes((tmp_path / "a" / "model.c").read_text())
    generate_model_sources(quantize_run(pruned), "dsp", tmp_path / "b")
    after = _emitted_shapes((tmp_path / "b" / "model.c").read_text())
    assert before["conv2d2"]["out_c"] == 32 and after["conv2d2"]["out_c"] == 29
    assert before["dense4"]["in_features"] == 2 * 2 * 32 and after["dense4"]["in_features"] == 2 * 2 * 29
    assert before["dense4"]["out_features"] == 64 and after["dense4"]["out_features"] == 44
    assert after["dense5"]["in_features"] == 44
    header = (tmp_path / "b" / "model.h").read_text()
    assert "extern const int8_t mcup_param_dense4_weights[5104];" in header  # 44 x (2*2*29), as emitted


@pytest.mark.qemu
def test_shrunken_model_is_bit_exact_on_device(shrunken: tuple[Path, Path], tmp_path: Path) -> None:
    from mcuprune.device.evaluate import evaluate_firmware
    from mcuprune.target.compile import compile_run

    _, pruned = shrunken
    compile_run(pruned, "mps2-an386", tmp_path / "fw")
    result = evaluate_firmware(tmp_path / "fw", progress=False)
    assert result.mismatches == 0 and result.samples == 359
