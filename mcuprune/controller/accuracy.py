"""The second trigger: accuracy over the samples the field returned labels for.

The telemetry detectors (detectors.py) see that the inputs changed; only labels say that the
answers got worse. AccuracyTrigger keeps the last `window` labeled outcomes (served class ==
returned label) and raises an alarm when a one-sided binomial test rejects "the accuracy is at
least `expected` − `margin`": P(X ≤ correct | n = window, p = expected − margin) < α_test. The test
runs every `stride` labels once the window is full, at α_test = α · stride / horizon, so that (by
the union bound, as for the window tests in detectors.py) at most α false alarms are expected per
`horizon` labels. `expected` is the deployed model's accuracy on held-out source data; the margin
absorbs the usual gap between that and the field.
"""

from __future__ import annotations

from collections import deque

from scipy.stats import binom

WINDOW = 50
STRIDE = 5
MARGIN = 0.05
ALPHA = 0.01
HORIZON = 10_000


class AccuracyTrigger:
    def __init__(self, expected: float, window: int = WINDOW, margin: float = MARGIN, alpha: float = ALPHA,
                 stride: int = STRIDE, horizon: int = HORIZON) -> None:
        if not 0.0 < expected <= 1.0 or window < 1 or stride < 1:
            raise ValueError(f"bad accuracy trigger: expected {expected}, window {window}, stride {stride}")
        self.expected = expected
        self.window = window
        self.margin = margin
        self.alpha_test = alpha * stride / horizon
        self.stride = stride
        self.outcomes: deque[int] = deque(maxlen=window)
        self.seen = 0
        self.last_p_value: float | None = None

    @property
    def accuracy(self) -> float | None:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else None

    def update(self, correct: bool) -> bool:
        """Record one labeled outcome; True when the accuracy has dropped (the window is then cleared)."""
        self.outcomes.append(int(bool(correct)))
        self.seen += 1
        if len(self.outcomes) < self.window or self.seen % self.stride:
            return False
        p0 = max(self.expected - self.margin, 1e-6)
        self.last_p_value = float(binom.cdf(sum(self.outcomes), self.window, p0))
        if self.last_p_value < self.alpha_test:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        self.outcomes.clear()

    def state(self) -> dict:
        return {"expected": self.expected, "window": self.window, "labels": self.seen,
                "accuracy": self.accuracy, "p_value": self.last_p_value, "alpha_test": self.alpha_test}
