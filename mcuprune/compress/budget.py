"""Byte accounting of pruned layers and the choice of one τ per layer under a budget.

Every weighted layer has a list of candidates (τ, sparsity, bytes, KL) (importance.py). Two
budgets pick one candidate per layer:

* ``choose_by_kl(eps)``: per layer, the largest τ whose KL ≤ eps. Layers are independent.
* ``choose_by_bytes(budget)``: minimise the total KL subject to the total bytes ≤ budget — a
  multiple-choice knapsack. It is solved exactly by dynamic programming over Pareto fronts: after
  each layer, keep the (total bytes, total KL) pairs that no other pair beats on both counts;
  combine the front with the next layer's candidates, drop what exceeds the budget, keep the new
  front. The last front's lowest-KL point is the optimum. A front never holds more points than
  there are distinct byte totals; with a handful of layers and ~20 candidates each it stays in the
  hundreds, so no byte grid is needed.

Bytes are what the layer emits: packed weights in the smallest format (formats.py's
``format_bytes``; one of ops.FORMATS) plus the int32 bias, multiplier and shift of each
output channel. During planning a candidate's bytes are counted from its *mask* (every kept
weight assumed non-zero). That is an upper bound of what the fine-tuned, re-quantized layer
emits: a kept weight that quantizes to 0 is dropped by every format, and dropping a non-zero
never adds bytes (the CSR filler count of a merged gap is at most that of its parts plus the
removed entry). So a plan within budget stays within budget after fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from mcuprune.errors import UserError
from mcuprune.model.costs import choose_formats
from mcuprune.model.formats import format_sizes, layer_bytes
from mcuprune.model.ir import FloatModel, QParams, QuantLayer
from mcuprune.quantize import quantize_weights

QUANT_BYTES_PER_CHANNEL = 12  # int32 bias + int32 multiplier + int32 shift


def _format_sizes(weights_masked: np.ndarray, bits: int = 8) -> dict[str, int]:
    """Bytes of the packed weight arrays per format (formats.py) for `bits`-wide weights."""
    return format_sizes(weights_masked, bits)


def best_format(weights_masked: np.ndarray, bits: int = 8) -> str:
    """The smallest format for integer weights whose pruned entries are 0 (dense wins ties)."""
    sizes = _format_sizes(weights_masked, bits)
    return min(sizes, key=lambda fmt: (sizes[fmt], fmt != "dense"))


def packed_layer_bytes(weights_masked: np.ndarray, out_channels: int, bits: int = 8) -> int:
    """Every parameter byte of one layer: packed weights (smallest format) + bias/multiplier/shift."""
    return min(_format_sizes(weights_masked, bits).values()) + QUANT_BYTES_PER_CHANNEL * int(out_channels)


def mask_bytes(mask: np.ndarray, bits: int = 8) -> int:
    """Upper bound of a layer's bytes under `mask` (IR layout, rows = output channels) with
    `bits`-wide weights."""
    m = np.asarray(mask, dtype=bool)
    return packed_layer_bytes(m.astype(np.int8), m.shape[0], bits)


@dataclass(frozen=True)
class Emitted:
    """What the code generator emits for a model's weighted layers."""

    bytes: int  # all parameter bytes (model flash)
    formats: dict[str, str]  # layer name -> format
    layer_bytes: dict[str, int]  # layer name -> its bytes in that format


def plan_layers(model: FloatModel, masks: dict[str, np.ndarray] | None = None,
                bits: dict[str, int] | None = None) -> list[QuantLayer]:
    """The weighted layers as the code generator will see them, for counting bytes and predicting
    instructions: integer weights with the plan's sparsity pattern (quantization parameters are
    placeholders, which neither count depends on).

    With `masks` (IR layout, by layer name) every kept weight counts as non-zero: the planning count.
    Without (and for layers the masks leave out), the model's own masked weights are quantized as
    quantize.py does: the final count. `bits` overrides layers' weight widths (a plan's choice)."""
    qlayers = []
    for layer in model.layers:
        if layer.weights is None:
            continue
        if bits is not None and layer.name in bits:
            layer = replace(layer, weight_bits=bits[layer.name])
        if masks is not None and layer.name in masks:
            mask = np.asarray(masks[layer.name], dtype=bool)
            q = mask.astype(np.int8)
        else:  # a layer the plan leaves alone (e.g. depthwise) counts as it is
            mask = None if layer.mask is None else np.asarray(layer.mask, dtype=bool)
            q, _ = quantize_weights(layer.weights if mask is None else layer.weights * mask, layer.weight_bits)
        zeros = np.zeros(q.shape[0], np.int32)
        qlayers.append(QuantLayer(layer.name, layer.op, tuple(layer.in_shape), tuple(layer.out_shape),
                                  QParams(1.0, 0), QParams(1.0, 0), weights=q, bias=zeros, multiplier=zeros,
                                  shift=zeros, mask=mask, weight_bits=layer.weight_bits, stride=layer.stride,
                                  padding=layer.padding, dilation=layer.dilation,
                                  depth_multiplier=layer.depth_multiplier))
    return qlayers


