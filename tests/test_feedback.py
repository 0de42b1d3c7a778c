"""Issue 13's adaptation pieces in isolation: class-prior EM folded into the bias, the temperature,
the labeled-accuracy trigger, the held-out split and guard, tuning with labels, label files."""

from __future__ import annotations

import io
import time
from dataclasses import replace

import numpy as np
import pytest
from scipy.special import softmax

from mcuprune.controller.accuracy import AccuracyTrigger
from mcuprune.controller.adapt import adapt, confidence_decision, dequantize_model, mcnemar_p, split_holdout
from mcuprune.controller.monitor import LabelSource, parse_label_line
from mcuprune.controller.prior import (
    class_confidence,
    em_prior,
    estimate_prior,
    fit_temperature,
    fold_prior,
    last_weighted_layer,
)
from mcuprune.controller.scenarios import brightness_contrast, gaussian_noise, rotation
from mcuprune.controller.shift_match import identify_shift
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_f32, run_s8
from mcuprune.model.ir import RELU
from mcuprune.train.datasets import to_int8


def _accuracy(model, x, y) -> float:
    return float((run_s8(model, to_int8(x)).argmax(axis=1) == y).mean())


def _synthetic(prior: np.ndarray, n: int, seed: int, sigma: float = 0.6):
    """Labels drawn from `prior`, x ~ N(mu_y, sigma^2 I) with the class means on a circle, and the
    logits -|x - mu_k|^2 / (2 sigma^2): their softmax is the exact posterior under a uniform prior
    (calibrated at T = 1)."""
    rng = np.random.default_rng(seed)
    k = len(prior)
    mu = np.stack([np.cos(2 * np.pi * np.arange(k) / k), np.sin(2 * np.pi * np.arange(k) / k)], axis=1)
    y = rng.choice(k, size=n, p=prior)
    x = mu[y] + sigma * rng.normal(size=(n, 2))
    logits = -((x[:, None, :] - mu[None]) ** 2).sum(axis=2) / (2 * sigma**2)
    return y, logits


# --- class prior -----------------------------------------------------------------------------

def test_em_recovers_a_known_prior_from_exact_posteriors() -> None:
    k = 5
    src = np.full(k, 1 / k)
    true = np.array([0.5, 0.2, 0.1, 0.1, 0.1])
    _, logits = _synthetic(true, 20_000, seed=0, sigma=0.4)
    prior, iterations = em_prior(softmax(logits, axis=1), src)
    assert iterations < 200
    assert np.abs(prior - true).max() < 0.02


def test_temperature_fit_undoes_a_known_sharpening() -> None:
    y, logits = _synthetic(np.full(10, 0.1), 20_000, seed=1)
    t_plain = fit_temperature(logits, y)
    assert fit_temperature(3.0 * logits, y) == pytest.approx(3.0 * t_plain, rel=0.05)


def test_prior_is_folded_into_the_last_bias_as_temperature_times_log_ratio(digits_run) -> None:
    from mcuprune.train.training import load_float_model

    run_dir, ds = digits_run
    model, _ = load_float_model(run_dir)
    src = np.full(10, 0.1)
    target = np.full(10, 0.05)
    target[3] = 0.55
    folded = fold_prior(model, 2.0, src, target)
    i = last_weighted_layer(model)
    assert i == len(model.layers) - 1
    delta = folded.layers[i].bias - model.layers[i].bias
    assert np.allclose(delta, 2.0 * np.log(target / src), atol=1e-5)
    x = ds.x_test[:50].astype(np.float32) / 255.0
    assert np.allclose(run_f32(folded, x) - run_f32(model, x), delta, atol=1e-4)
    relu_last = replace(model, layers=model.layers[:-1] + (replace(model.layers[-1], clamp=RELU),))
    assert last_weighted_layer(relu_last) is None


