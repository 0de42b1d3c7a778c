"""Drift detectors: Page-Hinkley by hand, the windowed T² test's false-alarm rate, the monitor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import chi2, f

from mcuprune.controller.detectors import (
    DriftDetector,
    HistogramWindowTest,
    PageHinkley,
    PageHinkleyConfig,
    WindowTestConfig,
    calibrate_lambda,
    detector_from_state,
    hotelling_threshold,
    merge_groups,
    page_hinkley_maxima,
)


def _feed(det, values) -> tuple[list[bool], list[float]]:
    alarms, stats = [], []
    for v in values:
        alarms.append(det.update(v))
        stats.append(det.statistic)
    return alarms, stats


# --- Page-Hinkley --------------------------------------------------------------------------------


def test_page_hinkley_up_against_a_hand_computed_sequence() -> None:
    # z - δ = -0.5, 0.5, 1.5, 1.5, -1.5, 2.5 ; m_t = -0.5, 0, 1.5, 3, 1.5, 4 ; M_t = -0.5 throughout
    det = PageHinkley(PageHinkleyConfig(delta=0.5, lam=3.0, clip=None), mean=0.0, scale=1.0)
    alarms, stats = _feed(det, [0, 1, 2, 2, -1, 3])
    assert stats == [0.0, 0.5, 2.0, 3.5, 2.0, 4.5]
    assert alarms == [False, False, False, True, False, True]


def test_page_hinkley_standardizes_and_detects_decreases() -> None:
    # Same z as a hand sequence for a decrease: z + δ = 0.5, -0.5, -1.5, 1.5 ; m' = 0.5, 0, -1.5, 0 ; M' = 0.5
    det = PageHinkley(PageHinkleyConfig(delta=0.5, lam=1.9, clip=None, direction="down"), mean=10.0, scale=2.0)
    alarms, stats = _feed(det, [10, 8, 6, 12])
    assert stats == [0.0, 0.5, 2.0, 0.5]
    assert alarms == [False, False, True, False]
    up_only = PageHinkley(PageHinkleyConfig(delta=0.5, lam=1.9, clip=None), mean=10.0, scale=2.0)
    assert not any(_feed(up_only, [10, 8, 6, 12])[0])


def test_page_hinkley_clip_stops_a_single_outlier() -> None:
    det = PageHinkley(PageHinkleyConfig(delta=0.5, lam=5.0, clip=4.0), mean=0.0, scale=1.0)
    assert not det.update(1e9)  # clipped to z = 4: statistic 3.5
    assert det.statistic == 3.5
    unclipped = PageHinkley(PageHinkleyConfig(delta=0.5, lam=5.0, clip=None), mean=0.0, scale=1.0)
    assert unclipped.update(1e9)


def test_page_hinkley_transform() -> None:
    det = PageHinkley(PageHinkleyConfig(delta=0.0, lam=100.0, clip=None, transform="log1p"), mean=0.0, scale=1.0)
    det.update(np.e - 1)
    assert det.statistic == pytest.approx(1.0)


def test_page_hinkley_burn_in_estimates_the_reference_and_is_forgotten_on_reset() -> None:
    det = PageHinkley(PageHinkleyConfig(delta=0.5, lam=3.0, burn_in=4))
    assert not any(_feed(det, [1, 2, 3, 4])[0])
    assert det.ready and det.mean == 2.5 and det.scale == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    det.reset()
    assert not det.ready
    fitted = PageHinkley(PageHinkleyConfig()).fit([1.0, 2.0, 3.0, 4.0])
    fitted.update(10.0)
    fitted.reset()
    assert fitted.ready and fitted.mean == 2.5 and fitted.statistic == 0.0
    with pytest.raises(ValueError, match="no reference"):
        PageHinkley(PageHinkleyConfig()).update(1.0)


def test_page_hinkley_maxima_match_the_running_detector() -> None:
    z = np.random.default_rng(0).normal(0.3, 1.0, size=(3, 400))
    for direction in ("up", "down", "both"):
        maxima = page_hinkley_maxima(z, 0.2, direction)
        for row, m in zip(z, maxima, strict=True):
            det = PageHinkley(PageHinkleyConfig(delta=0.2, lam=1e9, clip=None, direction=direction), 0.0, 1.0)
            assert max(_feed(det, row)[1]) == pytest.approx(m)


def test_page_hinkley_vectorized_statistics_match_update() -> None:
    values = np.random.default_rng(7).gamma(2.0, 100.0, size=300)
    for direction in ("up", "down", "both"):
        cfg = PageHinkleyConfig(delta=0.3, lam=1e9, direction=direction, transform="sqrt")
        det = PageHinkley(cfg).fit(values[:100])
        np.testing.assert_allclose(det.statistics(values), _feed(det, values)[1])


def test_calibrated_lambda_keeps_fresh_iid_streams_quiet() -> None:
    rng = np.random.default_rng(1)
    ref = rng.gamma(2.0, 100.0, size=5000)  # skewed, like a reconstruction error
    det = PageHinkley(PageHinkleyConfig(delta=0.25, direction="both", transform="log1p")).fit(ref)
    lam = calibrate_lambda(det, ref, horizon=2000, runs=100, seed=0)
    assert calibrate_lambda(det, ref, horizon=2000, runs=100, quantile=0.5, seed=0) < lam
    det = PageHinkley(PageHinkleyConfig(delta=0.25, lam=lam, direction="both", transform="log1p"), det.mean, det.scale)
    runs_with_alarm = 0
    for _ in range(40):  # fresh draws from the true distribution, not the bootstrap
        det.reset()
        runs_with_alarm += any(_feed(det, rng.gamma(2.0, 100.0, size=2000))[0])
    assert runs_with_alarm == 0
    det.reset()  # ... while a 1.3x larger scale is caught quickly
    alarms, _ = _feed(det, rng.gamma(2.0, 130.0, size=2000))
    assert alarms.index(True) < 400


# --- the windowed test ---------------------------------------------------------------------------


def test_merge_groups_by_hand() -> None:
    # window 100: expected counts 1000, 100, 2, 1, 0.5 -> the last four merge (3.5 < 5 until bin 1 joins)
    assert merge_groups(np.array([10, 1, 0.02, 0.01, 0.005]), 100, 5.0) == [[0], [1, 2, 3, 4]]
    assert merge_groups(np.array([10, 1, 0.04, 0.02]), 100, 5.0) == [[0], [1], [2, 3]]
    assert merge_groups(np.array([0.0, 0.0]), 100, 5.0) == [[0, 1]]
    assert merge_groups(np.array([5.0, 0.0]), 100, 0.0) == [[0], [1]]


def test_hotelling_threshold() -> None:
    assert hotelling_threshold(8, 10**7, 1e-5) == pytest.approx(chi2.isf(1e-5, 8), rel=1e-3)
    assert hotelling_threshold(3, 20, 0.05) == pytest.approx(3 * 19 / 17 * f.isf(0.05, 3, 17))
    with pytest.raises(ValueError):
        hotelling_threshold(5, 5, 0.05)


def _histograms(n: int, probs: np.ndarray, rng: np.random.Generator, d: int = 64) -> np.ndarray:
    """Overdispersed per-sample histograms: bin probabilities drawn per sample (Dirichlet), then counts."""
    p = rng.dirichlet(probs * 30.0, size=n)
    return np.stack([rng.multinomial(d, row) for row in p])


PROBS = np.array([0.6, 0.15, 0.1, 0.06, 0.04, 0.03, 0.0145, 0.005, 0.0005])  # a ReLU-like spike, a sparse tail


def test_window_test_false_alarm_rate_on_iid_data_matches_its_level() -> None:
    """Non-overlapping windows (stride = W) at a per-test level of 5 %: the observed rate is near 5 %."""
    rng = np.random.default_rng(0)
    cfg = WindowTestConfig(window=50, stride=50, alpha=0.05, horizon=50, min_expected=5.0)
    det = HistogramWindowTest(cfg).fit(_histograms(4000, PROBS, rng))
    assert det.config.alpha_per_test == pytest.approx(0.05)
    alarms, _ = _feed(det, _histograms(50 * 600, PROBS, rng))
    rate = sum(alarms) / 600
    assert 0.025 <= rate <= 0.085, rate  # 600 tests: 5 % ± about 2.5 standard errors


def test_window_test_bonferroni_config_is_silent_on_iid_data_and_catches_a_shift() -> None:
    rng = np.random.default_rng(1)
    cfg = WindowTestConfig(window=200, stride=10, alpha=0.01, horizon=20_000, min_expected=20.0)
    det = HistogramWindowTest(cfg).fit(_histograms(5000, PROBS, rng))
    assert det.groups[-1] == [7, 8] and det.keep == list(range(1, len(det.groups)))  # sparse tail merged
    assert not any(_feed(det, _histograms(20_000, PROBS, rng))[0])
    det.reset()
    shifted = PROBS * np.array([0.9, 1.15, 1.15, 1.1, 1.1, 1.1, 1.0, 1.0, 1.0])
    alarms, _ = _feed(det, _histograms(600, shifted / shifted.sum(), rng))
    assert True in alarms and alarms.index(True) < 300


def test_window_test_tests_every_stride_once_full() -> None:
    rng = np.random.default_rng(2)
    det = HistogramWindowTest(WindowTestConfig(window=20, stride=5, min_expected=0.0)).fit(_histograms(500, PROBS, rng))
    stats = _feed(det, _histograms(40, PROBS, rng))[1]
    changes = [i for i in range(1, 40) if stats[i] != stats[i - 1]]
    assert stats[18] == 0.0 and changes == [19, 24, 29, 34, 39]  # samples 20, 25, ... (1-based)


def test_window_test_vectorized_statistics_match_update() -> None:
    rng = np.random.default_rng(8)
    det = HistogramWindowTest(WindowTestConfig(window=30, stride=7)).fit(_histograms(400, PROBS, rng))
    stream = _histograms(200, PROBS, rng)
    stats = _feed(det, stream)[1]
    np.testing.assert_allclose(det.statistics(stream), [stats[i] for i in range(29, 200, 7)])


def test_window_test_burn_in_equals_fitting_the_same_vectors() -> None:
    rng = np.random.default_rng(3)
    ref, stream = _histograms(300, PROBS, rng), _histograms(400, PROBS, rng)
    burned = HistogramWindowTest(WindowTestConfig(window=50, stride=1, burn_in=300))
    fitted = HistogramWindowTest(WindowTestConfig(window=50, stride=1)).fit(ref)
    assert not any(_feed(burned, ref)[0])
    assert burned.crit == fitted.crit and np.allclose(burned.ref_inv, fitted.ref_inv)
    assert _feed(burned, stream) == _feed(fitted, stream)


def test_window_test_on_categories_is_a_test_of_class_frequencies() -> None:
    rng = np.random.default_rng(6)
    cfg = WindowTestConfig(field="top1", window=200, stride=10, alpha=0.01, horizon=10_000, categories=4)
    det = HistogramWindowTest(cfg).fit(rng.integers(0, 4, size=3000))
    assert det.groups == [[0], [1], [2], [3]] and det.keep == [1, 2, 3]  # one-hot rows sum to 1
    assert not any(_feed(det, rng.integers(0, 4, size=10_000))[0])
    det.reset()
    alarms, _ = _feed(det, rng.choice(4, size=400, p=[0.1, 0.2, 0.3, 0.4]))
    assert True in alarms and alarms.index(True) < 300
    with pytest.raises(ValueError, match="category"):
        det.update(4)


def test_category_t2_under_the_exact_multinomial_null_matches_its_level() -> None:
    """For one-hot categories the window mean is multinomial, not normal: its T² still keeps the
    Hotelling/F levels (W = 200, 10 classes of about 20 expected counts each)."""
    rng = np.random.default_rng(9)
    p = np.array([0.107, 0.097, 0.097, 0.103, 0.105, 0.099, 0.091, 0.098, 0.105, 0.098])
    p = p / p.sum()
    det = HistogramWindowTest(WindowTestConfig(field="top1", window=200, categories=10)).fit(
        rng.choice(10, size=5000, p=p))
    assert det.keep == list(range(1, 10))  # class 0 is implied
    ref_p = np.concatenate([[1.0 - det.ref_mean.sum()], det.ref_mean])  # the null: the reference frequencies
    counts = rng.multinomial(200, ref_p, size=400_000)[:, det.keep] / 200.0
    d = counts - det.ref_mean
    t2 = np.einsum("ij,jk,ik->i", d, det.ref_inv, d) / (1 / 200 + 1 / det.ref_n)
    for level in (1e-2, 1e-3):
        observed = np.mean(t2 > hotelling_threshold(len(det.keep), det.ref_n, level))
        assert 0.5 * level < observed < 1.3 * level, (level, observed)


def test_detectors_round_trip_through_json_mid_stream() -> None:
    rng = np.random.default_rng(4)
    hist = HistogramWindowTest(WindowTestConfig(window=30, stride=3)).fit(_histograms(400, PROBS, rng))
    ph = PageHinkley(PageHinkleyConfig(burn_in=50))
    first, rest = _histograms(100, PROBS, rng), _histograms(100, PROBS, rng)
    values = rng.normal(size=200)
    _feed(hist, first)
    _feed(ph, values[:30])  # still burning in
    for det, tail in ((hist, rest), (ph, values[30:])):
        copy = detector_from_state(json.loads(json.dumps(det.state())))
        assert _feed(copy, tail) == _feed(det, tail)


# --- the monitor ---------------------------------------------------------------------------------


def _two_detector_monitor(policy: str = "any") -> DriftDetector:
    cfg = dict(delta=0.5, lam=3.0, clip=None)
    return DriftDetector({"a": PageHinkley(PageHinkleyConfig(field="a", **cfg), 0.0, 1.0),
                         "b": PageHinkley(PageHinkleyConfig(field="b", **cfg), 0.0, 1.0)}, policy=policy)


def test_monitor_any_policy_counts_and_resets() -> None:
    mon = _two_detector_monitor()
    records = [{"a": 2.0, "b": 0.0}] * 3 + [{"a": 0.0, "b": 0.0}] * 2
    drift = [mon.update(r) for r in records]
    assert drift == [False, False, True, False, False]  # a: 1.5, 3.0, 4.5 > 3
    assert mon.alarms == 1 and mon.last_alarm == 3 and mon.detector_alarms == {"a": 1, "b": 0}
    assert mon.detectors["a"].statistic == 0.0  # reset after the drift alarm, then fed zeros
    event = mon.event()
    assert json.loads(json.dumps(event)) == event
    assert event["sample"] == 5 and event["drift"] is False and event["thresholds"] == {"a": 3.0, "b": 3.0}


def test_monitor_event_reports_the_alarm_sample() -> None:
    mon = _two_detector_monitor()
    for _ in range(3):
        mon.update({"a": 2.0, "b": 0.0})
    event = mon.event()
    assert event["drift"] and event["fired"] == ["a"] and event["statistics"]["a"] == 4.5


def test_monitor_all_policy_waits_for_every_detector() -> None:
    mon = _two_detector_monitor("all")
    drift = [mon.update(r) for r in [{"a": 2.0, "b": 0.0}] * 3 + [{"a": 2.0, "b": 3.0}] * 2]
    assert drift == [False, False, False, False, True]  # a fired at 3; b fires at 5 (2.5, 5.0)
    assert mon.alarms == 1 and mon.detector_alarms == {"a": 3, "b": 1}


def test_monitor_round_trips_through_json() -> None:
    rng = np.random.default_rng(5)
    records = [{"a": float(v), "b": float(w)} for v, w in rng.normal(0.2, 1.0, size=(300, 2))]
    mon = _two_detector_monitor()
    for r in records[:120]:
        mon.update(r)
    copy = DriftDetector.from_state(json.loads(json.dumps(mon.state())))
    assert [copy.update(r) for r in records[120:]] == [mon.update(r) for r in records[120:]]
    assert copy.event() == mon.event()


def test_monitor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        DriftDetector({})
    with pytest.raises(ValueError):
        DriftDetector({"a": PageHinkley(PageHinkleyConfig(), 0.0, 1.0)}, policy="majority")


# --- the offline evaluation, end to end on the digits CNN ----------------------------------------


def test_offline_evaluation_on_digits(digits_run) -> None:
    from mcuprune.controller.drift_offline import build_detector, evaluate_false_alarms, evaluate_scenario, prepare
    from mcuprune.controller.scenarios import Scenario
    from mcuprune.target.compile import quantize_run

    run_dir, dataset = digits_run
    model = quantize_run(run_dir)
    setup = prepare(model, dataset, qsae_samples=700, reference_samples=700, qsae_steps=300)
    assert len(setup.reference) == 700
    monitor = build_detector(setup.reference, dataset.num_classes)
    assert set(monitor.detectors) == {"recon_error", "histogram", "top1"}

    fa = evaluate_false_alarms(setup, monitor, dataset, seeds=[0, 1])
    assert fa["samples"] == len(dataset.x_test) and fa["false_alarms"] == [0, 0]
    assert all(0 < v < 1 for v in fa["peak_statistic_over_threshold"].values())

    dark = Scenario("dark", "brightness_contrast", {"contrast": 0.3})
    report = evaluate_scenario(setup, monitor, dataset, dark, shift_at=300, length=700, seeds=[0])
    assert report["false_alarms_before_shift"] == 0
    assert report["delays"][0] is not None and report["delays"][0] <= 300
    assert report["accuracy_after"] < report["accuracy_before"]
    assert set(report["detector_delays"]) == {"recon_error", "histogram", "top1"}
