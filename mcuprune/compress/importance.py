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
# Finer where the budgets land: one step of the 1568x64 FC at 93 % is ~1 kB at int8, ~0.5 kB at int4.
SPARSITY_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.725, 0.75, 0.775, 0.8, 0.825, 0.85, 0.875, 0.9,
                   0.905, 0.91, 0.915, 0.92, 0.925, 0.93, 0.935, 0.94, 0.945, 0.95, 0.955, 0.96, 0.965, 0.97, 0.975,
                   0.98, 0.985, 0.99, 0.995)


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


BLOCKS = (1, 4)  # mask granularity: single weights, or the 1x4 blocks the block4 kernels skip whole


def block_importance(imp: np.ndarray, block: int) -> np.ndarray:
    """Importance per 1 x `block` block of consecutive columns of each row (rows = output channels,
    columns = the weights of one output in IR order, as formats.weight_matrix lays them out; the
    last block of a row padded with zeros): the sum of its weights' importance, shape (rows, blocks)."""
    rows = imp.reshape(imp.shape[0], -1)
    cols = rows.shape[1]
    padded = np.zeros((rows.shape[0], -(-cols // block) * block), dtype=np.float64)
    padded[:, :cols] = rows
    return padded.reshape(rows.shape[0], -1, block).sum(axis=2)


def layer_candidates(layer: FloatLayer, capture: LayerCapture, levels: tuple[float, ...] = SPARSITY_LEVELS,
                     bins: int = DEFAULT_BINS, widths: tuple[int, ...] = (8,), block: int = 1) -> list[Candidate]:
    """Every (τ, weight width) candidate of the layer, measured (not Pareto-filtered), sorted by
    width (widest first), then τ.

    An int8 candidate's KL is that of pruning alone (int8 rounding moves outputs by less than the
    histograms resolve); a narrower one's KL is that of its weights pruned *and* rounded to the
    width (quantize.quantize_weights), since at 4 bits the rounding is what changes the outputs.
    A narrower candidate's mask also drops the kept weights that round to 0 (mask_for): at int4 that
    is up to a tenth of them, bytes the plan would otherwise reserve and never emit.
    `block` 4: τ thresholds the blocks' summed importance (block_importance), so whole 1x4 blocks go."""
    imp = importance(layer, capture)
    w = layer.weights if layer.mask is None else layer.weights * layer.mask
    w2 = w.reshape(w.shape[0], -1)
    scores = imp if block == 1 else block_importance(imp, block)
    taus = sorted({tau_for_sparsity(scores, s) for s in levels})
    cands = []
    for bits in sorted(widths, reverse=True):
        for tau in taus:
            mask = mask_for(layer, capture, tau, bits, block)
            pruned = w2 * mask.reshape(w2.shape)
            if bits < 8:
                q, scales = quantize_weights(pruned, bits)
                pruned = q.astype(np.float32) * scales[:, None]
            after = apply_rows(capture.inputs, pruned, layer.bias, layer.clamp)
            kl = 0.0 if mask.all() and bits == 8 else output_kl(capture.outputs, after, bins, zero_spike=layer.relu)
            cands.append(Candidate(tau=tau, sparsity=float(1.0 - mask.mean()), bytes=mask_bytes(mask, bits), kl=kl,
                                   bits=bits, block=block))
    return cands


def layer_front(layer: FloatLayer, capture: LayerCapture, levels: tuple[float, ...] = SPARSITY_LEVELS,
                bins: int = DEFAULT_BINS, widths: tuple[int, ...] = (8,), block: int = 1) -> list[Candidate]:
    """The Pareto-optimal candidates (bytes down, KL up; budget.pareto)."""
    return pareto(layer_candidates(layer, capture, levels, bins, widths, block))


def mask_for(layer: FloatLayer, capture: LayerCapture, tau: float, bits: int = 8, block: int = 1) -> np.ndarray:
    """The bool mask (IR layout) of threshold τ; below 8 bits without the kept weights that round to
    0 at that width (per-channel scales of the kept weights, quantize.quantize_weights). With
    `block` > 1, τ thresholds block_importance and a kept block keeps all its weights (a zero inside
    a stored block costs the block format nothing more)."""
    imp = importance(layer, capture)
    if block > 1:
        keep = np.repeat(block_importance(imp, block) > tau, block, axis=1)
        return keep[:, : imp[0].size].reshape(imp.shape)
    mask = imp > tau
    if bits < 8:
        w = layer.weights if layer.mask is None else layer.weights * layer.mask
        w2 = w.reshape(w.shape[0], -1)
        q, _ = quantize_weights(w2 * mask.reshape(w2.shape), bits)
        mask &= (q != 0).reshape(mask.shape)
    return mask
