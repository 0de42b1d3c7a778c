"""Offline drift evaluation: the device simulated with the int8 reference interpreter.

Because the device is bit-exact with the reference interpreter, its telemetry (monitor_qsae.
device_telemetry) is computed here without a device, and the detectors are designed and measured
on exactly the numbers the host controller will receive.

Data use (no test image is used for fitting anything):
* the monitor QSAE is trained on `qsae_samples` training images;
* the detectors' references (Page-Hinkley mean/scale and λ, the histogram test's mean/covariance)
  come from the telemetry of `reference_samples` *other* training images;
* streams (scenarios.make_stream) and the false-alarm run use the test split.

The default monitor (DetectorSpec) watches three telemetry fields: the QSAE reconstruction error
(Page-Hinkley), the penultimate activation histogram and the predicted class (windowed T² tests).

Per scenario stream: the index of every drift alarm, the detection delay (the number of shifted
samples seen up to and including the first alarm at or after the shift, ``None`` when there is
none), false alarms before the shift, and the int8 top-1 accuracy before and after the shift; the
same delays for each detector on its own show which signal catches which drift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mcuprune.controller.detectors import (
    DriftDetector,
    HistogramWindowTest,
    PageHinkley,
    PageHinkleyConfig,
    WindowTestConfig,
    calibrate_lambda,
)
from mcuprune.controller.drift_qsae import build_monitor_qsae, device_telemetry
from mcuprune.controller.scenarios import Scenario, make_stream
from mcuprune.model.ir import QuantModel
from mcuprune.model.telemetry import Telemetry
from mcuprune.target.compile import quantize_run
from mcuprune.train.datasets import Dataset, load_dataset

DEFAULT_QSAE_SAMPLES = 5000
DEFAULT_REFERENCE_SAMPLES = 5000


@dataclass(frozen=True)
class DetectorSpec:
    """The default monitor: Page-Hinkley on the QSAE reconstruction error, the window test on the
    activation histogram, and the window test on the predicted class (its frequencies), any of which
    declares drift. Each window test expects at most α = 1e-4 false alarms per 10,000 samples (its
    Bonferroni bound), and λ is 1.25 × the 99.9 % point of the bootstrapped 10,000-sample maximum.
    On the Fashion-MNIST test set, α = 1e-3 let one pass in ten (one ordering in ~450) raise a
    false alarm; α = 1e-4 costs the default scenarios at most ~20 samples of delay
    (bench/drift/README.md)."""
    page_hinkley: PageHinkleyConfig = field(default_factory=lambda: PageHinkleyConfig(
        field="recon_error", delta=0.25, direction="both", transform="log1p", clip=4.0))
    window: WindowTestConfig = field(default_factory=lambda: WindowTestConfig(
        field="histogram", window=200, stride=10, alpha=1e-4, horizon=10_000, min_expected=20.0))
    # categories is filled in with the model's number of classes; None leaves this detector out
    predicted_class: WindowTestConfig | None = field(default_factory=lambda: WindowTestConfig(
        field="top1", window=200, stride=10, alpha=1e-4, horizon=10_000, min_expected=5.0))
    # λ of Page-Hinkley: calibrate_lambda over this horizon, with these runs, quantile and margin
    ph_horizon: int = 10_000
    ph_runs: int = 1000
    ph_quantile: float = 0.999
    ph_margin: float = 1.25
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class DriftSetup:
    model: QuantModel  # the deployed int8 network
    qsae_model: QuantModel  # the int8 monitor QSAE over its penultimate activations
    reference: Telemetry  # telemetry of clean training images the QSAE was not trained on


def prepare(model: QuantModel, dataset: Dataset, qsae_samples: int = DEFAULT_QSAE_SAMPLES,
            reference_samples: int = DEFAULT_REFERENCE_SAMPLES, qsae_steps: int = 2000, seed: int = 0) -> DriftSetup:
    """Train the monitor QSAE and compute reference telemetry on disjoint seeded training subsets."""
    n = len(dataset.x_train)
    if qsae_samples + reference_samples > n:
        qsae_samples = reference_samples = n // 2
    order = np.random.default_rng(seed).permutation(n)
    fit_idx = np.sort(order[:qsae_samples])
    ref_idx = np.sort(order[qsae_samples : qsae_samples + reference_samples])
    qsae_model = build_monitor_qsae(model, dataset.x_train[fit_idx], steps=qsae_steps, seed=seed).model
    reference = device_telemetry(model, qsae_model, dataset.x_train[ref_idx])
    return DriftSetup(model, qsae_model, reference)


def build_detector(reference: Telemetry, num_classes: int, spec: DetectorSpec | None = None) -> DriftDetector:
    """The default DriftDetector with its references fitted to clean telemetry (λ calibrated);
    detectors are named after the telemetry field they watch."""
    spec = spec or DetectorSpec()
    ph_values = getattr(reference, spec.page_hinkley.field)
    ph = PageHinkley(spec.page_hinkley).fit(ph_values)
    lam = calibrate_lambda(ph, ph_values, spec.ph_horizon, runs=spec.ph_runs, quantile=spec.ph_quantile,
                           margin=spec.ph_margin, seed=spec.seed)
    detectors: dict = {spec.page_hinkley.field: PageHinkley(replace(spec.page_hinkley, lam=lam), ph.mean, ph.scale)}
    detectors[spec.window.field] = HistogramWindowTest(spec.window).fit(getattr(reference, spec.window.field))
    if spec.predicted_class is not None:
        cfg = replace(spec.predicted_class, categories=num_classes)
        detectors[cfg.field] = HistogramWindowTest(cfg).fit(getattr(reference, cfg.field))
    return DriftDetector(detectors, policy="any", reset_on_alarm=True)


def clone(monitor: DriftDetector, only: str | None = None) -> DriftDetector:
    """A fresh copy of a monitor (through its serialized state), optionally keeping one detector."""
    state = monitor.state()
    if only is not None:
        state = dict(state, detectors={only: state["detectors"][only]},
                     detector_alarms={only: 0}, fired_since_reset=[])
    return DriftDetector.from_state(state)


def detector_alarms(monitor: DriftDetector, telemetry: Telemetry) -> list[int]:
    """Stream every record through the monitor; the 0-based indices at which it declared drift."""
    fields = {det.config.field for det in monitor.detectors.values()}
    columns = {f: getattr(telemetry, f) for f in fields}
    return [i for i in range(len(telemetry)) if monitor.update({f: columns[f][i] for f in fields})]


def first_delay(alarms: list[int], shift_at: int) -> int | None:
    """Shifted samples seen up to and including the first alarm at or after the shift."""
    after = [a for a in alarms if a >= shift_at]
    return after[0] - shift_at + 1 if after else None


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float | None:
    return round(float(np.mean(pred == y)), 4) if len(y) else None


def evaluate_stream(setup: DriftSetup, monitor: DriftDetector, x: np.ndarray, y: np.ndarray,
                    shifted: np.ndarray) -> dict:
    """Alarms, delays (combined and per detector), pre-shift false alarms and accuracies of one stream."""
    tel = device_telemetry(setup.model, setup.qsae_model, x)
    shift_at = int(np.argmax(shifted)) if shifted.any() else len(shifted)
    alarms = detector_alarms(clone(monitor), tel)
    per_detector = {name: first_delay(detector_alarms(clone(monitor, name), tel), shift_at)
                    for name in monitor.detectors}
    return {
        "alarms": alarms,
        "delay": first_delay(alarms, shift_at),
        "detector_delays": per_detector,
        "false_alarms_before_shift": sum(a < shift_at for a in alarms),
        "accuracy_before": _accuracy(tel.top1[~shifted], y[~shifted]),
        "accuracy_after": _accuracy(tel.top1[shifted], y[shifted]),
        "recon_error_mean_before": round(float(tel.recon_error[~shifted].mean()), 1) if (~shifted).any() else None,
        "recon_error_mean_after": round(float(tel.recon_error[shifted].mean()), 1) if shifted.any() else None,
    }


def evaluate_scenario(setup: DriftSetup, monitor: DriftDetector, dataset: Dataset, scenario: Scenario, shift_at: int,
                      length: int, seeds: list[int], budget: int = 300) -> dict:
    """Run the scenario's stream for each seed and summarize (worst case over seeds for the delay)."""
    runs = [evaluate_stream(setup, monitor, *make_stream(dataset, scenario, shift_at, length, seed)) for seed in seeds]
    delays = [r["delay"] for r in runs]
    detected = [d is not None and d <= budget for d in delays]
    return {
        "scenario": scenario.to_dict(),
        "shift_at": shift_at,
        "length": length,
        "seeds": list(seeds),
        "delays": delays,
        "max_delay": None if None in delays else max(delays),
        "median_delay": None if None in delays else float(np.median(delays)),
        "detected_within_budget": int(sum(detected)),
        "budget": budget,
        "detector_delays": {name: [r["detector_delays"][name] for r in runs] for name in monitor.detectors},
        "false_alarms_before_shift": int(sum(r["false_alarms_before_shift"] for r in runs)),
        "accuracy_before": round(float(np.mean([r["accuracy_before"] for r in runs])), 4),
        "accuracy_after": round(float(np.mean([r["accuracy_after"] for r in runs])), 4),
        "recon_error_mean_before": round(float(np.mean([r["recon_error_mean_before"] for r in runs])), 1),
        "recon_error_mean_after": round(float(np.mean([r["recon_error_mean_after"] for r in runs])), 1),
    }


