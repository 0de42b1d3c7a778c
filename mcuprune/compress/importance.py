"""Per-weight importance and each layer's τ candidates (sparsity, bytes, KL per threshold).

Importance of weight w_ij (output i, input feature j) is |w_ij| · ‖x_j‖₂, with ‖x_j‖₂ the norm of
input feature j over every calibration position (capture.py): for a dense layer j is an input
column, for a conv layer an im2col column ([k_h][k_w][c_in]), so the statistic is exact per tap.
A weight that multiplies a feature that is never active costs nothing to remove; a small weight on
a large activation can matter more than a large one on a small activation.

τ candidates are quantiles of the layer's importance at fixed sparsity levels; the mask of τ keeps
the weights with importance > τ (τ = 0 keeps every weight that can matter). Each candidate's KL is
measured on the layer alone: the captured inputs (from the unpruned network) go through the
pruned weights, and kl.output_kl compares the outputs with the captured unpruned ones. Keeping
layers independent is what makes the budget a separable knapsack (budget.py).
"""

from __future__ import annotations

import numpy as np

from mcuprune.compress.activations import LayerCapture, apply_rows
from mcuprune.compress.budget import Candidate, mask_bytes, pareto
from mcuprune.compress.kl import DEFAULT_BINS, output_kl
from mcuprune.model.ir import FloatLayer
from mcuprune.quantize import quantize_weights

# Pruned fraction of a layer's weights per τ candidate: coarse where layers are rarely cut, fine where
# the budget usually lands.
SPARSITY_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.725, 0.75, 0.775, 0.8, 0.825, 0.85, 0.875, 0.9,
                   0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)


def importance(layer: FloatLayer, capture: LayerCapture) -> np.ndarray:
    """|w_ij| · ‖x_j‖₂ in the layer's IR weight shape (masked-out weights have importance 0)."""
    w = layer.weights if layer.mask is None else layer.weights * layer.mask
    w2 = np.abs(w.reshape(w.shape[0], -1)).astype(np.float64)
    return (w2 * capture.input_norms[None, :]).reshape(w.shape)


def tau_for_sparsity(imp: np.ndarray, sparsity: float) -> float:
    """Smallest τ whose mask (importance > τ) prunes at least `sparsity` of the weights (0 for 0)."""
    k = int(round(sparsity * imp.size))
    if k <= 0:
        return 0.0
    return float(np.partition(imp.ravel(), k - 1)[k - 1])


def layer_candidates(layer: FloatLayer, capture: LayerCapture, levels: tuple[float, ...] = SPARSITY_LEVELS,
                     bins: int = DEFAULT_BINS, widths: tuple[int, ...] = (8,)) -> list[Candidate]:
    """Every (τ, weight width) candidate of the layer, measured (not Pareto-filtered), sorted by
    width (widest first), then τ.

    An int8 candidate's KL is that of pruning alone (int8 rounding moves outputs by less than the
    histograms resolve); a narrower one's KL is that of its weights pruned *and* rounded to the
    width (quantize.quantize_weights), since at 4 bits the rounding is what changes the outputs."""
    imp = importance(layer, capture)
    w = layer.weights if layer.mask is None else layer.weights * layer.mask
    w2 = w.reshape(w.shape[0], -1)
    taus = sorted({tau_for_sparsity(imp, s) for s in levels})
    cands = []
    for bits in sorted(widths, reverse=True):
        for tau in taus:
            mask = imp > tau
            pruned = w2 * mask.reshape(w2.shape)
            if bits < 8:
                q, scales = quantize_weights(pruned, bits)
                pruned = q.astype(np.float32) * scales[:, None]
            after = apply_rows(capture.inputs, pruned, layer.bias, layer.clamp)
            kl = 0.0 if mask.all() and bits == 8 else output_kl(capture.outputs, after, bins, zero_spike=layer.relu)
            cands.append(Candidate(tau=tau, sparsity=float(1.0 - mask.mean()), bytes=mask_bytes(mask, bits), kl=kl,
                                   bits=bits))
    return cands


def layer_front(layer: FloatLayer, capture: LayerCapture, levels: tuple[float, ...] = SPARSITY_LEVELS,
                bins: int = DEFAULT_BINS, widths: tuple[int, ...] = (8,)) -> list[Candidate]:
    """The Pareto-optimal candidates (bytes down, KL up; budget.pareto)."""
    return pareto(layer_candidates(layer, capture, levels, bins, widths))


def mask_for(layer: FloatLayer, capture: LayerCapture, tau: float) -> np.ndarray:
    """The bool mask (IR layout) of threshold τ."""
    return importance(layer, capture) > tau
