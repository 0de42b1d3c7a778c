"""Drift detectors over the device's telemetry stream, and a monitor that combines them.

Each detector watches one telemetry field (telemetry.Telemetry / its JSON record), is fed one value
per inference with ``update(value) -> bool`` (True when it raises an alarm), forgets its running
statistic with ``reset()``, and round-trips through ``state()`` / ``detector_from_state`` as plain
JSON data.

PageHinkley (a scalar: the QSAE reconstruction error)
    The value is transformed (``transform``: none, sqrt or log1p), standardized with a reference
    mean μ and scale σ, and clipped to ±``clip`` (so a single huge outlier cannot raise an alarm
    on its own): z_t = clip((T(x_t) − μ) / σ). The Page-Hinkley statistic for an increase is

        m_t = Σ_{i≤t} (z_i − δ),   M_t = min(0, min_{i≤t} m_i),   alarm when m_t − M_t > λ

    (and for a decrease m'_t = Σ (z_i + δ), M'_t = max(0, max m'_i), alarm when M'_t − m'_t > λ).
    δ is the mean shift, in reference standard deviations, that is tolerated; λ trades delay for
    false alarms (``calibrate_lambda`` picks it from the reference values by simulation). μ and σ
    come from ``fit`` (a reference sample) or, with ``burn_in`` = N, from the first N values seen.

HistogramWindowTest (a count vector: the 16-bin histogram of the penultimate activations; or a
category, e.g. the predicted class, as a one-hot vector: a test of the class frequencies)
    A two-sample test between a reference sample (N vectors) and a sliding window of the last W
    vectors. The unit of independence is the *inference*, not the activation (the 64 activations of
    one image are strongly dependent, so a chi-square over pooled activation counts would be far too
    liberal). Sparse bins are merged (adjacent, from the top) until each merged bin expects at
    least ``min_expected`` counts per window, and one merged bin is dropped when the vectors have a
    constant sum (a histogram: the last bin is implied). With the reference mean μ_R and
    covariance S_R of the p remaining components and the window mean μ_W,

        T² = (μ_W − μ_R)ᵀ S_R⁻¹ (μ_W − μ_R) / (1/W + 1/N)

    is, for Gaussian means, Hotelling's T²(p, N − 1) = p(N − 1)/(N − p) · F(p, N − p) under no
    drift (the window is independent of the reference, and S_R is a Wishart estimate from N − 1
    degrees of freedom). The test runs every ``stride`` samples once the window is full, at level
    α_test = α · stride / horizon. Correction across windows (Bonferroni): in any ``horizon``
    consecutive samples at most horizon/stride tests run, so by the union bound the *expected
    number of false alarms per horizon samples* is at most α — whatever the (strong) correlation
    between overlapping windows. This is conservative, and the bound rests on the normal
    approximation of a W-sample mean of count vectors.

DriftDetector
    Feeds each telemetry record to its detectors, declares drift by a policy (``any``: a detector
    fired on this sample; ``all``: every detector has fired since the last reset), counts samples
    and alarms, resets every detector after a drift alarm (``reset_on_alarm``), and describes each
    sample with a JSON-friendly ``event()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import f

TRANSFORMS = ("none", "sqrt", "log1p")
DIRECTIONS = ("up", "down", "both")
POLICIES = ("any", "all")


def _transform(values: np.ndarray | float, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if name == "sqrt":
        return np.sqrt(np.maximum(x, 0.0))
    if name == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    return x


# --- Page-Hinkley -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageHinkleyConfig:
    field: str = "recon_error"  # the telemetry field it watches
    delta: float = 0.5  # tolerated mean shift, in reference standard deviations
    lam: float = 50.0  # alarm threshold on the Page-Hinkley statistic (standardized units)
    burn_in: int = 0  # without a fitted reference: estimate mean and scale from the first burn_in values
    direction: str = "up"  # up: detect an increase; down: a decrease; both
    clip: float | None = 4.0  # clip standardized values to ±clip (robustness to heavy tails)
    transform: str = "none"  # applied before standardizing: none, sqrt, log1p

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got '{self.direction}'")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got '{self.transform}'")
        if self.delta < 0 or self.lam <= 0 or self.burn_in < 0 or (self.clip is not None and self.clip <= 0):
            raise ValueError(f"invalid Page-Hinkley parameters {self}")


class PageHinkley:
    """Page-Hinkley test on a standardized scalar stream (see the module docstring)."""
    kind = "page_hinkley"

    def __init__(self, config: PageHinkleyConfig | None = None, mean: float | None = None,
                 scale: float | None = None) -> None:
        self.config = config or PageHinkleyConfig()
        self.mean = mean
        self.scale = scale
        self.fitted = mean is not None  # a given/fitted reference survives reset(); a burned-in one does not
        self._burn: list[float] = []
        self.reset()

    def fit(self, values: Iterable[float]) -> PageHinkley:
        """Take the reference mean and scale from clean values (after the transform)."""
        t = _transform(np.fromiter(values, dtype=np.float64), self.config.transform)
        if len(t) < 2:
            raise ValueError("Page-Hinkley reference needs at least 2 values")
        self.mean, self.scale = float(t.mean()), float(t.std(ddof=1))
        self.fitted = True
        self.reset()
        return self

    def reset(self) -> None:
        """Forget the running statistic (and a burned-in reference, which is then re-estimated)."""
        self.up = 0.0  # m_t for an increase
        self.up_min = 0.0  # M_t
        self.down = 0.0  # m'_t for a decrease
        self.down_max = 0.0  # M'_t
        self.samples = 0
        if not self.fitted:
            self.mean = self.scale = None
            self._burn = []

    @property
    def ready(self) -> bool:
        return self.mean is not None

    @property
    def statistic(self) -> float:
        """The larger of the watched Page-Hinkley statistics (compare with lam)."""
        stats = []
        if self.config.direction in ("up", "both"):
            stats.append(self.up - self.up_min)
        if self.config.direction in ("down", "both"):
            stats.append(self.down_max - self.down)
        return float(max(stats))

    @property
    def threshold(self) -> float:
        return float(self.config.lam)

    def standardize(self, value: float) -> float:
        z = (float(_transform(value, self.config.transform)) - self.mean) / max(self.scale, 1e-12)
        c = self.config.clip
        return z if c is None else min(max(z, -c), c)

    def statistics(self, values: np.ndarray) -> np.ndarray:
        """The statistic after each value of a stream fed from a reset, fitted detector, without
        alarms or resets (vectorized; what update() would report, for offline evaluation)."""
        if not self.ready:
            raise ValueError("Page-Hinkley statistics need a fitted reference")
        c = self.config
        z = (_transform(values, c.transform) - self.mean) / max(self.scale, 1e-12)
        if c.clip is not None:
            z = np.clip(z, -c.clip, c.clip)
        out = np.zeros(len(z))
        if c.direction in ("up", "both"):
            m = np.cumsum(z - c.delta)
            out = np.maximum(out, m - np.minimum(np.minimum.accumulate(m), 0.0))
        if c.direction in ("down", "both"):
            m = np.cumsum(z + c.delta)
            out = np.maximum(out, np.maximum(np.maximum.accumulate(m), 0.0) - m)
        return out

    def update(self, value: float) -> bool:
        """Feed one value; True when the statistic exceeds lam."""
        self.samples += 1
        if not self.ready:
            if self.config.burn_in == 0:
                raise ValueError("Page-Hinkley has no reference: call fit() or configure a burn_in")
            self._burn.append(float(_transform(value, self.config.transform)))
            if len(self._burn) >= max(self.config.burn_in, 2):
                self.mean, self.scale = float(np.mean(self._burn)), float(np.std(self._burn, ddof=1))
                self._burn = []
            return False
        z = self.standardize(value)
        self.up += z - self.config.delta
        self.up_min = min(self.up_min, self.up)
        self.down += z + self.config.delta
        self.down_max = max(self.down_max, self.down)
        return self.statistic > self.config.lam

    def state(self) -> dict:
        return {"kind": self.kind, "config": asdict(self.config), "mean": self.mean, "scale": self.scale,
                "fitted": self.fitted, "burn": list(self._burn), "up": self.up, "up_min": self.up_min,
                "down": self.down, "down_max": self.down_max, "samples": self.samples}

    @classmethod
    def from_state(cls, state: Mapping) -> PageHinkley:
        det = cls(PageHinkleyConfig(**state["config"]), state["mean"], state["scale"])
        det.fitted = bool(state["fitted"])
        det._burn = [float(v) for v in state["burn"]]
        for key in ("up", "up_min", "down", "down_max"):
            setattr(det, key, float(state[key]))
        det.samples = int(state["samples"])
        return det


def page_hinkley_maxima(z: np.ndarray, delta: float, direction: str = "up") -> np.ndarray:
    """Largest Page-Hinkley statistic reached on each row of standardized, clipped values z (runs, T)."""
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    out = np.zeros(len(z))
    if direction in ("up", "both"):
        m = np.cumsum(z - delta, axis=1)
        out = np.maximum(out, np.max(m - np.minimum(np.minimum.accumulate(m, axis=1), 0.0), axis=1))
    if direction in ("down", "both"):
        m = np.cumsum(z + delta, axis=1)
        out = np.maximum(out, np.max(np.maximum(np.maximum.accumulate(m, axis=1), 0.0) - m, axis=1))
    return out


def calibrate_lambda(detector: PageHinkley, values: np.ndarray, horizon: int, runs: int = 200,
                     quantile: float = 0.99, margin: float = 1.25, seed: int = 0) -> float:
    """λ such that, on i.i.d. resamples of clean `values`, the statistic stays below λ / margin over
    `horizon` samples in a `quantile` fraction of `runs` simulated streams (a bootstrap of the
    no-drift stream; `margin` > 1 covers what a bootstrap of finitely many values cannot show)."""
    if not detector.ready:
        raise ValueError("fit the detector's reference before calibrating lambda")
    c = detector.config
    t = (_transform(values, c.transform) - detector.mean) / max(detector.scale, 1e-12)
    if c.clip is not None:
        t = np.clip(t, -c.clip, c.clip)
    rng = np.random.default_rng(seed)
    maxima = np.concatenate([page_hinkley_maxima(rng.choice(t, size=(min(runs - i, 20), horizon)), c.delta,
                                                 c.direction) for i in range(0, runs, 20)])
    return float(np.quantile(maxima, quantile) * margin)


# --- windowed two-sample test on histograms --------------------------------------------------


@dataclass(frozen=True)
class WindowTestConfig:
    field: str = "histogram"  # the telemetry field it watches (a vector per sample)
    window: int = 200  # W: samples in the sliding window
    stride: int = 10  # test every stride samples once the window is full
    alpha: float = 0.01  # bound on the expected number of false alarms per `horizon` samples
    horizon: int = 10_000
    min_expected: float = 5.0  # merge sparse bins until each expects this many counts per window
    ridge: float = 1e-6  # added to the covariance diagonal, relative to its mean variance
    burn_in: int = 0  # without a fitted reference: use the first burn_in vectors
    categories: int = 0  # > 0: each value is a category index 0..categories-1, tested as a one-hot vector

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1 or self.horizon < self.stride or not 0 < self.alpha < 1:
            raise ValueError(f"invalid window test parameters {self}")
        if self.min_expected < 0 or self.ridge < 0 or self.burn_in < 0 or self.categories < 0:
            raise ValueError(f"invalid window test parameters {self}")

    @property
    def alpha_per_test(self) -> float:
        return self.alpha * self.stride / self.horizon


def _to_list(a: np.ndarray | None) -> list | None:
    return None if a is None else np.asarray(a).tolist()


def _to_array(a: list | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def merge_groups(mean_counts: np.ndarray, window: int, min_expected: float) -> list[list[int]]:
    """Adjacent bins grouped from the top down until each group's expected count per window
    (window × reference mean count) reaches min_expected; a short remainder joins the group below."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    for b in range(len(mean_counts) - 1, -1, -1):
        current.insert(0, b)
        total += float(mean_counts[b]) * window
        if total >= min_expected:
            groups.insert(0, current)
            current, total = [], 0.0
    if current:
        if groups:
            groups[0] = current + groups[0]
        else:
            groups = [current]
    return groups