def test_prior_change_is_applied_only_when_label_shift_explains_the_data() -> None:
    """A pure prior change passes both tests; the same posteriors made less confident (damaged
    inputs) fail the consistency test; an unshifted sample fails the likelihood-ratio test."""
    k = 10
    src = np.full(k, 1 / k)
    y_src, src_logits = _synthetic(src, 5000, seed=2)
    conf = class_confidence(src_logits, y_src, 1.0, k)
    shifted = np.full(k, 0.3 / 8)
    shifted[[2, 6]] = 0.35
    _, logits = _synthetic(shifted, 1000, seed=3)
    prior, report = estimate_prior(logits, 1.0, src, conf)
    assert report["applied"] and report["label_shift_consistent"]
    assert prior[[2, 6]].min() > 0.25
    _, damaged = estimate_prior(0.3 * logits, 1.0, src, conf)  # flatter: the inputs are not recognised
    assert not damaged["applied"] and not damaged["label_shift_consistent"]
    _, same = _synthetic(src, 1000, seed=4)
    prior_same, report_same = estimate_prior(same, 1.0, src, conf)
    assert not report_same["applied"] and np.array_equal(prior_same, src)


def test_folding_the_true_prior_raises_accuracy_on_a_shifted_synthetic_stream() -> None:
    k = 10
    shifted = np.full(k, 0.5 / 9)
    shifted[6] = 0.5
    y, logits = _synthetic(shifted, 20_000, seed=5)
    before = np.mean(logits.argmax(axis=1) == y)
    after = np.mean((logits + np.log(shifted / 0.1)).argmax(axis=1) == y)
    assert after > before + 0.02
    assert np.allclose(softmax(logits, axis=1).sum(axis=1), 1.0)


# --- the labeled-accuracy trigger ----------------------------------------------------------------

def test_accuracy_trigger_is_quiet_at_the_expected_accuracy_and_fires_when_it_drops() -> None:
    rng = np.random.default_rng(0)
    trigger = AccuracyTrigger(expected=0.9)
    assert not any(trigger.update(bool(c)) for c in rng.random(10_000) < 0.9)
    dropped = AccuracyTrigger(expected=0.9)
    fired = [i for i, c in enumerate(rng.random(400) < 0.6) if dropped.update(bool(c))]
    assert fired and fired[0] < 100
    assert len(dropped.outcomes) < dropped.window  # cleared after the alarm


def test_accuracy_trigger_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        AccuracyTrigger(expected=0.0)


# --- held-out split and guard ------------------------------------------------------------------

def test_holdout_takes_a_quarter_of_the_unlabeled_captures_and_no_label() -> None:
    y = np.full(200, -1)
    y[:30] = 1
    fit, held = split_holdout(y, seed=0)
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == 200
    assert np.all(y[held] < 0) and len(held) == round(0.25 * 170)  # every label trains


def test_unlabeled_guard_ships_only_a_clear_rise_in_confidence() -> None:
    unlabeled = {"samples": 50, "labeled": 0, "accuracy": None, "confidence": 0.7}
    assert not confidence_decision(unlabeled, dict(unlabeled, confidence=0.715))[0]  # within the margin
    assert not confidence_decision(unlabeled, dict(unlabeled, confidence=0.6))[0]
    assert confidence_decision(unlabeled, dict(unlabeled, confidence=0.8))[0]


# --- adaptation with labels ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_deployed(digits_run):
    from mcuprune.target.compile import quantize_run

    run_dir, ds = digits_run
    model = quantize_run(run_dir)
    return run_dir, ds, model, {ql.name: "dense" for ql in model.layers if ql.has_weights}


