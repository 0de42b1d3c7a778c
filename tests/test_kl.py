"""KL divergence of layer outputs: histograms, smoothing, the ReLU zero spike, against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy

from mcuprune.compress.kl import channel_kl, histogram, histogram_edges, kl_divergence, output_kl, smoothed


def _scipy_kl(p_counts, q_counts, alpha: float) -> float:
    """The independent oracle: scipy's relative entropy of the alpha-smoothed histograms."""
    p = np.asarray(p_counts, dtype=float) + alpha
    q = np.asarray(q_counts, dtype=float) + alpha
    return float(entropy(p, q))  # scipy normalises both


@pytest.mark.parametrize(("p", "q"), [
    ([10, 20, 30, 40], [40, 30, 20, 10]),
    ([5, 0, 0, 5], [0, 5, 5, 0]),  # empty bins on both sides
    ([100, 0, 1, 0, 0], [100, 0, 1, 0, 0]),  # identical, mostly empty
    ([1000, 3, 2, 1], [200, 300, 300, 207]),  # a zero spike that melts
    ([0, 0, 7], [7, 0, 0]),
])
@pytest.mark.parametrize("alpha", [0.5, 1e-3, 2.0])
def test_kl_matches_scipy_on_known_histograms(p, q, alpha) -> None:
    assert kl_divergence(np.array(p), np.array(q), alpha) == pytest.approx(_scipy_kl(p, q, alpha), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=40))
def test_kl_matches_scipy_on_random_histograms(pairs) -> None:
    p, q = np.array(pairs).T
    got = kl_divergence(p, q)
    assert got == pytest.approx(_scipy_kl(p, q, 0.5), rel=1e-9, abs=1e-12)
    assert got >= -1e-12


def test_smoothing_leaves_no_empty_bin_and_sums_to_one() -> None:
    probs = smoothed(np.array([0, 0, 9, 0]), alpha=0.5)
    assert (probs > 0).all()
    assert probs.sum() == pytest.approx(1.0)
    assert probs[2] == pytest.approx(9.5 / 11.0)


def test_zero_spike_gets_its_own_bin() -> None:
    values = np.array([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    edges = histogram_edges(values, bins=3, zero_spike=True)
    assert edges[0] == 1.0 and edges[-1] == 4.0  # regular bins cover the non-zero values only
    counts = histogram(values, edges, zero_spike=True)
    assert counts.tolist() == [3, 1, 1, 2]  # [zeros, [1,2), [2,3), [3,4]]
    no_spike = histogram(values, histogram_edges(values, bins=3, zero_spike=False), zero_spike=False)
    assert no_spike.sum() == values.size and no_spike.size == 3


def test_out_of_range_values_land_in_the_end_bins() -> None:
    edges = np.array([1.0, 2.0, 3.0])
    counts = histogram(np.array([-5.0, 0.5, 1.5, 2.5, 99.0]), edges, zero_spike=False)
    assert counts.tolist() == [3, 2]


def test_channel_kl_equals_scipy_on_the_histograms_it_builds() -> None:
    rng = np.random.default_rng(0)
    before = np.maximum(rng.normal(0.2, 1.0, 5000), 0.0)  # ReLU output: zero spike
    after = np.maximum(before + rng.normal(0.0, 0.3, 5000), 0.0)
    edges = histogram_edges(before, 32, zero_spike=True)
    p, q = histogram(before, edges, True), histogram(after, edges, True)
    assert p[0] == np.count_nonzero(before == 0) and q[0] == np.count_nonzero(after == 0)
    assert channel_kl(before, after, bins=32) == pytest.approx(_scipy_kl(p, q, 0.5), rel=1e-12)


def test_kl_is_zero_without_change_and_grows_with_the_change() -> None:
    rng = np.random.default_rng(1)
    before = np.maximum(rng.normal(0.0, 1.0, (4000, 3)), 0.0)
    assert output_kl(before, before) == pytest.approx(0.0, abs=1e-12)
    kls = [output_kl(before, before * scale) for scale in (1.0, 0.9, 0.7, 0.4)]
    assert kls == sorted(kls) and kls[-1] > 0.1


def test_output_kl_is_the_mean_over_channels() -> None:
    rng = np.random.default_rng(2)
    before = rng.normal(size=(3000, 4))
    after = before + rng.normal(0.0, 0.5, size=(3000, 4)) * np.arange(4)
    per_channel = [channel_kl(before[:, c], after[:, c], zero_spike=False) for c in range(4)]
    assert output_kl(before, after, zero_spike=False) == pytest.approx(np.mean(per_channel))
    assert per_channel[0] == pytest.approx(0.0, abs=1e-12) and per_channel[3] > per_channel[1]


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        output_kl(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        kl_divergence(np.ones(3), np.ones(4))