def false_alarm_probability(monitor: DriftDetector, clean: Telemetry, orders: int, seed: int = 0) -> dict:
    """Over `orders` random orderings of clean telemetry: the fraction of orderings in which each
    detector's statistic, and any detector's, exceeds its threshold at least once (one pass each)."""
    rng = np.random.default_rng(seed)
    columns = {name: getattr(clean, det.config.field) for name, det in monitor.detectors.items()}
    hits = {name: np.zeros(orders, dtype=bool) for name in monitor.detectors}
    for k in range(orders):
        perm = rng.permutation(len(clean))
        for name, det in monitor.detectors.items():
            hits[name][k] = det.statistics(columns[name][perm]).max(initial=0.0) > det.threshold
    any_hit = np.logical_or.reduce(list(hits.values()))
    return {"orders": orders, "per_detector": {name: float(h.mean()) for name, h in hits.items()},
            "any": float(any_hit.mean())}


def evaluate_false_alarms(setup: DriftSetup, monitor: DriftDetector, dataset: Dataset, seeds: list[int],
                          orders: int = 0) -> dict:
    """The whole unshifted test split, once per seed in a seeded order: drift alarms per pass, and the
    largest statistic each detector reached relative to its threshold (the safety margin); with
    `orders` > 0 also false_alarm_probability over that many more random orderings."""
    clean = device_telemetry(setup.model, setup.qsae_model, dataset.x_test)
    alarms, peaks = [], {name: 0.0 for name in monitor.detectors}
    for seed in seeds:
        tel = clean.select(np.random.default_rng(seed).permutation(len(clean)))
        mon = clone(monitor)
        columns = {det.config.field: getattr(tel, det.config.field) for det in mon.detectors.values()}
        count = 0
        for i in range(len(tel)):
            count += mon.update({f: col[i] for f, col in columns.items()})
            stats = mon.event()["statistics"]  # taken before a reset on alarm
            for name, det in mon.detectors.items():
                peaks[name] = max(peaks[name], stats[name] / det.threshold)
        alarms.append(count)
    report = {
        "samples": len(clean),
        "seeds": list(seeds),
        "false_alarms": alarms,
        "peak_statistic_over_threshold": {k: round(v, 3) for k, v in peaks.items()},
        "accuracy": _accuracy(clean.top1, dataset.y_test),
    }
    if orders:
        report["probability_per_pass"] = false_alarm_probability(monitor, clean, orders, seed=max(seeds, default=0) + 1)
    return report


def setup_from_run(run_dir: Path, seed: int = 0) -> tuple[DriftSetup, Dataset]:
    """Quantize a trained run (compiler.quantize_run), load its dataset and prepare() the drift setup."""
    model = quantize_run(run_dir)
    dataset = load_dataset(model.meta["dataset"])
    return prepare(model, dataset, seed=seed), dataset
