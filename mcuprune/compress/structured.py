"""Structured removal: delete whole channels (conv filters, dense neurons) from a graph, making it smaller for real.

On a graph a channel lives in several tensors at once: max/average pooling, PAD, MEAN and a
depthwise conv with one output per input channel pass channel c through as channel c, and an ADD
makes channel c of both its inputs and of its output one channel. A *channel group* is such a set
of tensors (union-find over those identities). Removing channel c removes it from every tensor of
the group: the row c of every layer that writes a group tensor (conv, dense, depthwise), and the
input column(s) of channel c of every layer outside the group that reads one (a conv's input
channel c; a dense layer's columns of channel c in the H, W, C flattening). A RESHAPE that only
drops unit dimensions ((1, 1, C) -> (C,)) keeps channels; one that flattens a map is read by the
dense layer after it as that flattening.

What is exact (tests/test_graph_prune.py checks both):

* Removing a channel that is 0 in every tensor of its group: every row writing it is 0 (weights
  *and* bias: zero weights alone would leave the constant ReLU(b)), pooling, padding and adding
  keep it 0, and its readers' columns add nothing. ``dead_channels`` finds those.
* With ``input_means`` for a dense reader, the removed columns' means (over calibration data) are
  folded into its bias (b += W[:, R] · mean[R]): the smaller network then equals the original with
  those inputs replaced by their means. Conv readers are not folded: with zero padding a constant
  channel is not constant at the borders, so no bias reproduces it.

Removing any other channel is the pruning method's approximation, repaired by fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mcuprune.model.ir import INPUT, WEIGHTED_OPS, FloatLayer, FloatModel, Op, shape_product, verify

_PASS_CHANNELS = (Op.MAXPOOL2D, Op.AVGPOOL2D, Op.PAD, Op.MEAN)


@dataclass(frozen=True)
class ChannelGroup:
    tensors: tuple[str, ...]  # the layer outputs sharing these channels, in execution order
    writers: tuple[str, ...]  # layers with weights whose output rows are these channels
    channels: int
    removable: bool  # False: the model input or output, a softmax, a depthwise multiplier > 1 or a flattening
    # reshape touches it


def _keeps_channels(layer: FloatLayer) -> bool:
    if layer.op in _PASS_CHANNELS or layer.op is Op.ADD:
        return True
    if layer.op is Op.DEPTHWISE_CONV2D:
        return layer.depth_multiplier == 1
    if layer.op is Op.RESHAPE:  # only unit dimensions dropped or added: (1, 1, C) <-> (C,)
        return layer.in_shape[-1] == layer.out_shape[-1] and shape_product(layer.in_shape) == layer.in_shape[-1] \
            and shape_product(layer.out_shape) == layer.out_shape[-1]
    return False


def channel_groups(model: FloatModel) -> list[ChannelGroup]:
    """The channel groups of a graph, in the order of their first tensor."""
    parent = {INPUT: INPUT, **{layer.name: layer.name for layer in model.layers}}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    fixed = {INPUT, model.layers[-1].name}  # tensors whose channels cannot change
    for layer in model.layers:
        if _keeps_channels(layer):
            for name in layer.inputs:
                parent[find(name)] = find(layer.name)
        if layer.op is Op.SOFTMAX or (layer.op is Op.DEPTHWISE_CONV2D and layer.depth_multiplier != 1):
            fixed.update([layer.name, *layer.inputs])
        if layer.op is Op.RESHAPE and not _keeps_channels(layer):  # a flattened map: its readers see columns
            fixed.update(layer.inputs)
    members: dict[str, list[str]] = {}
    for name in [INPUT, *(layer.name for layer in model.layers)]:
        members.setdefault(find(name), []).append(name)
    by_name = {layer.name: layer for layer in model.layers}
    groups = []
    for names in members.values():
        tensors = tuple(n for n in names if n != INPUT)
        if not tensors:
            continue
        writers = tuple(n for n in tensors if by_name[n].op in WEIGHTED_OPS)
        removable = bool(writers) and not (set(names) & fixed)
        groups.append(ChannelGroup(tensors, writers, int(by_name[tensors[0]].out_shape[-1]), removable))
    return groups


def dead_channels(model: FloatModel) -> dict[int, np.ndarray]:
    """Group index -> the channels that are exactly 0 in the whole group (every writer's row and bias 0)."""
    by_name = {layer.name: layer for layer in model.layers}
    dead = {}
    for i, group in enumerate(channel_groups(model)):
        if not group.removable:
            continue
        zero = np.ones(group.channels, dtype=bool)
        for name in group.writers:
            layer = by_name[name]
            w = layer.weights if layer.mask is None else layer.weights * layer.mask
            zero &= ~np.any(w.reshape(w.shape[0], -1) != 0, axis=1) & (layer.bias == 0)
        if zero.any() and not zero.all():
            dead[i] = np.flatnonzero(zero)
    return dead


def _columns_of_channels(in_shape: tuple[int, ...], keep: np.ndarray) -> np.ndarray:
    """Columns a dense layer keeps when it reads a map (H, W, C) flattened H, W, C and keeps channels `keep`."""
    channels = in_shape[-1]
    cols = np.arange(shape_product(in_shape))
    return cols[np.isin(cols % channels, keep)]


def remove_channels(model: FloatModel, removal: dict[int, np.ndarray],
                    input_means: dict[str, np.ndarray] | None = None) -> FloatModel:
    """`model` without the given channels (group index -> channels, see channel_groups).

    input_means: dense layer name -> the mean of each of its inputs (flattened H, W, C) over
    calibration data; the columns such a layer loses are folded into its bias at those means."""
    groups = channel_groups(model)
    keep: dict[str, np.ndarray] = {}  # tensor -> channels kept
    for index, channels in removal.items():
        group = groups[index]
        if not group.removable:
            raise ValueError(f"channel group of {group.tensors[0]} cannot lose channels")
        kept = np.setdiff1d(np.arange(group.channels), np.asarray(channels, dtype=np.int64))
        if kept.size == 0:
            raise ValueError(f"removing every channel of {group.tensors[0]} would cut the network")
        keep.update(dict.fromkeys(group.tensors, kept))
    shapes = {INPUT: tuple(model.input_shape)}
    layers = []
    for layer in model.layers:
        changes: dict = {"in_shape": shapes[layer.inputs[0]]}
        source = layer.inputs[0]
        rows = keep.get(layer.name)
        if layer.op in WEIGHTED_OPS:
            w, mask, bias = layer.weights, layer.mask, layer.bias
            if layer.op is Op.CONV2D and source in keep:
                w, mask = w[..., keep[source]], None if mask is None else mask[..., keep[source]]
            if layer.op is Op.DENSE and source in keep:
                in_shape = next(lay.out_shape for lay in model.layers if lay.name == source) if source != INPUT \
                    else model.input_shape
                cols = _columns_of_channels(tuple(in_shape), keep[source])
                if input_means is not None and layer.name in input_means:
                    gone = np.setdiff1d(np.arange(w.shape[1]), cols)
                    live = w if mask is None else w * mask
                    bias = (bias + live[:, gone] @ np.asarray(input_means[layer.name])[gone]).astype(np.float32)
                w, mask = w[:, cols], None if mask is None else mask[:, cols]
            if rows is not None:
                w, bias, mask = w[rows], bias[rows], None if mask is None else mask[rows]
            changes.update(weights=np.ascontiguousarray(w), bias=np.ascontiguousarray(bias), mask=mask)
            if layer.op is Op.DENSE and len(changes["in_shape"]) == 3:
                changes["in_shape"] = (shape_product(changes["in_shape"]),)
            elif layer.op is Op.DENSE:
                changes["in_shape"] = (int(w.shape[1]),)
        out_shape = tuple(layer.out_shape)
        if rows is not None:
            out_shape = (*out_shape[:-1], int(rows.size))
        shapes[layer.name] = out_shape
        layers.append(replace(layer, out_shape=out_shape, **changes))
    shrunk = replace(model, layers=tuple(layers))
    verify(shrunk)
    return shrunk
