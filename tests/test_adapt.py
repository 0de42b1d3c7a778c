"""Adaptation to drifted inputs (mcuprune.controller.adapt): same architecture out, the input correction, accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from mcuprune.controller.adapt import (
    STEPS,
    InputMap,
    adapt,
    dequantize_model,
    estimate_input_q,
    fit_input_map,
    input_qparams,
    pixel_histograms,
)
from mcuprune.controller.scenarios import brightness_contrast
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import QParams
from mcuprune.quantize import input_floats, quantize_model
from mcuprune.train.datasets import to_int8


def _accuracy(model, x, y) -> float:
    return float((run_s8(model, to_int8(x)).argmax(axis=1) == y).mean())


def _hist(x) -> np.ndarray:
    return np.bincount(np.asarray(x).ravel(), minlength=256)


@pytest.fixture(scope="module")
def digits_deployed(digits_run):
    """The dense digits CNN quantized as `mcuprune compile` does, all layers dense."""
    from mcuprune.target.compile import quantize_run

    run_dir, ds = digits_run
    model = quantize_run(run_dir)
    return run_dir, ds, model, {ql.name: "dense" for ql in model.layers if ql.has_weights}


@pytest.fixture(scope="module")
def digits_pruned(digits_run, tmp_path_factory):
    """The digits CNN pruned (QSAE structured step + KL masks, no fine-tune) and quantized, with the
    smallest formats: every layer sparse, so re-pruning has bytes to trade."""
    from mcuprune.compress.prune import prune_run
    from mcuprune.model.costs import choose_formats
    from mcuprune.target.compile import quantize_run

    run_dir, ds = digits_run
    out = tmp_path_factory.mktemp("digits-pruned") / "p"
    prune_run(run_dir, "qsae", 6000, None, 0, out, qsae_steps=200, evaluate_int8=False)
    model = quantize_run(out)
    return out, ds, model, choose_formats(model.layers, "dsp", "smallest")


# --- the input correction ---------------------------------------------------------------------


def test_moment_matching_recovers_a_known_brightness_contrast_transform(digits_run) -> None:
    _, ds = digits_run
    shifted = brightness_contrast(ds.x_train, brightness=30.0, contrast=0.7)  # 255 -> 208.5: nothing clips
    m = fit_input_map(_hist(shifted), _hist(ds.x_train))
    assert m.gain == pytest.approx(1 / 0.7, rel=0.02)
    assert m.offset == pytest.approx(-30 / 0.7, abs=2.0)
    assert np.abs(m.apply(shifted) - ds.x_train).max() <= 2.0  # pixels back within 2 of 255
    q, clamped = input_qparams(m)
    assert not clamped and q.zero_point == -128 + 30 and q.scale == pytest.approx(1 / 0.7 / 255, rel=0.02)
    # what the first layer computes on is the original image, to within 1 % of full scale
    assert np.abs(input_floats(shifted, q) - ds.x_train / 255.0).max() <= 0.01


def test_the_quantiles_method_recovers_it_too(digits_run) -> None:
    _, ds = digits_run
    shifted = brightness_contrast(ds.x_train, brightness=30.0, contrast=0.7)
    m = fit_input_map(_hist(shifted), _hist(ds.x_train), method="quantiles")
    assert m.gain == pytest.approx(1 / 0.7, rel=0.02) and m.offset == pytest.approx(-30 / 0.7, abs=2.0)


@pytest.mark.parametrize("method, wanted_below", [("quantiles", -128 - 50), ("moments", -128)])
def test_darkening_needs_a_zero_point_below_int8_so_it_is_clamped_and_the_gain_refitted(digits_run, method,
                                                                                      wanted_below) -> None:
    """Undoing -60 needs z = -188. The quantile fit sees that (it ignores the pixels clipped at 0),
    the moments only partly (the clipped background drags the captured mean and spread)."""
    _, ds = digits_run
    dark = brightness_contrast(ds.x_train, brightness=-60.0)
    class_hist = pixel_histograms(ds.x_train, ds.y_train, 10)
    q, info = estimate_input_q(dark, class_hist, lambda q: ds.y_train, method)  # true labels as "predictions"
    assert info["zero_point_wanted"] < wanted_below
    assert info["limited"] and q.zero_point == -128 and info["offset"] == 0.0
    assert 1.0 < info["gain"] <= 4.0  # the gain alone brightens what it can
    assert q.scale == pytest.approx(info["gain"] / 255, rel=1e-4)  # the report rounds the gain


def test_class_weighted_reference_does_not_mistake_a_class_mix_for_a_brightness_change(digits_run) -> None:
    _, ds = digits_run
    class_hist = pixel_histograms(ds.x_train, ds.y_train, 10)
    pick = np.isin(ds.y_train, (0, 8))  # classes with many lit pixels: brighter than average
    x, y = ds.x_train[pick], ds.y_train[pick]
    naive = fit_input_map(_hist(x), class_hist.sum(axis=0))
    _, info = estimate_input_q(x, class_hist, lambda q: y)
    assert abs(info["gain"] - 1) < 0.03 and abs(info["offset"]) < 3  # identity: nothing to correct
    assert abs(naive.gain - 1) > abs(info["gain"] - 1)


def test_gain_is_limited() -> None:
    flat = np.full((10, 4, 4, 1), 100, np.uint8)
    flat[:, 0, 0, 0] = 101  # almost no contrast: the matching gain would be huge
    ref = np.arange(256) % 7 + 1
    q, info = estimate_input_q(flat, np.stack([ref, ref]), lambda q: np.zeros(10, int), method="moments")
    assert info["limited"] and info["gain"] == 4.0 and -128 <= q.zero_point <= 127


def test_reference_interpreter_uses_the_first_layers_input_quantization(digits_deployed) -> None:
    """An exact brightness shift (+20, no clipping) undone by zero point -108: same logits bit for bit,
    padding included (it holds the zero point, i.e. the corrected 0)."""
    _, ds, model, _ = digits_deployed
    x = np.minimum(ds.x_test, 235).astype(np.uint8)
    shifted_q = QParams(1 / 255, -108)
    output_qs = [ql.output_q for ql in model.layers]
    layers = quantize_model(dequantize_model(model), input_q=shifted_q, output_qs=output_qs).layers
    from dataclasses import replace

    moved = replace(model, input_q=shifted_q, layers=tuple(layers))
    assert np.array_equal(run_s8(moved, to_int8(x + 20)), run_s8(model, to_int8(x)))
    assert not np.array_equal(run_s8(model, to_int8(x + 20)), run_s8(model, to_int8(x)))


# --- adapt() ----------------------------------------------------------------------------------


def test_no_step_gives_the_deployed_parameters_back(digits_deployed) -> None:
    run_dir, ds, model, formats = digits_deployed
    result = adapt(run_dir, model, formats, ds.x_train[:100], steps=(), train_images=ds.x_train,
                   train_labels=ds.y_train)
    for old, new in zip(model.layers, result.model.layers, strict=True):
        assert old.input_q == new.input_q and old.output_q == new.output_q
        for f in ("weights", "bias", "multiplier", "shift"):
            assert (getattr(old, f) is None and getattr(new, f) is None) or np.array_equal(getattr(old, f),
                                                                                              getattr(new, f))
    assert result.monitor is None and result.monitor_qsae is None


def test_all_steps_keep_the_architecture_formats_and_budget(digits_pruned) -> None:
    from mcuprune.codegen.emit import architecture_hash
    from mcuprune.controller.detectors import DriftDetector
    from mcuprune.controller.drift_qsae import penultimate_q
    from mcuprune.model.formats import pack, unpack

    run_dir, ds, model, formats = digits_pruned
    formats = dict(formats, conv2d0="dense")  # a dense-format layer: its bytes do not depend on its mask
    shifted = brightness_contrast(ds.x_train[:400], brightness=40.0, contrast=0.6)
    result = adapt(run_dir, model, formats, shifted, steps=STEPS, train_images=ds.x_train, train_labels=ds.y_train,
                   qsae_steps=200)
    new = result.model
    assert [(ql.name, ql.op, ql.in_shape, ql.out_shape) for ql in new.layers] == \
        [(ql.name, ql.op, ql.in_shape, ql.out_shape) for ql in model.layers]
    for variant in ("dsp", "reference"):
        assert architecture_hash(new, variant, formats) == architecture_hash(model, variant, formats)
    for ql in new.layers:
        assert -128 <= ql.input_q.zero_point <= 127 and -128 <= ql.output_q.zero_point <= 127
        if not ql.has_weights:
            continue
        assert ql.weights.dtype == np.int8 and np.abs(ql.weights).max() <= 127
        packed = pack(ql.weights, formats[ql.name])
        assert np.array_equal(unpack(packed), ql.weights)
        if formats[ql.name] != "dense":
            assert not ql.weights[~ql.mask].any()
    report = result.report
    assert report["bytes_after"] <= report["bytes_before"] == report["reprune"]["budget_bytes"]
    assert report["reprune"]["layers"]["conv2d0"]["sparsity"] == 0.0  # dense format: kept whole
    assert any(r["nnz_after"] != r["nnz_before"] for r in report["layers"])  # the masks did change
    assert new.input_q == new.layers[0].input_q != model.input_q
    assert isinstance(result.monitor, DriftDetector)
    assert result.monitor_qsae.model.layers[-1].output_q == penultimate_q(new)
    assert report["monitor"]["qsae_samples"] + report["monitor"]["reference_samples"] == len(shifted)


def test_adapted_model_beats_the_static_one_on_contrast_shifted_digits(digits_deployed) -> None:
    """Measured: static 0.864, adapted 0.978 (= the clean accuracy) on the 360 shifted test digits,
    with 200 shifted training digits captured (unlabeled): the margin asserted is 0.08."""
    run_dir, ds, model, formats = digits_deployed
    shift = dict(brightness=60.0, contrast=0.6)
    captured = brightness_contrast(ds.x_train[:200], **shift)
    result = adapt(run_dir, model, formats, captured, steps=("input", "calibrate"), train_images=ds.x_train,
                   train_labels=ds.y_train)
    x_test = brightness_contrast(ds.x_test, **shift)
    static, adapted = _accuracy(model, x_test, ds.y_test), _accuracy(result.model, x_test, ds.y_test)
    assert adapted >= static + 0.08
    assert adapted >= _accuracy(model, ds.x_test, ds.y_test) - 0.01


def test_adaptation_on_unshifted_data_changes_accuracy_little(digits_deployed) -> None:
    """Measured: 0.978 before and after (200 or 500 clean images captured, 3 seeds)."""
    run_dir, ds, model, formats = digits_deployed
    captured = ds.x_train[np.random.default_rng(1).permutation(len(ds.x_train))[:200]]
    result = adapt(run_dir, model, formats, captured, steps=("input", "calibrate"), train_images=ds.x_train,
                   train_labels=ds.y_train)
    assert abs(result.report["input"]["gain"] - 1) < 0.05
    assert abs(_accuracy(result.model, ds.x_test, ds.y_test) - _accuracy(model, ds.x_test, ds.y_test)) <= 0.01


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=("input", "finetune")), "unknown adaptation step"),
    (dict(captured=np.zeros((120, 8, 8, 1), np.float32)), "uint8 images"),
    (dict(captured=np.zeros((120, 9, 8, 1), np.uint8)), "uint8 images"),
    (dict(captured=np.zeros((5, 8, 8, 1), np.uint8)), "at least 20"),
    (dict(formats={"conv2d0": "dense"}), "formats must give"),
    (dict(input_method="median"), "unknown input method"),
    (dict(compensation="finetune"), "unknown compensation"),
    (dict(steps=("monitor",), captured=np.zeros((50, 8, 8, 1), np.uint8)), "needs at least 100"),
])
def test_bad_arguments_give_one_clear_line(digits_deployed, kwargs, message) -> None:
    run_dir, ds, model, formats = digits_deployed
    captured = kwargs.pop("captured", ds.x_train[:120])
    formats = kwargs.pop("formats", formats)
    with pytest.raises(UserError, match=message) as err:
        adapt(run_dir, model, formats, captured, train_images=ds.x_train, train_labels=ds.y_train, **kwargs)
    assert "\n" not in str(err.value)


def test_constant_captures_are_refused(digits_deployed) -> None:
    run_dir, ds, model, formats = digits_deployed
    with pytest.raises(UserError, match="same pixel value"):
        adapt(run_dir, model, formats, np.full((120, 8, 8, 1), 7, np.uint8), train_images=ds.x_train,
              train_labels=ds.y_train)


def test_input_map_apply_is_affine() -> None:
    assert InputMap(2.0, -10.0).apply(np.array([5, 10])).tolist() == [0.0, 10.0]
    assert InputMap(2.0, 3.0).with_pivot(4.0) == InputMap(2.0, -8.0)
