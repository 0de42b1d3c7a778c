"""Baselines: global magnitude pruning, one-shot or gradual (Zhu & Gupta's cubic schedule).

Both prune the same layers as the QSAE method (every conv/dense layer), count bytes the same way
(budget.plan_bytes: as the code generator emits the masks) and fine-tune for the same epochs with
the same optimiser, learning rate, batch size, data order and seed:

* one-shot: the global |w| threshold that meets the flash budget, then train.fit with the masks
  fixed;
* gradual: the same fine-tune (train.fit) re-prunes after every ``interval`` steps to
  s_t = s_f + (s_i − s_f)(1 − t/T)³, T = ``end_fraction`` of the fine-tune steps (the remaining
  steps recover with the final mask fixed, as in Zhu & Gupta). At the last pruning step the
  sparsity is not s_f (estimated from the starting weights) but the smallest global sparsity
  whose bytes meet the budget for the weights at that point.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mcuprune.compress.budget import plan_bytes
from mcuprune.errors import UserError
from mcuprune.model.ir import FloatModel

MAX_SPARSITY = 0.995
DEFAULT_INTERVAL = 50
DEFAULT_END_FRACTION = 0.75


def _weighted(model: FloatModel) -> list:
    return [layer for layer in model.layers if layer.weights is not None]


def magnitudes(model: FloatModel) -> dict[str, np.ndarray]:
    return {layer.name: np.abs(layer.weights if layer.mask is None else layer.weights * layer.mask)
            for layer in _weighted(model)}


def global_threshold(magnitudes: list[np.ndarray], sparsity: float) -> float:
    """The |w| below or at which `sparsity` of all weights lie (−1 for sparsity 0: prune nothing)."""
    flat = np.concatenate([m.ravel() for m in magnitudes])
    k = int(round(sparsity * flat.size))
    return -1.0 if k <= 0 else float(np.partition(flat, k - 1)[k - 1])


def global_magnitude_masks(model: FloatModel, sparsity: float) -> dict[str, np.ndarray]:
    """Masks (IR layout) keeping the weights above one global |w| threshold."""
    mags = magnitudes(model)
    thr = global_threshold(list(mags.values()), sparsity)
    return {name: m > thr for name, m in mags.items()}


def sparsity_for_budget(model: FloatModel, budget: int, max_sparsity: float = MAX_SPARSITY) -> float:
    """Smallest global sparsity (to 1e-4) whose magnitude masks fit `budget` bytes (bisection), counted
    as the code generator emits them (budget.plan_bytes)."""
    if plan_bytes(model, global_magnitude_masks(model, 0.0)) <= budget:
        return 0.0
    smallest = plan_bytes(model, global_magnitude_masks(model, max_sparsity))
    if smallest > budget:
        raise UserError(f"flash budget {budget} B is unreachable: the smallest reachable model is {smallest} B")
    lo, hi = 0.0, max_sparsity
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if plan_bytes(model, global_magnitude_masks(model, mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return hi


def cubic_sparsity(step: int, end_step: int, s_initial: float, s_final: float) -> float:
    """Zhu & Gupta: s_t = s_f + (s_i − s_f)(1 − t/T)³ for 0 ≤ t ≤ T, s_f after T."""
    if end_step <= 0 or step >= end_step:
        return s_final
    return s_final + (s_initial - s_final) * (1.0 - step / end_step) ** 3


def gradual_schedule(budget: int, s_final: float, end_fraction: float = DEFAULT_END_FRACTION,
                     interval: int = DEFAULT_INTERVAL) -> Callable[[int, int, Callable[[], FloatModel]], dict | None]:
    """Gradual magnitude pruning as a function masks_at(step, total_steps, current) called after
    each fine-tuning step: every `interval` steps until the end step it returns the global magnitude
    masks (IR layout, by layer name) of the model `current()` returns, at the cubic schedule's
    sparsity, and at the end step those that meet `budget` for the weights as they are then;
    None at the other steps."""

    def masks_at(step: int, total: int, current: Callable[[], FloatModel]) -> dict[str, np.ndarray] | None:
        end = max(1, int(round(end_fraction * total)))
        if step > end or step % interval and step != end:
            return None
        model = current()
        if step == end:
            sparsity = sparsity_for_budget(model, budget)
        else:
            sparsity = cubic_sparsity(step, end, 0.0, s_final)
        return global_magnitude_masks(model, sparsity)

    return masks_at
