"""The interpreters: run a model layer by layer through the operator table's reference functions.

``run_s8`` is what the device must output for every input, element for element; ``run_f32`` is the
float model the int8 one approximates. Everything is batched: tensors are (N, H, W, C) or
(N, features), and inputs go through in chunks of BATCH so im2col buffers stay bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mcuprune.model.ir import FloatLayer, FloatModel, QuantLayer, QuantModel
from mcuprune.model.ops import spec_of

BATCH = 512  # images per chunk: bounds the im2col buffer to a few hundred MB


def run_layer_s8(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    return spec_of(layer.op).reference_s8(x, layer)


def run_layer_f32(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    return spec_of(layer.op).reference_f32(x, layer)


def _chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(x), BATCH):
        yield x[start : start + BATCH]


def trace_s8(model: QuantModel, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's int8 output for one batch (first element is the input)."""
    outs = [np.asarray(x, dtype=np.int8)]
    for layer in model.layers:
        outs.append(run_layer_s8(outs[-1], layer))
    return outs


def run_s8(model: QuantModel, x: np.ndarray) -> np.ndarray:
    """int8 inputs (N, H, W, C) -> int8 logits (N, classes): the expected device output."""
    return np.concatenate([trace_s8(model, chunk)[-1] for chunk in _chunks(x)])


def trace_f32(model: FloatModel, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's float output for one batch of float inputs (N, H, W, C)."""
    outs = [np.asarray(x, dtype=np.float32)]
    for layer in model.layers:
        outs.append(run_layer_f32(outs[-1], layer).astype(np.float32))
    return outs


def run_f32(model: FloatModel, x: np.ndarray) -> np.ndarray:
    """Float inputs (N, H, W, C) -> float logits (N, classes)."""
    return np.concatenate([trace_f32(model, chunk)[-1] for chunk in _chunks(x)])
