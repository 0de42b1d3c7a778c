"""A pruned model compiles to packed sparse arrays and stays bit-exact on the device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def masked_digits_run(digits_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN with 85 % of every layer's smallest weights zeroed (no fine-tuning needed here)."""
    import torch

    from mcuprune.train.training import _weight_modules, load_torch_model, save_run

    run_dir, _ = digits_run
    net, meta, _ = load_torch_model(run_dir)
    masks = []
    with torch.no_grad():
        for module in _weight_modules(net):
            w = module.weight.numpy()
            mask = np.abs(w) > np.quantile(np.abs(w), 0.85)
            module.weight.mul_(torch.from_numpy(mask).float())
            masks.append(mask)
    out = tmp_path_factory.mktemp("masked-run")
    save_run(out, net, meta, masks)
    return out


@pytest.mark.parametrize("board, objective", [
    ("mps2-an386", "smallest"),
    ("mps2-an386", "fastest"),
    ("mps2-an385", "smallest"),
])
def test_sparse_firmware_is_bit_exact_and_smaller(masked_digits_run: Path, tmp_path: Path, board: str,
                                                  objective: str) -> None:
    from mcuprune.device.evaluate import evaluate_firmware
    from mcuprune.target.compile import compile_run

    dense = compile_run(masked_digits_run, board, tmp_path / "dense-ref", objective=objective)
    result = evaluate_firmware(tmp_path / "dense-ref", progress=False)
    assert result.mismatches == 0 and result.samples == 359
    formats = json.loads((tmp_path / "dense-ref" / "firmware.json").read_text())["formats"]
    assert any(fmt != "dense" for fmt in formats.values()), formats
    dense_bytes = sum(a.nbytes for a in dense.generated.arrays if a.name.endswith("_weights"))
    assert dense.build.model_flash_bytes == dense.generated.param_bytes
    if objective == "smallest":
        assert all(fmt != "dense" for fmt in formats.values()), formats
        assert dense_bytes == 0  # every weight array is packed
    assert result.model_flash_bytes < 0.5 * result.fp32_model_bytes / 4  # well below the dense int8 size


def test_generated_shapes_and_formats_in_source(masked_digits_run: Path, tmp_path: Path) -> None:
    from mcuprune.codegen.emit import generate_model_sources
    from mcuprune.target.compile import quantize_run

    model = quantize_run(masked_digits_run)
    gen = generate_model_sources(model, "dsp", tmp_path, objective="smallest")
    c = (tmp_path / "model.c").read_text()
    for name, fmt in gen.formats.items():
        assert f"mcup_layer_{name}" in c
        assert f"_s8_{fmt}(&mcup_layer_{name}" in c


@pytest.mark.parametrize("board, kernels", [("mps2-an386", "dsp"), ("mps2-an385", "reference")])
def test_block4_forced_firmware_is_bit_exact(masked_digits_run: Path, tmp_path: Path, board: str,
                                             kernels: str) -> None:
    """Every weighted layer in block4 (choose_formats overridden: on these unstructured masks it would
    pick smaller formats), conv and FC kernels on the device == the numpy int8 reference on every input."""
    from unittest import mock

    from mcuprune.codegen import emit
    from mcuprune.device.evaluate import evaluate_firmware
    from mcuprune.model.formats import layer_bytes
    from mcuprune.target.compile import compile_run, quantize_run

    model = quantize_run(masked_digits_run)
    forced = {layer.name: "block4" for layer in model.layers if layer.has_weights}
    with mock.patch.object(emit, "choose_formats", lambda *args, **kwargs: dict(forced)):
        result = compile_run(masked_digits_run, board, tmp_path / "fw", kernels)
    assert result.generated.formats == forced
    c = (tmp_path / "fw" / "src" / "model.c").read_text()
    assert "mcup_conv2d_s8_block4(&mcup_layer_" in c and "mcup_fc_s8_block4(&mcup_layer_" in c
    assert result.build.model_flash_bytes == sum(layer_bytes(la, "block4") for la in model.layers if la.has_weights)
    evaluation = evaluate_firmware(tmp_path / "fw", progress=False, transport="semihosting")
    assert evaluation.samples == 359 and evaluation.mismatches == 0
