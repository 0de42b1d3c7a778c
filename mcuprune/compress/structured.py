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

import numpy as np
import torch

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