def hotelling_threshold(p: int, n: int, alpha: float) -> float:
    """Upper alpha quantile of Hotelling's T²(p, n − 1) = p(n − 1)/(n − p) F(p, n − p)."""
    if n <= p:
        raise ValueError(f"a reference of {n} samples cannot estimate a {p}-dimensional covariance")
    return float(p * (n - 1) / (n - p) * f.isf(alpha, p, n - p))


class HistogramWindowTest:
    """Windowed Hotelling T² test of a vector stream against a reference (see the module docstring)."""
    kind = "histogram_window"

    def __init__(self, config: WindowTestConfig | None = None) -> None:
        self.config = config or WindowTestConfig()
        self.fitted = False
        self.groups: list[list[int]] | None = None
        self.keep: list[int] | None = None  # merged components tested (one dropped for a constant sum)
        self.ref_mean: np.ndarray | None = None
        self.ref_inv: np.ndarray | None = None
        self.ref_n = 0
        self.crit = math.inf
        self._burn: list[np.ndarray] = []
        self.reset()

    def fit(self, vectors: np.ndarray) -> HistogramWindowTest:
        """Reference statistics from clean vectors (N, B), or category indices (N,) with `categories`."""
        self._fit(self._vectors(vectors))
        self.fitted = True
        self.reset()
        return self

    def _fit(self, v: np.ndarray) -> None:
        c = self.config
        if v.ndim != 2 or len(v) < 3:
            raise ValueError(f"window test reference needs vectors (N >= 3, B), got {v.shape}")
        self.groups = merge_groups(v.mean(axis=0), c.window, c.min_expected)
        merged = self._merge(v)
        constant_sum = np.ptp(merged.sum(axis=1)) == 0
        self.keep = list(range(1, merged.shape[1])) if constant_sum and merged.shape[1] > 1 else \
            list(range(merged.shape[1]))
        y = merged[:, self.keep]
        cov = np.atleast_2d(np.cov(y, rowvar=False))
        cov = cov + np.eye(len(cov)) * c.ridge * max(float(np.mean(np.diag(cov))), 1e-12)
        self.ref_mean = y.mean(axis=0)
        self.ref_inv = np.linalg.inv(cov)
        self.ref_n = len(y)
        self.crit = hotelling_threshold(len(self.keep), self.ref_n, c.alpha_per_test)

    def _vectors(self, values: np.ndarray) -> np.ndarray:
        """Values as float vectors: one-hot rows when the field holds category indices."""
        k = self.config.categories
        if not k:
            return np.asarray(values, dtype=np.float64)
        idx = np.asarray(values, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= k):
            raise ValueError(f"category index outside 0..{k - 1}")
        return np.eye(k)[idx]

    def _merge(self, v: np.ndarray) -> np.ndarray:
        return np.stack([v[..., g].sum(axis=-1) for g in self.groups], axis=-1)

    def reset(self) -> None:
        """Empty the window (and forget a burned-in reference, which is then rebuilt)."""
        self.samples = 0
        self.pushed = 0  # vectors that entered the window since the reset
        self.t2 = 0.0
        self._window: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._pos = 0
        if not self.fitted:
            self.groups = self.keep = self.ref_mean = self.ref_inv = None
            self.ref_n, self.crit = 0, math.inf
            self._burn = []

    @property
    def ready(self) -> bool:
        return self.ref_mean is not None

    @property
    def statistic(self) -> float:
        return float(self.t2)

    @property
    def threshold(self) -> float:
        return float(self.crit)

    def statistics(self, values: np.ndarray) -> np.ndarray:
        """T² at every test (every stride samples once the window is full) of a stream fed from a
        reset, fitted detector, without alarms or resets (vectorized, for offline evaluation)."""
        if not self.ready:
            raise ValueError("window test statistics need a fitted reference")
        w, stride = self.config.window, self.config.stride
        y = self._merge(self._vectors(values))[:, self.keep] - self.ref_mean
        sums = np.concatenate([np.zeros((1, y.shape[1])), np.cumsum(y, axis=0)])
        ends = np.arange(w, len(y) + 1, stride)
        d = (sums[ends] - sums[ends - w]) / w
        return np.einsum("ij,jk,ik->i", d, self.ref_inv, d) / (1.0 / w + 1.0 / self.ref_n)

    def update(self, vector: np.ndarray) -> bool:
        """Feed one vector; True when the window's T² exceeds the threshold (tested every stride samples)."""
        c = self.config
        self.samples += 1
        v = self._vectors(vector)
        if not self.ready:
            if c.burn_in == 0:
                raise ValueError("window test has no reference: call fit() or configure a burn_in")
            self._burn.append(v)
            if len(self._burn) >= max(c.burn_in, 3):
                self._fit(np.stack(self._burn))
                self._burn = []
            return False
        y = self._merge(v)[self.keep]
        if self._window is None:
            self._window = np.zeros((c.window, len(y)))
            self._sum = np.zeros(len(y))
        self._sum += y - self._window[self._pos]
        self._window[self._pos] = y
        self._pos = (self._pos + 1) % c.window
        self.pushed += 1
        if self.pushed < c.window or (self.pushed - c.window) % c.stride != 0:
            return False
        d = self._sum / c.window - self.ref_mean
        self.t2 = float(d @ self.ref_inv @ d / (1.0 / c.window + 1.0 / self.ref_n))
        return self.t2 > self.crit

    def state(self) -> dict:
        return {"kind": self.kind, "config": asdict(self.config), "fitted": self.fitted, "groups": self.groups,
                "keep": self.keep, "ref_mean": _to_list(self.ref_mean), "ref_inv": _to_list(self.ref_inv),
                "ref_n": self.ref_n, "crit": self.crit, "burn": [b.tolist() for b in self._burn],
                "samples": self.samples, "pushed": self.pushed, "t2": self.t2, "window": _to_list(self._window),
                "sum": _to_list(self._sum), "pos": self._pos}

    @classmethod
    def from_state(cls, state: Mapping) -> HistogramWindowTest:
        det = cls(WindowTestConfig(**state["config"]))
        det.fitted = bool(state["fitted"])
        det.groups = state["groups"]
        det.keep = state["keep"]
        det.ref_mean, det.ref_inv = _to_array(state["ref_mean"]), _to_array(state["ref_inv"])
        det.ref_n, det.crit = int(state["ref_n"]), float(state["crit"])
        det._burn = [np.asarray(b, dtype=np.float64) for b in state["burn"]]
        det.samples, det.pushed, det.t2 = int(state["samples"]), int(state["pushed"]), float(state["t2"])
        det._window, det._sum, det._pos = _to_array(state["window"]), _to_array(state["sum"]), int(state["pos"])
        return det


