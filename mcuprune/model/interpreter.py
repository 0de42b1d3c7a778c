"""The interpreters: run a model graph layer by layer through the operator table's reference functions.

``run_s8`` is what the device must output for every input, element for element; ``run_f32`` is the
float model the int8 one approximates. Everything is batched: tensors are (N, H, W, C) or
(N, features), and inputs go through in chunks of BATCH so im2col buffers stay bounded. A tensor
is dropped as soon as its last reader has run, so a long chain holds two tensors at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mcuprune.model.ir import INPUT, FloatLayer, FloatModel, QuantLayer, QuantModel, consumers
from mcuprune.model.ops import spec_of

BATCH = 512  # images per chunk: bounds the im2col buffer to a few hundred MB


def run_layer_s8(layer: QuantLayer, *inputs: np.ndarray) -> np.ndarray:
    """One int8 layer on its input batch(es), in the order of `layer.inputs`."""
    return spec_of(layer.op).reference_s8(inputs[0], layer, *inputs[1:])


def run_layer_f32(layer: FloatLayer, *inputs: np.ndarray) -> np.ndarray:
    return spec_of(layer.op).reference_f32(inputs[0], layer, *inputs[1:])


def _chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(x), BATCH):
        yield x[start : start + BATCH]


def _walk(model: FloatModel | QuantModel, x: np.ndarray, run, keep: bool) -> dict[str, np.ndarray]:
    """Every tensor the walk still holds at the end: all of them with `keep`, else the output only."""
    readers = {name: len(names) for name, names in consumers(model).items()}
    tensors = {INPUT: x}
    for layer in model.layers:
        tensors[layer.name] = run(layer, *(tensors[name] for name in layer.inputs))
        if not keep:
            for name in set(layer.inputs):
                readers[name] -= layer.inputs.count(name)
                if readers[name] == 0:
                    del tensors[name]
    return tensors


def trace_s8(model: QuantModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of one int8 batch by name (ir.INPUT is the input), in execution order."""
    return _walk(model, np.asarray(x, dtype=np.int8), run_layer_s8, keep=True)


def run_s8(model: QuantModel, x: np.ndarray) -> np.ndarray:
    """int8 inputs (N, *input_shape) -> int8 outputs (N, outputs): the expected device output."""
    last = model.layers[-1].name
    return np.concatenate([_walk(model, np.asarray(c, dtype=np.int8), run_layer_s8, keep=False)[last]
                           .reshape(len(c), -1) for c in _chunks(x)])


def trace_f32(model: FloatModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of one float batch by name (ir.INPUT is the input)."""
    return _walk(model, np.asarray(x, dtype=np.float32), _f32_layer, keep=True)


def _f32_layer(layer: FloatLayer, *inputs: np.ndarray) -> np.ndarray:
    return run_layer_f32(layer, *inputs).astype(np.float32)


def run_f32(model: FloatModel, x: np.ndarray) -> np.ndarray:
    """Float inputs (N, *input_shape) -> float outputs (N, outputs)."""
    last = model.layers[-1].name
    return np.concatenate([_walk(model, np.asarray(c, dtype=np.float32), _f32_layer, keep=False)[last]
                           .reshape(len(c), -1) for c in _chunks(x)])