def test_labels_teach_what_no_input_statistic_can_rotated_digits(digits_deployed) -> None:
    """Rotated digits: 200 labeled captures + replay lift the int8 model well above the static one
    and above the unlabeled adaptation; the guard, judging by cross-validated labels, ships it."""
    run_dir, ds, model, formats = digits_deployed
    captured = rotation(ds.x_train[:200], 40.0)
    labels = ds.y_train[:200].copy()
    x_test = rotation(ds.x_test, 40.0)
    common = dict(train_images=ds.x_train, train_labels=ds.y_train, seed=0)
    labeled = adapt(run_dir, model, formats, captured, labels=labels,
                    steps=("input", "tune", "calibrate", "guard"), **common)
    unlabeled = adapt(run_dir, model, formats, captured, steps=("input", "calibrate"), **common)
    static = _accuracy(model, x_test, ds.y_test)
    assert _accuracy(labeled.model, x_test, ds.y_test) >= static + 0.1
    assert _accuracy(labeled.model, x_test, ds.y_test) >= _accuracy(unlabeled.model, x_test, ds.y_test) + 0.05
    guard = labeled.report["guard"]
    assert labeled.ship and guard["deployed"]["labeled"] == 200 and guard["adapted"]["cross_validated"]
    assert guard["p_gain"] < 0.05  # labels alone ship only a significant gain
    assert labeled.report["tune"]["labeled"] == 200  # every label trains the shipped model


def test_guard_declines_an_update_on_unshifted_data(digits_deployed) -> None:
    """Clean captures, no labels: nothing to correct, so nothing is predicted to improve."""
    run_dir, ds, model, formats = digits_deployed
    result = adapt(run_dir, model, formats, ds.x_train[:200], steps=("input", "prior", "calibrate", "guard"),
                   train_images=ds.x_train, train_labels=ds.y_train)
    assert not result.ship and not result.report["prior"]["applied"]


def test_tuning_keeps_a_sparse_layers_nonzero_pattern(digits_deployed) -> None:
    """Tuning must not grow a sparse layer past its deployed bytes: its nonzeros stay within the
    deployed ones even when the deployed layer carries no mask."""
    run_dir, ds, model, _ = digits_deployed
    name = next(ql.name for ql in model.layers if ql.has_weights and ql.op.value == "dense")
    layers = []
    for ql in model.layers:
        if ql.name == name:
            w = ql.weights.copy()
            w[:, ::2] = 0
            ql = replace(ql, weights=w, mask=None)
        layers.append(ql)
    sparse = replace(model, layers=tuple(layers))
    formats = {ql.name: ("bitmask" if ql.name == name else "dense") for ql in sparse.layers if ql.has_weights}
    result = adapt(run_dir, sparse, formats, rotation(ds.x_train[:120], 30.0), labels=ds.y_train[:120],
                   steps=("tune", "calibrate"), train_images=ds.x_train, train_labels=ds.y_train, tune_steps=50)
    old = next(ql for ql in sparse.layers if ql.name == name).weights
    new = next(ql for ql in result.model.layers if ql.name == name).weights
    assert not np.any(new[old == 0])


# --- recognising a known corruption -----------------------------------------------------------

def test_known_corruptions_are_recognised_with_their_strength_and_sign(digits_deployed) -> None:
    run_dir, ds, model, _ = digits_deployed
    base, capture = dequantize_model(model), ds.x_train[:200]
    for shifted, family, strength in ((gaussian_noise(capture, 40.0, seed=1), "gaussian_noise", 40.0),
                                      (rotation(capture, 30.0), "rotation", 30.0),
                                      (rotation(capture, -30.0), "rotation", -30.0)):
        match, report = identify_shift(base, shifted, ds.x_train)
        assert match is not None and (match.family, match.strength) == (family, strength), report
        assert report["ratio"] < 0.3


def test_no_corruption_is_claimed_for_clean_relit_or_reweighted_captures(digits_deployed) -> None:
    """A lighting change is the input step's (the affine candidate explains it), a change of class
    mix moves the statistics but no corruption explains it, clean data needs nothing."""
    run_dir, ds, model, _ = digits_deployed
    base = dequantize_model(model)
    few_classes = ds.x_train[np.isin(ds.y_train, [0, 1, 2])][:200]
    for capture in (ds.x_train[:200], brightness_contrast(ds.x_train[:200], 40.0, 0.7), few_classes):
        match, report = identify_shift(base, capture, ds.x_train)
        assert match is None and report["ratio"] > 1.0, report