Detector = PageHinkley | HistogramWindowTest
_KINDS = {PageHinkley.kind: PageHinkley, HistogramWindowTest.kind: HistogramWindowTest}


def detector_from_state(state: Mapping) -> Detector:
    if state.get("kind") not in _KINDS:
        raise ValueError(f"unknown detector kind {state.get('kind')!r}")
    return _KINDS[state["kind"]].from_state(state)


# --- the monitor --------------------------------------------------------------------------------


class DriftDetector:
    """Detectors over telemetry records (mappings field -> value) with an alarm policy and counters."""
    def __init__(self, detectors: Mapping[str, Detector], policy: str = "any", reset_on_alarm: bool = True) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got '{policy}'")
        if not detectors:
            raise ValueError("a drift monitor needs at least one detector")
        self.detectors = dict(detectors)
        self.policy = policy
        self.reset_on_alarm = reset_on_alarm
        self.samples = 0  # records seen
        self.alarms = 0  # drift alarms raised
        self.detector_alarms = {name: 0 for name in self.detectors}  # times each detector fired
        self.last_alarm: int | None = None  # sample number (1-based) of the last drift alarm
        self._fired_now: list[str] = []
        self._fired_since_reset: set[str] = set()
        self._last_stats: dict[str, float] = {}
        self._drift = False

    def update(self, record: Mapping) -> bool:
        """Feed one telemetry record; True when the policy declares drift on this sample."""
        self.samples += 1
        self._fired_now = []
        self._last_stats = {}
        for name, det in self.detectors.items():
            if det.update(record[det.config.field]):
                self._fired_now.append(name)
                self.detector_alarms[name] += 1
            self._last_stats[name] = det.statistic
        self._fired_since_reset.update(self._fired_now)
        if self.policy == "any":
            self._drift = bool(self._fired_now)
        else:
            self._drift = bool(self._fired_now) and self._fired_since_reset == set(self.detectors)
        if self._drift:
            self.alarms += 1
            self.last_alarm = self.samples
            if self.reset_on_alarm:
                self.reset()
        return self._drift

    def reset(self) -> None:
        """Reset every detector (after drift was handled); the counters keep counting."""
        for det in self.detectors.values():
            det.reset()
        self._fired_since_reset = set()

    def event(self) -> dict:
        """The last sample as a JSON-friendly dict (one JSONL line for the host controller's log)."""
        return {
            "sample": self.samples,
            "drift": self._drift,
            "fired": list(self._fired_now),
            "statistics": {name: round(v, 6) for name, v in self._last_stats.items()},
            "thresholds": {name: det.threshold for name, det in self.detectors.items()},
            "alarms": self.alarms,
            "detector_alarms": dict(self.detector_alarms),
            "last_alarm": self.last_alarm,
        }

    def state(self) -> dict:
        return {"policy": self.policy, "reset_on_alarm": self.reset_on_alarm, "samples": self.samples,
                "alarms": self.alarms, "detector_alarms": dict(self.detector_alarms), "last_alarm": self.last_alarm,
                "fired_since_reset": sorted(self._fired_since_reset),
                "detectors": {name: det.state() for name, det in self.detectors.items()}}

    @classmethod
    def from_state(cls, state: Mapping) -> DriftDetector:
        mon = cls({name: detector_from_state(s) for name, s in state["detectors"].items()}, state["policy"],
                  state["reset_on_alarm"])
        mon.samples, mon.alarms = int(state["samples"]), int(state["alarms"])
        mon.detector_alarms = {k: int(v) for k, v in state["detector_alarms"].items()}
        mon.last_alarm = state["last_alarm"]
        mon._fired_since_reset = set(state["fired_since_reset"])
        return mon
