"""KL divergence between a layer's output distribution before and after pruning.

For one output channel, P is the histogram of its values on calibration data with the unpruned
weights and Q the histogram of the same channel with the pruned weights, both over bin edges
taken from the *unpruned* values (so P and Q share their support). Three details matter:

* **ReLU's zero spike.** A ReLU output is exactly 0 for a large fraction of inputs. Exact zeros
  get a bin of their own (bin 0); the remaining bins split [min, max] of the non-zero values.
  Without this the spike would swamp the first regular bin and hide changes near 0.
* **Out-of-range values.** Pruned outputs outside [min, max] of the unpruned ones are counted in
  the first/last regular bin, so no sample is lost (Q keeps the same total as P).
* **Empty bins.** Both histograms get the same additive pseudo-count ``alpha`` per bin (Jeffreys'
  prior with the default 0.5) before normalising, so an empty Q bin where P has mass gives a
  large but finite term instead of infinity, and an empty P bin contributes ~0.

The layer's KL is the mean of the per-channel KLs (in nats), which keeps it comparable between
layers of different widths. KL is 0 when nothing changes, so the budget code (budget.py), not
this module, decides how much divergence to accept.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 64
DEFAULT_ALPHA = 0.5


def histogram_edges(values: np.ndarray, bins: int = DEFAULT_BINS, zero_spike: bool = True) -> np.ndarray:
    """Regular bin edges over the values (non-zero ones when `zero_spike`), `bins` + 1 of them.

    A constant (or empty) set of values gets one unit-wide bin around it."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if zero_spike:
        v = v[v != 0.0]
    if v.size == 0:
        return np.array([-0.5, 0.5])
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12 * max(1.0, abs(lo)):
        return np.array([lo - 0.5, lo + 0.5])
    return np.linspace(lo, hi, bins + 1)


def histogram(values: np.ndarray, edges: np.ndarray, zero_spike: bool = True) -> np.ndarray:
    """Counts per bin: [exact zeros, regular bins...] with `zero_spike`, else the regular bins.

    Values outside the edges land in the first/last regular bin."""
    v = np.asarray(values, dtype=np.float64).ravel()
    regular = len(edges) - 1
    counts = []
    if zero_spike:
        zero = v == 0.0
        counts.append(np.array([np.count_nonzero(zero)]))
        v = v[~zero]
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, regular - 1)
    counts.append(np.bincount(idx, minlength=regular))
    return np.concatenate(counts).astype(np.int64)


def smoothed(counts: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Probabilities (counts + alpha) / (total + alpha * bins): no bin is empty."""
    c = np.asarray(counts, dtype=np.float64) + alpha
    return c / c.sum()


def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray, alpha: float = DEFAULT_ALPHA) -> float:
    """KL(P || Q) in nats between two histograms over the same bins, both smoothed by `alpha`."""
    p, q = smoothed(p_counts, alpha), smoothed(q_counts, alpha)
    if p.shape != q.shape:
        raise ValueError(f"histograms have different bins: {p.shape} vs {q.shape}")
    return float(np.sum(p * np.log(p / q)))


def channel_kl(before: np.ndarray, after: np.ndarray, bins: int = DEFAULT_BINS, zero_spike: bool = True,
               alpha: float = DEFAULT_ALPHA) -> float:
    """KL between one channel's values before and after pruning (edges from `before`)."""
    edges = histogram_edges(before, bins, zero_spike)
    return kl_divergence(histogram(before, edges, zero_spike), histogram(after, edges, zero_spike), alpha)


def output_kl(before: np.ndarray, after: np.ndarray, bins: int = DEFAULT_BINS, zero_spike: bool = True,
              alpha: float = DEFAULT_ALPHA) -> float:
    """Mean over channels (last axis) of the per-channel KL between (rows, C) outputs."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"outputs have different shapes: {before.shape} vs {after.shape}")
    b2, a2 = before.reshape(-1, before.shape[-1]), after.reshape(-1, after.shape[-1])
    return float(np.mean([channel_kl(b2[:, c], a2[:, c], bins, zero_spike, alpha) for c in range(b2.shape[1])]))
