"""Activation capture: rows agree with the float interpreter, statistics are exact, memory is capped."""

from __future__ import annotations

import numpy as np
import pytest

from mcuprune.compress.activations import apply_rows, capture_activations, layer_rows, weight_matrix
from mcuprune.model.interpreter import trace_f32
from mcuprune.model.ir import Op
from mcuprune.train.datasets import to_float


@pytest.fixture(scope="module")
def digits_model(digits_run):
    from mcuprune.train.training import load_float_model

    run_dir, ds = digits_run
    model, _ = load_float_model(run_dir)
    return model, to_float(ds.x_train[:300])


def test_outputs_are_the_layer_applied_to_the_captured_inputs(digits_model) -> None:
    model, x = digits_model
    caps = capture_activations(model, x, positions=5, seed=0)
    for layer in model.layers:
        if layer.weights is None:
            continue
        cap = caps[layer.name]
        assert cap.inputs.shape[1] == weight_matrix(layer).shape[1]
        assert cap.outputs.shape == (len(cap.inputs), layer.out_shape[-1])
        expected = apply_rows(cap.inputs, weight_matrix(layer), layer.bias, layer.clamp)
        np.testing.assert_allclose(cap.outputs, expected, rtol=1e-5, atol=1e-5)
        assert cap.relu == layer.relu


def test_all_positions_reproduce_the_float_trace(digits_model) -> None:
    """With more positions than pixels every output pixel is kept: the rows are the full trace."""
    model, x = digits_model
    caps = capture_activations(model, x[:20], positions=10_000, max_rows=10**7, seed=0)
    trace = trace_f32(model, x[:20])
    for layer in model.layers:
        if layer.weights is None:
            continue
        full = trace[layer.name].reshape(-1, layer.out_shape[-1])
        got = caps[layer.name].outputs
        # conv rows come in a random pixel order per image: compare them as sorted sets of rows
        assert got.shape == full.shape
        np.testing.assert_allclose(got[np.lexsort(got.T)], full[np.lexsort(full.T)], rtol=1e-5, atol=1e-5)


def test_input_norms_and_means_are_exact_over_every_position(digits_model) -> None:
    model, x = digits_model
    caps = capture_activations(model, x, positions=2, max_rows=50, seed=0)  # sampling must not matter
    trace = trace_f32(model, x)
    for layer in model.layers:
        if layer.weights is None:
            continue
        rows = layer_rows(trace[layer.inputs[0]], layer).reshape(-1, weight_matrix(layer).shape[1]).astype(np.float64)
        np.testing.assert_allclose(caps[layer.name].input_norms, np.linalg.norm(rows, axis=0), rtol=1e-5)
        np.testing.assert_allclose(caps[layer.name].input_means, rows.mean(axis=0), rtol=1e-5, atol=1e-7)
        assert caps[layer.name].positions == len(rows)


def test_rows_are_capped_and_sampling_is_seeded(digits_model) -> None:
    model, x = digits_model
    a = capture_activations(model, x, positions=4, max_rows=100, seed=3)
    b = capture_activations(model, x, positions=4, max_rows=100, seed=3)
    for name, cap in a.items():
        assert len(cap.inputs) == 100 and len(cap.outputs) == 100
        np.testing.assert_array_equal(cap.inputs, b[name].inputs)
    conv = next(layer for layer in model.layers if layer.op is Op.CONV2D)
    full = capture_activations(model, x[:10], positions=4, max_rows=10**6, seed=0)[conv.name]
    assert len(full.inputs) == 10 * 4  # `positions` pixels per image
