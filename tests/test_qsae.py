"""QSAE: int8 fake quantization with a straight-through gradient, sparsity, export to the int8 pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from mcuprune.compress.qsae import (
    QSAE,
    _fake_quant,
    int8_rows,
    load_qsae,
    qsae_to_float_model,
    reconstruction_error,
    save_qsae,
    select_qsae,
    to_uint8_images,
    to_unit,
    train_qsae,
    unused_inputs,
)
from mcuprune.model.interpreter import run_f32, run_s8
from mcuprune.quantize import INPUT_Q, input_floats, quantize_model


def _activations(n: int = 3000, seed: int = 0) -> np.ndarray:
    """ReLU-like vectors with structure: 4 informative features, 2 copies of them, 1 dead, 1 tiny."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    base = np.maximum(z @ rng.normal(size=(4, 4)), 0.0)
    x = np.concatenate([base, base[:, :2] * 0.5, np.zeros((n, 1)), 1e-3 * rng.random((n, 1))], axis=1)
    return x.astype(np.float32)


def _is_int8_per_row(w: np.ndarray) -> bool:
    q, scales = int8_rows(w)
    return bool(np.allclose(q.astype(np.float64) * scales[:, None], w, rtol=1e-6, atol=1e-9))


def test_fake_quant_gives_int8_values_and_passes_gradients_straight_through() -> None:
    import torch

    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    q = _fake_quant(w)
    scale = w.detach().abs().amax(dim=1, keepdim=True) / 127.0
    levels = q.detach() / scale
    assert torch.allclose(levels, torch.round(levels), atol=1e-4)
    assert levels.abs().max() <= 127 + 1e-4
    assert not torch.equal(q.detach(), w.detach())  # it really quantizes
    upstream = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    (q * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # straight-through: d q / d w = 1


def test_trained_weights_are_int8_representable_and_seeded() -> None:
    x = _activations()
    a = train_qsae(x, hidden=4, lam=1e-3, steps=300, seed=7)
    b = train_qsae(x, hidden=4, lam=1e-3, steps=300, seed=7)
    assert _is_int8_per_row(a.w_enc) and _is_int8_per_row(a.w_dec)
    np.testing.assert_array_equal(a.w_enc, b.w_enc)
    np.testing.assert_array_equal(a.b_dec, b.b_dec)
    assert a.w_enc.shape == (4, x.shape[1]) and a.w_dec.shape == (x.shape[1], 4)


def test_l1_removes_dead_and_redundant_inputs_but_not_informative_ones() -> None:
    x = _activations()
    dense = train_qsae(x, hidden=4, lam=0.0, steps=1500, seed=0)
    sparse = train_qsae(x, hidden=4, lam=3e-3, steps=1500, seed=0)
    assert unused_inputs(dense).size == 0  # without L1 nothing is exactly unused
    unused = set(unused_inputs(sparse).tolist())
    assert {6, 7} <= unused  # the dead and the tiny feature
    assert len(unused) < x.shape[1]
    assert reconstruction_error(sparse, x) < 0.2
    assert np.count_nonzero(sparse.w_enc) < np.count_nonzero(dense.w_enc)


def test_reconstruction_error_is_relative_to_predicting_the_mean() -> None:
    x = _activations(500)
    d = x.shape[1]
    mean_only = QSAE(w_enc=np.zeros((2, d), np.float32), b_enc=np.zeros(2, np.float32),
                     w_dec=np.zeros((d, 2), np.float32), b_dec=x.mean(axis=0), x_scale=1.0,
                     input_lo=0.0, input_hi=1.0, lam=0.0)
    assert reconstruction_error(mean_only, x) == pytest.approx(1.0, rel=1e-6)
    good = train_qsae(x, hidden=6, lam=0.0, steps=1500, seed=0)
    assert reconstruction_error(good, x) < 0.1


def test_select_keeps_the_largest_lambda_within_tolerance() -> None:
    x = _activations(2000)
    sel = select_qsae(x, tolerance=0.1, lambdas=(1e-4, 1e-3, 1e-2, 1.0), hidden=6, steps=600, seed=0)
    assert [p["lam"] for p in sel.path] == [1e-4, 1e-3, 1e-2, 1.0]
    within = [p for p in sel.path if p["error"] <= 0.1]
    assert within and sel.qsae.lam == max(p["lam"] for p in within)
    assert sel.path[-1]["unused"] == x.shape[1]  # lambda = 1 kills every input...
    assert sel.qsae.lam < 1.0  # ...so it is not chosen


def test_export_is_an_int8_model_that_reproduces_the_qsae(tmp_path) -> None:
    x = _activations(2000)
    q = train_qsae(x, hidden=4, lam=1e-3, steps=500, seed=0)
    model = qsae_to_float_model(q)
    assert model.input_shape == (1, 1, x.shape[1])
    assert [layer.relu for layer in model.layers] == [True, False]
    # float export == QSAE on inputs inside the training range
    np.testing.assert_allclose(run_f32(model, to_unit(q, x)), q.reconstruct(x), rtol=1e-4, atol=1e-4)
    # the int8 pipeline keeps the QSAE's int8 weights exactly
    images = to_uint8_images(q, x)
    qmodel = quantize_model(model, input_floats(images, INPUT_Q), input_q=INPUT_Q)
    for qlayer, w in zip(qmodel.layers, (q.w_enc, q.w_dec), strict=True):
        np.testing.assert_array_equal(qlayer.weights, int8_rows(w)[0])
    int8_out = run_s8(qmodel, images.astype(np.int16) - 128)
    recon = qmodel.output_q.scale * (int8_out.astype(np.float64) - qmodel.output_q.zero_point)
    assert np.mean((recon - x) ** 2) / np.var(x, axis=0).sum() * x.shape[1] < reconstruction_error(q, x) + 0.05
    save_qsae(q, tmp_path / "q.npz")
    back = load_qsae(tmp_path / "q.npz")
    np.testing.assert_array_equal(back.w_enc, q.w_enc)
    assert back.x_scale == q.x_scale and back.lam == q.lam
