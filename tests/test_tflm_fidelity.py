"""mcuprune's own models agree with TFLite Micro's interpreter on every output of every test image.

Before the scales were rounded to float32 (as a .tflite stores them) before the integers were
derived from them, the reference and TFLM disagreed on 1 to 3 of 10,000 Fashion-MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mcuprune.frontend.tflite import export_tflite, import_tflite
from mcuprune.frontend.tflm import run_tflm
from mcuprune.model.interpreter import run_s8
from mcuprune.target.compile import quantize_run
from mcuprune.train.datasets import FASHION_MNIST_DIR, load_dataset, to_int8
from mcuprune.train.training import train_run


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_cnn_matches_tflm_on_all_10000_test_images(tmp_path: Path) -> None:
    dataset = load_dataset("fashion-mnist")
    train_run(dataset, "fashion-mnist", "cnn", epochs=1, out=tmp_path / "run", seed=0)
    model = quantize_run(tmp_path / "run")
    x = to_int8(dataset.x_test)
    exported = export_tflite(model)
    reference, tflm = run_s8(model, x), run_tflm(exported, x)
    assert len(x) == 10_000
    assert np.array_equal(reference, tflm), f"{int((reference != tflm).any(axis=1).sum())} images differ"
    # and the exported file comes back as the same integers
    back = import_tflite(exported, model.name)
    assert np.array_equal(run_s8(back, x[:500]), reference[:500])


def test_digits_cnn_matches_tflm(digits_run) -> None:
    run_dir, dataset = digits_run
    model = quantize_run(run_dir)
    x = to_int8(dataset.x_test)
    np.testing.assert_array_equal(run_s8(model, x), run_tflm(export_tflite(model), x))