def test_a_recognised_rotation_is_learnt_without_labels(digits_deployed) -> None:
    """Rotated digits, no labels: the replay rotated as recognised teaches the rotation, which no
    input statistic can, and the guard ships it on the accuracy over rotated held-out training images."""
    run_dir, ds, model, formats = digits_deployed
    common = dict(train_images=ds.x_train, train_labels=ds.y_train, seed=0)
    captured = rotation(ds.x_train[:200], 30.0)
    matched = adapt(run_dir, model, formats, captured, steps=("input", "match", "calibrate", "guard"), **common)
    plain = adapt(run_dir, model, formats, captured, steps=("input", "calibrate"), **common)
    x_test = rotation(ds.x_test, 30.0)
    assert matched.report["match"]["recognised"] == {"family": "rotation", "strength": 30.0}
    assert _accuracy(matched.model, x_test, ds.y_test) >= _accuracy(plain.model, x_test, ds.y_test) + 0.2
    guard = matched.report["guard"]
    assert matched.ship and guard["reason"].startswith("accuracy on matched training images")
    assert guard["adapted"]["accuracy"] > guard["deployed"]["accuracy"] + 0.2


def test_mcnemar_p_counts_only_the_samples_the_models_disagree_on() -> None:
    """Exact one-sided McNemar: 6 of 6 disagreements for the second model is p = 1/64; 3 for and 2
    against (a 50-label 'gain' of one sample) is no evidence; agreement everywhere is none at all."""
    first = np.ones(50, dtype=bool)
    second = first.copy()
    second[:6] = False
    assert mcnemar_p(second, first) == pytest.approx(1 / 64)
    assert mcnemar_p(first, second) == 1.0  # nothing for the second model
    first[10:12], second[3:6] = False, True
    assert mcnemar_p(second, first) == pytest.approx(0.5)  # P(X >= 3 | 5 fair tosses)
    assert mcnemar_p(first, first) == 1.0


def test_labels_must_match_the_captured_inputs(digits_deployed) -> None:
    run_dir, ds, model, formats = digits_deployed
    for labels in (np.zeros(5, int), np.full(120, 10), np.full(120, 0.5)):
        with pytest.raises(UserError, match="labels must be"):
            adapt(run_dir, model, formats, ds.x_train[:120], labels=labels, steps=("tune",),
                  train_images=ds.x_train, train_labels=ds.y_train)


# --- labels known on the host (monitor --labels) -----------------------------------------------------

def test_label_lines_parse_and_bad_ones_name_the_line() -> None:
    assert parse_label_line("12 3", 10, "f") == (12, 3)
    assert parse_label_line("12,3  # operator", 10, "f") == (12, 3)
    assert parse_label_line("   # nothing", 10, "f") is None
    for bad in ("12", "a b", "1 2 3", "-1 2", "4 10"):
        with pytest.raises(UserError, match="f line 7") as err:
            parse_label_line(bad, 10, "f line 7")
        assert "\n" not in str(err.value)


def test_label_file_is_checked_before_the_stream_and_labels_wait_for_their_sample(tmp_path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("5 1\n2 0\n\n# late\n900 4\n")
    source = LabelSource(str(path), 10)
    assert sorted(source(None, 100)) == [(2, 0), (5, 1)]
    assert source(None, 100) == []
    assert source(None, 901) == [(900, 4)]
    path.write_text("5 1\n5 x\n")
    with pytest.raises(UserError, match="line 2"):
        LabelSource(str(path), 10)
    with pytest.raises(UserError, match="no such file"):
        LabelSource(str(tmp_path / "missing.txt"), 10)


def test_labels_from_stdin_arrive_while_the_stream_runs(capsys) -> None:
    source = LabelSource("-", 10, stdin=io.StringIO("3 2\nbad line\n4 9\n"))
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        got += source(None, 10)
        time.sleep(0.01)
    assert sorted(got) == [(3, 2), (4, 9)]
    assert "stdin line 2" in capsys.readouterr().err
