"""Instructions per inference of a pruning plan, predicted, and channel removal to an instruction budget.

Prediction: each conv/dense layer by the fitted cost model of the kernel the code generator will
pick for it (model/costs.py: format and weight width), every other layer by the per-op model
(model/op_costs.py); both were fitted to QEMU ``-icount`` counts of the real kernels, and the
planner's figure is verified the same way (bench, tests).

Structured removal is the lever for compute: a conv's cost scales with in_c · out_c, so taking
channels out of a group shrinks both the layers that write it and those that read it, while
unstructured sparsity only pays where a sparse kernel beats the dense DSP one. Which channels go is
decided by what their removal does to the layers that read them. Removing channel c of a group
replaces it, in each reader r, by its mean (dense readers, whose bias absorbs the mean,
structured.remove_channels) or by 0 (conv readers: padding makes a constant channel non-constant
at the borders). To first order the reader's pre-activations then move by

    err_r(c) = sum over r's input columns j of channel c of ||W_r[:, j]||² · s_j

with s_j the variance of input j (dense reader) or its mean square (conv reader), over calibration
data, treating the columns as uncorrelated. Normalised by the reader's output energy, summed over
readers, this is the channel's *damage*. The greedy removal takes, step by step, the channel with
the least damage per predicted instruction saved, across all groups, until the prediction meets the
budget; each group keeps at least MIN_KEEP of its channels.
"""

from __future__ import annotations

import math

import numpy as np

from mcuprune.compress.activations import LayerCapture, dense_input_means
from mcuprune.compress.budget import plan_layers
from mcuprune.compress.structured import ChannelGroup, channel_groups, remove_channels
from mcuprune.errors import UserError
from mcuprune.model.costs import choose_formats
from mcuprune.model.costs import predict_instructions as predict_layer
from mcuprune.model.formats import layer_bytes
from mcuprune.model.ir import WEIGHTED_OPS, FloatModel, Op
from mcuprune.model.op_costs import predict_op_instructions

MIN_KEEP = 0.125  # fraction of a group's channels that always stays (at least one channel)
_COST_MODELLED = (Op.CONV2D, Op.DENSE)  # weighted ops with a per-format cost model (costs.py)


def predict_instructions(model: FloatModel, variant: str = "dsp", core: str | None = None,
                         objective: str = "fastest", masks: dict[str, np.ndarray] | None = None,
                         bits: dict[str, int] | None = None,
                         formats: dict[str, str] | None = None) -> dict[str, float]:
    """Predicted instructions of every layer (by name) for the plan (masks, widths) compiled with
    `objective`, or with the given `formats` of the weighted layers."""
    qlayers = {q.name: q for q in plan_layers(model, masks, bits)}
    if formats is None:
        formats = choose_formats(qlayers.values(), variant, objective, core)
    out = {}
    for layer in model.layers:
        if layer.op in _COST_MODELLED:
            out[layer.name] = predict_layer(qlayers[layer.name], formats[layer.name], variant, core)
        else:
            out[layer.name] = predict_op_instructions(qlayers.get(layer.name, layer), variant, core)
    return out


def compile_formats(model: FloatModel, variant: str = "dsp", core: str | None = None,
                    flash_budget: int | None = None) -> dict[str, str]:
    """The weight formats `mcuprune compile` (objective "auto") emits for the model: the fastest that
    fit the flash budget the model was pruned to, or "smallest" when none do."""
    qlayers = plan_layers(model)
    formats = choose_formats(qlayers, variant, "fastest", core, flash_budget)
    if flash_budget is not None and sum(layer_bytes(q, formats[q.name]) for q in qlayers) > flash_budget:
        formats = choose_formats(qlayers, variant, "smallest", core)
    return formats


def total_instructions(model: FloatModel, variant: str = "dsp", core: str | None = None, **plan) -> float:
    return float(sum(predict_instructions(model, variant, core, **plan).values()))


# --- which channels to remove -------------------------------------------------------------------------


def _readers(model: FloatModel, group: ChannelGroup) -> list:
    """Weighted layers outside the group that read one of its tensors."""
    inside = set(group.tensors)
    return [layer for layer in model.layers if layer.op in WEIGHTED_OPS and layer.name not in inside
            and set(layer.inputs) & inside]


def channel_damage(model: FloatModel, group: ChannelGroup, caps: dict[str, LayerCapture]) -> np.ndarray:
    """Per channel of the group: the relative change its removal makes to its readers (module docstring)."""
    damage = np.zeros(group.channels)
    for reader in _readers(model, group):
        cap = caps[reader.name]
        w = reader.weights if reader.mask is None else reader.weights * reader.mask
        col_norm2 = (w.reshape(w.shape[0], -1).astype(np.float64) ** 2).sum(axis=0)
        mean_square = cap.input_norms.astype(np.float64) ** 2 / max(cap.positions, 1)
        spread = mean_square - cap.input_means ** 2 if reader.op is Op.DENSE else mean_square
        per_column = col_norm2 * np.maximum(spread, 0.0)
        columns = np.arange(per_column.size) % group.channels  # HWC flattening and im2col: channel fastest
        energy = float((cap.outputs.astype(np.float64) ** 2).sum(axis=1).mean()) or 1.0
        damage += np.bincount(columns, weights=per_column, minlength=group.channels) / energy
    return damage


def remove_for_instructions(model: FloatModel, caps: dict[str, LayerCapture], budget: float, variant: str = "dsp",
                            core: str | None = None) -> tuple[FloatModel, list[dict], float]:
    """Remove channels, least damage per instruction saved first, until the predicted instructions
    of the model as it is (its own masks and widths, formats chosen "fastest") meet `budget`.
    Returns (smaller model, removals in pruning-report form, predicted instructions). Raises
    UserError naming the smallest reachable figure when every group is down to MIN_KEEP."""
    groups = {i: g for i, g in enumerate(channel_groups(model)) if g.removable and _readers(model, g)}
    damage = {i: channel_damage(model, g, caps) for i, g in groups.items()}
    order = {i: list(np.argsort(d, kind="stable")) for i, d in damage.items()}
    floor = {i: max(1, math.ceil(MIN_KEEP * g.channels)) for i, g in groups.items()}
    removed: dict[int, list[int]] = {i: [] for i in groups}

    def cost(removal: dict[int, list[int]]) -> float:
        trial = remove_channels(model, {i: np.asarray(r) for i, r in removal.items() if r})
        return total_instructions(trial, variant, core)

    current = cost(removed)
    while current > budget:
        best = None
        for i, group in groups.items():
            if group.channels - len(removed[i]) <= floor[i]:
                continue
            channel = int(order[i][len(removed[i])])
            trial = {**removed, i: removed[i] + [channel]}
            after = cost(trial)
            ratio = damage[i][channel] / max(current - after, 1.0)
            if best is None or ratio < best[0]:
                best = (ratio, trial, after)
        if best is None:
            raise UserError(f"instruction budget {budget:,.0f} is unreachable by removing channels: the smallest "
                            f"reachable is {current:,.0f} instructions per inference (every group is down to "
                            f"{MIN_KEEP:.0%} of its channels)")
        _, removed, current = best
    report = [{"group": list(groups[i].tensors), "channels": groups[i].channels, "removed": sorted(map(int, r)),
               "reason": "instruction budget"} for i, r in removed.items() if r]
    smaller = remove_channels(model, {i: np.asarray(r) for i, r in removed.items() if r},
                              dense_input_means(model, caps))
    return smaller, report, current