def emitted(model: FloatModel, masks: dict[str, np.ndarray] | None = None, variant: str = "dsp",
            objective: str = "smallest", bits: dict[str, int] | None = None) -> Emitted:
    """Parameter bytes and formats the code generator picks (costs.choose_formats) for the model's
    plan_layers.

    The generator also weighs each sparse kernel's code (linked once per firmware), so it may keep a
    layer in a format a few bytes larger than the layer's smallest."""
    qlayers = plan_layers(model, masks, bits)
    formats = choose_formats(qlayers, variant, objective)
    sizes = {q.name: layer_bytes(q, formats[q.name]) for q in qlayers}
    return Emitted(sum(sizes.values()), formats, sizes)


def plan_bytes(model: FloatModel, masks: dict[str, np.ndarray], bits: dict[str, int] | None = None) -> int:
    """Model flash of a pruning plan (masks and weight widths by layer name), as emitted with every
    kept weight non-zero."""
    return emitted(model, masks, bits=bits).bytes


@dataclass(frozen=True)
class Candidate:
    tau: float  # importance threshold: weights with importance > tau are kept
    sparsity: float  # fraction of the layer's weights pruned
    bytes: int  # upper bound of the layer's emitted bytes (mask_bytes)
    kl: float  # KL(P_before || P_after) of the layer's outputs (kl.output_kl)
    bits: int = 8  # weight width: 8, or 4
    block: int = 1  # 1: any weight may go; 4: whole 1x4 blocks of a row go together (importance.mask_for)

    def to_dict(self) -> dict:
        return asdict(self)


def pareto(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on both bytes and KL, from the most bytes to the fewest.

    Along the result bytes decrease and KL increases; among candidates of one weight width, τ and
    sparsity increase with it."""
    best: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.bytes, c.kl, -c.tau)):
        if not best or c.kl < best[-1].kl:
            best.append(c)
    return best[::-1]


def choose_by_kl(candidates: dict[str, Sequence[Candidate]], eps: float) -> dict[str, Candidate]:
    """Per layer, the smallest candidate with KL ≤ eps (the unpruned int8 candidate has KL 0)."""
    check_kl_budget(eps)
    chosen = {}
    for name, cands in candidates.items():
        ok = [c for c in cands if c.kl <= eps]
        if not ok:
            raise ValueError(f"layer {name}: no candidate has KL <= {eps} (the unpruned one should)")
        chosen[name] = min(ok, key=lambda c: (c.bytes, -c.tau))
    return chosen


def check_kl_budget(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not np.isfinite(eps) or eps <= 0:
        raise UserError(f"the KL budget must be a finite number > 0 (nats), got {eps}")


def min_bytes(candidates: dict[str, Sequence[Candidate]]) -> int:
    return sum(min(c.bytes for c in cands) for cands in candidates.values())


def choose_by_bytes(candidates: dict[str, Sequence[Candidate]], budget: int) -> dict[str, Candidate]:
    """Minimum total KL with total bytes ≤ budget (exact multiple-choice knapsack, see module doc)."""
    smallest = min_bytes(candidates)
    if budget < smallest:
        raise UserError(f"flash budget {budget} B is unreachable: the smallest reachable model is {smallest} B")
    names = list(candidates)
    front: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for i, name in enumerate(names):
        rest = sum(min(c.bytes for c in candidates[n]) for n in names[i + 1 :])  # the other layers' minimum
        merged = [(b + c.bytes, k + c.kl, picks + (j,)) for b, k, picks in front
                  for j, c in enumerate(candidates[name]) if b + c.bytes + rest <= budget]
        merged.sort(key=lambda t: (t[0], t[1]))
        front = []
        for point in merged:
            if not front or point[1] < front[-1][1]:
                front.append(point)
    _, _, picks = min(front, key=lambda t: (t[1], t[0]))
    return {name: candidates[name][j] for name, j in zip(names, picks, strict=True)}
