"""Structured removal: delete whole neurons/channels from a network, making it smaller for real.

Removing output feature j of a *producer* layer (a dense neuron or a conv channel) deletes

* the producer's weight row / filter j, its bias j and its mask row j;
* every input column of the *consumer* (the next conv/dense layer, across max pooling) that reads
  feature j: input channel j of a conv consumer; for a dense consumer after a feature map, all
  H·W columns of channel j (torch flattens C,H,W: columns j·H·W ... (j+1)·H·W − 1; the IR's HWC
  order is handled by train.export_float_model); for a dense consumer after a dense layer, column j.

The specs' ``out`` shrink accordingly, and a new torch model is built with the surviving weights
copied. What is exact (tests/test_prune.py checks both):

* Without folding, the shrunken network computes exactly what the original computes when the
  producer's row j (weights *and* bias) is zero: feature j is then 0 after the ReLU, and max
  pooling and zero padding keep it 0, so its consumer columns add nothing. (Only zeroing the
  weights is not enough: the bias alone would keep the feature at the constant ReLU(b_j).)
* With ``fold_means`` for a dense consumer, the removed columns' calibration means are folded into
  the consumer's bias (b += W[:, R] · mean[R]): the shrunken network then equals the original
  with those input columns replaced by their means. Conv consumers are not folded: with zero
  padding a constant channel is not constant at the borders, so no bias reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from mcuprune.model.ir import INPUT, WEIGHTED_OPS, FloatLayer, FloatModel, Op, shape_product, verify
from mcuprune.train.training import _shapes, build_torch_model

WEIGHTED = ("conv2d", "dense")


def weighted_indices(specs: list[dict]) -> list[int]:
    """Spec indices of the conv/dense layers (one torch module each, in order)."""
    return [i for i, s in enumerate(specs) if s["op"] in WEIGHTED]


def consumer_of(specs: list[dict], producer: int) -> int | None:
    """Spec index of the next conv/dense layer after `producer` (None for the last one)."""
    return next((i for i in range(producer + 1, len(specs)) if specs[i]["op"] in WEIGHTED), None)


def consumer_columns(specs: list[dict], input_shape: tuple[int, int, int], consumer: int,
                     features: np.ndarray) -> np.ndarray:
    """Torch-layout input indices of `consumer` that read the producer's `features`.

    Conv consumer: input channels. Dense consumer: flattened C,H,W columns (after a map) or
    the features themselves (after a dense layer)."""
    features = np.asarray(features, dtype=np.int64)
    if specs[consumer]["op"] == "conv2d":
        return features
    prev_shape = _shapes(specs, input_shape)[consumer - 1][1] if consumer > 0 else tuple(input_shape)
    if len(prev_shape) == 1:
        return features
    h, w, _ = prev_shape
    hw = h * w
    return (features[:, None] * hw + np.arange(hw)[None, :]).ravel()


def hwc_to_chw_columns(values: np.ndarray, map_shape: tuple[int, int, int]) -> np.ndarray:
    """A per-column vector in the IR's HWC flatten order -> torch's CHW flatten order."""
    h, w, c = map_shape
    return np.asarray(values).reshape(h, w, c).transpose(2, 0, 1).ravel()


def shrink(net, specs: list[dict], input_shape: tuple[int, int, int], remove: dict[int, np.ndarray],
           masks: list | None = None, fold_means: dict[int, np.ndarray] | None = None):
    """Remove output features of producer layers: (new net, new specs, new masks).

    remove: spec index of a producer -> its output features to delete (the last weighted layer,
    whose outputs are the logits, cannot be a producer). fold_means: spec index of a dense consumer
    -> the means of its input columns in torch (C,H,W) order, folded into its bias for the removed
    columns. masks: one bool array (torch layout) or None per weighted module, as in train.fit.
    """
    weighted = weighted_indices(specs)
    modules = [m for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    masks = list(masks) if masks else [None] * len(modules)
    keep_out: dict[int, np.ndarray] = {}
    keep_in: dict[int, np.ndarray] = {}
    fold: dict[int, np.ndarray] = {}
    for i, module in zip(weighted, modules, strict=True):
        keep_out[i] = np.arange(module.weight.shape[0])
        keep_in[i] = np.arange(module.weight.shape[1])
    for producer, features in remove.items():
        features = np.unique(np.asarray(features, dtype=np.int64))
        consumer = consumer_of(specs, producer)
        if consumer is None:
            raise ValueError(f"layer {producer} has no consumer: its outputs are the network's outputs")
        if features.size >= keep_out[producer].size:
            raise ValueError(f"removing all {features.size} outputs of layer {producer} would cut the network")
        keep_out[producer] = np.setdiff1d(keep_out[producer], features)
        cols = consumer_columns(specs, input_shape, consumer, features)
        keep_in[consumer] = np.setdiff1d(keep_in[consumer], cols)
        if fold_means is not None and consumer in fold_means and specs[consumer]["op"] == "dense":
            fold[consumer] = cols
    new_specs = [dict(s, out=int(keep_out[i].size)) if i in keep_out else dict(s) for i, s in enumerate(specs)]
    new_net = build_torch_model(new_specs, input_shape)
    new_modules = [m for m in new_net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    new_masks = []
    with torch.no_grad():
        for i, old, new, mask in zip(weighted, modules, new_modules, masks, strict=True):
            rows, cols = torch.from_numpy(keep_out[i]), torch.from_numpy(keep_in[i])
            w = old.weight.detach()
            b = old.bias.detach().clone()
            if i in fold:
                removed = torch.from_numpy(fold[i])
                mean = torch.from_numpy(np.asarray(fold_means[i], dtype=np.float32))
                b += w[:, removed] @ mean[removed]
            new.weight.copy_(w[rows][:, cols])
            new.bias.copy_(b[rows])
            new_masks.append(None if mask is None else np.asarray(mask)[keep_out[i]][:, keep_in[i]])
    return new_net, new_specs, new_masks


# --- graphs: channels that must go together -------------------------------------------------------
#
# On a graph a channel lives in several tensors at once: max/average pooling, PAD, MEAN and a
# depthwise conv with one output per input channel pass channel c through as channel c, and an ADD
# makes channel c of both its inputs and of its output one channel. A *channel group* is such a set
# of tensors (union-find over those identities). Removing channel c removes it from every tensor of
# the group: the row c of every layer that writes a group tensor (conv, dense, depthwise), and the
# input column(s) of channel c of every layer outside the group that reads one (a conv's input
# channel c; a dense layer's columns of channel c in the H, W, C flattening). A RESHAPE that only
# drops unit dimensions ((1, 1, C) -> (C,)) keeps channels; one that flattens a map is read by the
# dense layer after it as that flattening.
#
# Removing a channel is exact when the channel is 0 in every tensor of its group: then every row
# writing it is 0 (weights and bias), pooling, padding and adding keep it 0, and its readers' columns
# add nothing. ``dead_channels`` finds those; ``remove_channels`` removes any set (the rest is the
# pruning method's approximation, repaired by fine-tuning).

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


def remove_channels(model: FloatModel, removal: dict[int, np.ndarray]) -> FloatModel:
    """`model` without the given channels (group index -> channels, see channel_groups)."""
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
